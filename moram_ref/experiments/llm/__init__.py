"""The LLM track: TRACE and the O-LoRA sequences on Hugging Face causal LMs (spec §5–§7)."""

# the compared methods (importable without torch: the CLI builds its flags from them)
METHODS = ("zero_shot", "seq_lora", "olora", "dense_moram", "moram")
