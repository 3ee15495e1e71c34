#!/usr/bin/env bash
# The layer benchmark of an earlier commit, timing that commit's package and the working tree's, alternately,
# on this machine: the CPU goal of issue #11 ("no regression against make bench") measured with one harness.
#
#   tools/bench_against.sh [REV] [RUNS]      # REV: default 2aec278 (the last commit before issue #11's work)
#
# REV's moram_ref/bench.py is the harness for both (the same LoRA baseline, timing and cases); the working
# tree's package must still offer what that harness calls. Prints each run's ratios and absolute times, then
# a table of the medians: old, new and new/old, times in ms and ratios to plain LoRA (lower is better). Uses
# .venv's Python and 2 threads (as `make bench` on this project's machine).
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
"$PY" - "$TMP/old.txt" "$TMP/new.txt" <<'EOF'
import statistics, sys
sides = []
for path in sys.argv[1:]:
    vals = {}
    for line in open(path):
        name, value, *unit = line.split()
        vals.setdefault((name, " ".join(unit)), []).append(float(value))
    sides.append({key: statistics.median(v) for key, v in vals.items()})
old, new = sides
print(f"  {'':<28} {'old':>10} {'new':>10} {'new/old':>8}")
for (name, unit), value in new.items():
    label = f"{name} ({unit})" if unit else f"{name} (ratio)"
    before = old.get((name, unit))
    fmt = "{:10.1f}" if unit else "{:10.3f}"
    print(f"  {label:<28} " + (fmt.format(before) if before is not None else f"{'—':>10}") + " " + fmt.format(value)
          + (f" {value / before:8.3f}" if before else ""))
print("  (ms: median time of one call; ratio: MoRAM's time over plain LoRA's, lower is better)")
EOF
