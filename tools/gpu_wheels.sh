#!/usr/bin/env bash
# Download, into .whl/, the wheels the lent GPU machine lacks (it has Python 3.12, torch, Triton and
# transformers, no internet, and no open_clip, ftfy, wcwidth, rouge, rapidfuzz; its timm is carried too,
# at the version open_clip was tested with here), for CPython 3.12 on x86-64 Linux. Versions: those of this project's own environment, pinned here. Pure-Python wheels
# (py3-none-any) are accepted under the manylinux platform tags too. Then print the command to run there.
#
#   tools/gpu_wheels.sh            # from the repository root; .whl/ is git-ignored
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  open_clip_torch==3.3.0   # the CLIP track; needs ftfy, timm, regex, tqdm, huggingface_hub, safetensors
  ftfy==6.3.1              # needs wcwidth
  wcwidth==0.9.4
  timm==1.0.31
  rouge==1.0.1             # the LLM track's metrics
  rapidfuzz==3.14.6
)
PY=${PYTHON:-python3}
mkdir -p .whl
for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
ls -la .whl
du -sh .whl
echo
echo "On the GPU machine (carry .whl, timeout_s 600), one line (docs/performance.md):"
"$PY" -m moram_ref.gpu_check --command 2>/dev/null || true
