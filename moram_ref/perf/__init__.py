"""Measuring MoRAM's speed and accuracy side by side (shared by ``moram_ref.bench`` and ``moram_ref.gpu_check``).

Modules: ``timing`` (interleaved medians, CUDA events, peak memory), ``layer_cases`` (the issue's three layer
cases and the callables compared: MoRAM eager/compiled/fused, plain LoRA, the authors' style), ``accuracy``
(float64 references with error bounds derived from each dtype's unit roundoff); ``layer_section``,
``clip_step``, ``llm_step`` (the sections of the GPU check).
"""
