"""Text continual learning with a real pretrained encoder (all-MiniLM-L6-v2) on the O-LoRA tasks.

A text analogue of X-TAIL: inputs and label prompts are embedded by the same frozen encoder; classes
are scored by cosine similarity (fixed logit scale); the label space at test time is the union of every
task's labels (task-agnostic), with a per-task variant (MTIL-like). See docs/results.md.
"""

# the compared methods (importable without torch: the CLI builds its flags from them)
METHODS = ("zero_shot", "seq_lora", "moe_lora", "olora", "dense_moram", "moram")
