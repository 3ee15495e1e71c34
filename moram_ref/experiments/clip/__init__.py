"""The CLIP track: X-TAIL and MTIL continual learning on open_clip (spec §5–§8)."""

# the compared methods (importable without torch: the CLI builds its flags from them)
METHODS = ("zero_shot", "seq_lora", "moe_lora", "dense_moram", "moram")
