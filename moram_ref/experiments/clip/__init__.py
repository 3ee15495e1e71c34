"""The CLIP track: X-TAIL (and, to come, MTIL) continual learning on open_clip (spec §5–§8)."""
