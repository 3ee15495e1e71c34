"""The LLM track: TRACE and the O-LoRA sequences on Hugging Face causal LMs (spec §5–§7)."""
