#!/usr/bin/env bash
# The layer benchmark of an earlier commit, timing that commit's package and the working tree's, alternately,
# on this machine: the CPU goal of issue #11 ("no regression against make bench") measured with one harness.
#
#   tools/bench_against.sh [REV] [RUNS]      # REV: default 2aec278 (the last commit before issue #11's work)
#
# REV's moram_ref/bench.py is the harness for both (the same LoRA baseline, timing and cases); the working
# tree's package must still offer what that harness calls. Prints each run's ratios and absolute times, then
# the medians per package. Uses .venv's Python and 2 threads (as `make bench` on this project's machine).
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-2aec278}
RUNS=${2:-4}
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench_against.sh: RUNS must be an integer >= 1, got '$RUNS'" >&2; exit 2; }
PY=${PYTHON:-$PWD/.venv/bin/python}
HERE=$PWD
TMP=$(mktemp -d)
trap 'git -C "$HERE" worktree remove --force "$TMP/old" >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT
git worktree add -q --detach "$TMP/old" "$REV"
cp "$TMP/old/moram_ref/bench.py" "$TMP/harness.py"
for i in $(seq "$RUNS"); do
  for side in old new; do
    root=$([ "$side" = old ] && echo "$TMP/old" || echo "$HERE")
    echo "== $side package ($([ "$side" = old ] && echo "$REV" || echo "working tree")), run $i"
    (cd "$TMP" && PYTHONPATH="$root" OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "$PY" -W ignore harness.py --repeat 9) \
      | grep -E "^  (train|eval)\.(moram|moram_dense|lora) |_over_lora" | tee -a "$TMP/$side.txt"
  done
done
echo
if [ "$RUNS" = 1 ]; then
  echo "one run each (old: $REV, new: working tree); one run is noise on a shared CPU: use 4 or more to compare"
else
  echo "medians over $RUNS runs (old: $REV, new: working tree)"
fi
for side in old new; do
  "$PY" - "$TMP/$side.txt" "$side" <<'EOF'
import re, statistics, sys
vals = {}
for line in open(sys.argv[1]):
    name, value = line.split()[:2]
    vals.setdefault(name, []).append(float(value))
print(sys.argv[2].ljust(4), "  ".join(f"{n} {statistics.median(v):.3f}" for n, v in vals.items()))
EOF
done
