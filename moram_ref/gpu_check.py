"""The prepared GPU check: one script, run once on a lent GPU machine (no internet), JSON out after every section.

    python -m moram_ref.gpu_check --out OUT_DIR              # ≈ 5 minutes on one H200 (see --budget-s)
    python -m moram_ref.gpu_check --quick --device cpu --out OUT_DIR   # the same code, tiny sizes, on a CPU

Sections (each checked against a float64 or plain-model reference; a failed check is recorded with its
numbers and the run goes on; ``OUT_DIR/gpu_check.json`` is rewritten after every section and case):
* ``env``: versions, GPU, the matmul precision flags the error bounds assume;
* ``layer``: the three layer cases of issue #11 (CLIP-like, LLM-like, big bank) in bf16 and fp32, training
  (fwd+bwd) and evaluation (fwd): MoRAM eager / ``torch.compile`` / fused (``routing_kernel="triton"``) vs
  plain LoRA of rank R vs the authors' style; medians of CUDA-event timings; peak memory; ratios;
* ``clip``: an X-TAIL-shaped step on a random open_clip ViT-B-16 (frozen / sequential LoRA / MoRAM);
* ``llm_train``: a training step on a random Llama-3.2-1B shape (sequential LoRA / MoRAM);
* ``llm_generate``: greedy generation throughput (plain, merged LoRA, MoRAM eager, static cache + compiled);
* ``summary``: the ratios against the issue's goals.

On the lent H200 (no open_clip there; carry the wheels made by ``tools/gpu_wheels.sh``), see
``python -m moram_ref.gpu_check --command`` and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

from moram_ref.experiments import cliargs, rundir
from moram_ref.experiments.rundir import write_text

GPU_INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
               "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && ")
# One device call (≤ 600 s): the check, then the suite on CUDA. `timeout -s INT`: the check keeps what it
# measured and writes its summary, a stopped pytest still prints its summary and writes the JUnit file (-k:
# killed 15-20 s later if it does not stop). The check's timeout leaves 120 s past its budget: compilation
# under way (compiled generation) may run into it (perf/llm_step.OVERRUN_S). The kernel cases file
# is collected by adding its name to python_files (named beside `tests`, pytest would drop it); -v: each
# test's outcome is in the log as it ends; the slowest 15 listed.
GPU_CHECK = "timeout -s INT -k 20 350 python3 -m moram_ref.gpu_check --out $OUT --budget-s 230"
GPU_TESTS = ("MORAM_TEST_DEVICE=cuda timeout -s INT -k 15 180 python3 -m pytest -n 8 --timeout 120 -v -rfE "
             "--durations=15 -p no:cacheprovider -o 'python_files=test_*.py routing_triton_cases.py' "
             "--junitxml=$OUT/pytest_cuda.xml tests")
GPU_SESSION = (GPU_INSTALL + "set -o pipefail; " + GPU_CHECK + "; echo \"gpu_check: exit $?\"; " + GPU_TESTS
               + " 2>&1 | tee $OUT/pytest_cuda.log | tail -60")
_WRITTEN: list[Path] = []  # the JSON files this process wrote (named by :func:`entry` after a stop)
_STOPPED: list = []  # a stop signal came (see :func:`_exit`)
# cumulative share of the time budget at which each section's optional parts (compilation, kernels) stop
DEADLINE_SHARE = {"env": 0.0, "layer": 0.40, "clip": 0.55, "llm_train": 0.65, "llm_generate": 1.0}
GOALS = [  # (name, where in the report, comparison, goal) — issue #11
    ("layer bf16 CLIP-like, training: MoRAM / plain LoRA", ("layer", "train", "lora"), "<=", 1.3),
    ("layer bf16 CLIP-like, training: MoRAM / authors' style", ("layer", "train", "authors"), "<=", 0.5),
    ("layer bf16 CLIP-like, evaluation: MoRAM / plain LoRA", ("layer", "eval", "lora"), "<=", 1.5),
    ("CLIP step: MoRAM / sequential LoRA", ("clip",), "<=", 1.25),
    ("generation: MoRAM / plain model (tokens/s)", ("llm_generate",), ">=", 0.7),
]


def env_section(device: str, quick: bool, deadline: float, save=lambda part: None) -> dict:
    import dataclasses

    import torch

    from moram_ref.config import MoRAMConfig

    out = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "torch_cuda_build": torch.version.cuda,  # the CUDA version torch was built for (set on a CPU too)
           "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads(),
           "routing_kernel_field": "routing_kernel" in {f.name for f in dataclasses.fields(MoRAMConfig)},
           "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    for mod in ("triton", "transformers", "open_clip", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # recorded: the section that needs it will fail with the reason
            out[mod] = f"not importable: {exc!r}"
    out["ok"] = True
    return out


def _layer(device, quick, deadline, save, compile_backend):
    from moram_ref.perf.layer_section import layer_section

    return layer_section(device, quick, deadline, compile_backend, save)


def _section(name):
    def run(device, quick, deadline, save, compile_backend):
        if name == "layer":
            return _layer(device, quick, deadline, save, compile_backend)
        if name == "env":
            return env_section(device, quick, deadline, save)
        if name == "clip":
            from moram_ref.perf.clip_step import clip_section as fn
        elif name == "llm_train":
            from moram_ref.perf.llm_step import llm_train_section as fn
        else:
            from moram_ref.perf.llm_step import llm_generate_section as fn
        return fn(device, quick, deadline, save)
    return run


SECTIONS = {name: _section(name) for name in DEADLINE_SHARE}


def _best(ratios: dict, pick=min):
    """(value, name) of the best measured ratio in ``{name: ratio or None}``; (None, None) if none is."""
    have = {n: r for n, r in ratios.items() if r is not None}
    if not have:
        return None, None
    name = pick(have, key=have.get)
    return have[name], name


def summary(sections: dict, judged: bool = True) -> dict:
    """Each goal of issue #11 with the measured ratio (the best MoRAM variant) and its verdict: ``met`` True or
    False, None where not measured or not ``judged`` (``--quick`` or a CPU: the goals are about full sizes on a
    GPU), with ``verdict`` in words. Generation compares like with like: MoRAM eager with the plain model
    eager, compiled with compiled."""
    rows = []
    for label, where, cmp, goal in GOALS:
        value, by = None, None
        sec = sections.get(where[0], {})
        if where[0] == "layer":
            case = sec.get("cases", {}).get("clip_like/bfloat16", {})
            by = case.get(f"best_moram_{where[1]}")  # the fastest implementation that passed its check
            value = case.get(f"ratios_{where[1]}", {}).get(f"{by}_over_{where[2]}")
            by = by if value is not None else None
        elif where[0] == "clip":
            value, by = _best({"moram": sec.get("ratios", {}).get("moram_over_seq_lora"),
                               "moram_fused": sec.get("ratios", {}).get("moram_fused_over_seq_lora")})
        else:
            r = sec.get("ratios", {})
            value, by = _best({"moram_eager": r.get("moram_eager_over_plain"),  # both eager
                               "moram_compiled": r.get("moram_compiled_over_plain_compiled")},  # both compiled
                              pick=max)
        met = None if value is None or not judged else (value <= goal if cmp == "<=" else value >= goal)
        verdict = "not judged" if not judged else {True: "met", False: "NOT met", None: "not measured"}[met]
        rows.append({"goal": f"{label} {cmp} {goal}", "value": value, "best_variant": by, "met": met,
                     "verdict": verdict})
    checks = {n: s.get("ok") for n, s in sections.items()}
    return {"judged": judged, "goals": rows, "checks_ok": checks}


def main(argv: list[str] | None = None) -> int:
    p = cliargs.Parser(prog="python -m moram_ref.gpu_check", description=__doc__,  # errors: one line, exit 2
                       formatter_class=cliargs.DescribedHelp)
    p.add_argument("--out", type=cliargs.out_dir, default=Path("runs/gpu_check"), help="folder for gpu_check.json")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--quick", "--small", action="store_true", 
                   help="tiny sizes: the whole script on a CPU in 15-90 s; its ratios are not GPU figures")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS), metavar="SECTION",
                   help=f"the sections to run, of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--budget-s", type=cliargs.real(0, low_open=True), default=300.0,
                   help="time budget in seconds (default 300); compilation and optional variants stop when their "
                        "share is spent")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend for the layer section (default: inductor; --quick: aot_eager; 'none')")
    p.add_argument("--command", action="store_true",
                   help="print the one command for the lent GPU machine (this check, then the CUDA test suite; "
                        "≤ 600 s) and exit")
    a = p.parse_args(argv)
    if a.command:  # one device run, under the 10-minute limit of one command (docs/performance.md)
        print(GPU_SESSION)
        return 0
    import torch

    from moram_ref.perf import timing

    timing.quiet_cuda_home_notice()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {device}: CUDA is not available on this machine")
    backend = a.compile_backend or ("aot_eager" if a.quick else "inductor")
    known = ["none", *torch._dynamo.list_backends(exclude_tags=())]
    if backend not in known:
        p.error(f"--compile-backend must be one of {known}, got {backend!r}")
    backend = None if backend == "none" else backend
    try:
        a.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out {a.out}: cannot make the folder ({exc.strerror})")
    path = a.out / "gpu_check.json"
    report: dict = {"argv": sys.argv[1:] if argv is None else argv, "quick": a.quick, "sections": {}}
    start = time.monotonic()

    def save(name=None, part=None):
        if name is not None:
            report["sections"][name] = part
        write_text(path, json.dumps(report, indent=1, default=str))  # whole or not at all, even if killed
        if path not in _WRITTEN:
            _WRITTEN.append(path)

    previous = {sig: signal.signal(sig, _stop) for sig in rundir.STOP_SIGNALS}
    rundir.clear_stop()
    try:
        _run_sections(a, device, backend, report, save, start, torch)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    judged = not a.quick and device.startswith("cuda")  # the goals are about full sizes on a GPU
    report["summary"] = summary(report["sections"], judged)
    report["wall_s"] = time.monotonic() - start
    save()
    header = "GPU performance goals (docs/performance.md); in brackets the MoRAM variant with the best ratio"
    if not judged:
        header += f"\n  ({'--quick' if a.quick else 'full'} sizes on {device}: the ratios exercise the code, not judged)"
    print("  " + header)
    for row in report["summary"]["goals"]:
        value = "not measured" if row["value"] is None else f"{row['value']:.2f} ({row['best_variant']})"
        print(f"  {row['goal']:<72} {value:<32} {row['verdict']}")
    print(f"wrote {path} ({report['wall_s']:.0f} s)")
    stopped = "interrupted_in" in report or "interrupted_after" in report
    return 0 if all(s.get("ok") for s in report["sections"].values()) and not stopped else 1


def _stop(signum, frame):
    """SIGINT/SIGTERM (``timeout -s INT``): noted first, so that an interrupt Python swallows (one raised in a
    garbage-collection callback is only reported as "Exception ignored") still stops after the section."""
    rundir.request_stop()
    _STOPPED.append(signum)
    raise KeyboardInterrupt


def _run_sections(a, device, backend, report, save, start, torch) -> None:
    """Each section in turn (see :func:`main`); an interrupt keeps what the section saved and stops."""
    for name in a.sections:
        t0 = time.monotonic()
        deadline = start + DEADLINE_SHARE[name] * a.budget_s
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            res = SECTIONS[name](device, a.quick, deadline, lambda part, n=name: save(n, {"partial": True, **part}),
                                 backend)
        except KeyboardInterrupt:  # `timeout -s INT`: keep what the section saved, then the summary, then stop
            res = {**report["sections"].get(name, {}), "ok": False, "interrupted": True}
            report["interrupted_in"] = name
        except Exception as exc:  # one failing section must not hide the others' results
            res = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}
        res["wall_s"] = time.monotonic() - t0
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        save(name, res)
        print(f"{name:<13} {'ok' if res.get('ok') else 'INTERRUPTED' if res.get('interrupted') else 'CHECK FAILED'}"
              f"  ({res['wall_s']:.0f} s)", flush=True)
        if "interrupted_in" in report:
            break
        if rundir.stop_requested():  # an interrupt swallowed inside the section: it finished, stop here
            report["interrupted_after"] = name
            save()
            print(f"stop requested during {name}: no further section", flush=True)
            break


def entry(argv: list[str] | None = None) -> int:
    """:func:`main` as the script runs it: a stop outside the sections' own handling (while torch imports, a
    second Ctrl-C while the report is saved) ends it with one line on stderr and exit status 130 instead of a
    traceback, and the JSON already written stays whole (it is replaced by a rename, never rewritten in place);
    an interrupt Python swallows in a callback prints nothing (:func:`rundir.quiet_swallowed_interrupts`)."""
    previous = {sig: signal.signal(sig, _stop) for sig in rundir.STOP_SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, rundir.quiet_swallowed_interrupts
    try:
        return main(argv)
    except Exception:
        if not rundir.stop_requested():  # an interrupt can surface as another error (an import it broke)
            raise
        return _interrupted()
    except KeyboardInterrupt:
        return _interrupted()
    finally:
        sys.unraisablehook = hook
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        rundir.clear_stop()


def _interrupted() -> int:
    _STOPPED.append(True)
    written = [p for p in _WRITTEN if p.is_file()]
    print("python -m moram_ref.gpu_check: interrupted"
          + (f"; {written[-1]} holds the sections finished before" if written else " before any section ran"),
          file=sys.stderr)
    return 130


def _exit(status: int) -> None:
    """End the script with ``status``, never by a stop signal: the report is written, so from here the stop
    signals are ignored (a late Ctrl-C or ``timeout -s INT`` during Python's shutdown would end it with -2),
    and after a stop it ends through :func:`rundir.exit_after_a_stop` (which says why)."""
    for sig in rundir.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if _STOPPED:
        rundir.exit_after_a_stop(status)
    sys.exit(status)


if __name__ == "__main__":
    _exit(entry())
