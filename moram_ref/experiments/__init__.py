"""Experiments: toy (NumPy demo, the main job); CLIP and LLM tracks build on moram_ref.torch."""
