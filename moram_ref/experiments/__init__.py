"""Experiments: toy (NumPy demo, the main job); textcl, CLIP and LLM tracks build on moram_ref.torch.

Shared by the torch tracks: progress (every training step reported as a value; the CLIs' progress
lines) and seeding (dropout masks seeded per step, so a resumed run equals the uninterrupted one).
"""
