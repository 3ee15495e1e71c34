"""Layer benchmark: ratios measured side by side in one run (``python -m moram_ref.bench``).

Cases (all include the frozen base layer ``y0 = x W0ᵀ + b0``, as a real adapted layer does):
* training forward+backward: MoRAM (R − r frozen atoms + r current) vs a plain LoRA of rank R;
* evaluation forward: MoRAM dense value path, MoRAM sparse value path (only the k kept columns of B,
  via a CSR product), the authors' style (bank concatenated anew on every call, topk + scattered mask +
  dense softmax, dense value product), plain LoRA;
* NumPy reference vs torch on the CPU (evaluation forward, and training forward+backward).
Timings are medians over interleaved repetitions; only ratios measured in the same run are reported.
Every evaluation path is first checked against a float64 reference within error bounds derived from the
dtype (``moram_ref.perf.accuracy``); a failed check is reported with its numbers, never raised.
The cases, timing and checks are shared with the GPU check (``moram_ref.perf``).
"""

from __future__ import annotations

import argparse
import platform
import warnings

import numpy as np
import torch

from moram_ref.experiments import threads
from moram_ref.perf import accuracy, layer_cases
from moram_ref.perf.timing import median_seconds, ratio
from moram_ref.torch import activation
from moram_ref.torch.layer import MoRAMLinear


def sparse_update(w: torch.Tensor, p: torch.Tensor, values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``Δ = B (w ⊙ p)`` using only the ``k`` kept columns of ``B`` per token (a CSR product)."""
    c = w * p  # (..., R)
    k = idx.shape[-1]
    idx = idx.reshape(-1, k)  # (N, k) the kept atoms per token
    coef = c.reshape(-1, c.shape[-1]).gather(1, idx)  # (N, k)
    n = coef.shape[0]
    crow = torch.arange(0, n * k + 1, k, device=c.device)
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice, once per call
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = torch.sparse_csr_tensor(crow, idx.flatten(), coef.flatten(), size=(n, c.shape[-1]),
                                      check_invariants=False)
    return (csr @ values.T).reshape(*c.shape[:-1], values.shape[0])  # (..., d_out)


def sparse_forward(layer: MoRAMLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer (evaluation, bank frozen) with the sparse value path; routing in the layer's precision
    (float32 for half-precision inputs, as :class:`MoRAMLinear` does), the product in that dtype, cast back."""
    cdt = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    p = activation.responses(x.to(cdt), layer.frozen_keys.to(cdt))  # (N, R)
    tr = activation.mixing_weights(p, layer.config, training=False)
    delta = sparse_update(tr["w"], p, layer.frozen_values.to(cdt), tr["idx"])  # (N, d_out)
    return layer.base_layer(x) + delta.to(x.dtype)


def run(d: int = 768, tasks: int = 10, r: int = 16, k: int = 16, tokens: int = 8192, repeat: int = 7,
        dtype: str = "float32", device: str = "cpu", numpy_too: bool = True) -> dict:
    """Time MoRAM against plain LoRA and the authors' style at one shape (see the module docstring)."""
    dt = getattr(torch, dtype)
    bench = layer_cases.build(layer_cases.LayerCase("cli", d=d, tasks=tasks, r=r, k=k, tokens=tokens), dt, device)
    layer, x = bench.layer.train(), bench.x

    def lora(inp):
        return layer_cases.lora_forward(bench, inp)

    train = median_seconds({"moram": layer_cases.train_step(layer, x), "lora": layer_cases.train_step(lora, x)},
                           repeat, device)
    layer_cases.freeze_for_eval(layer)
    cases = {"moram_dense": lambda: layer(x), "moram_sparse": lambda: sparse_forward(layer, x),
             "authors_style": lambda: layer_cases.authors_forward(layer, x), "lora": lambda: lora(x)}
    checks = {}
    with torch.no_grad():
        # every path against the float64 reference, within bounds derived from the dtype (perf.accuracy);
        # the sparse and dense paths route in float32 for bf16 inputs, the authors' style in the input dtype
        for name, route in (("moram_dense", None), ("moram_sparse", None), ("authors_style", dt)):
            try:
                ref = accuracy.moram_reference(layer, x, False, route or torch.promote_types(dt, torch.float32))
                checks[name] = accuracy.compare(cases[name](), ref)
            except (NotImplementedError, RuntimeError) as exc:  # e.g. no sparse CSR product for this dtype/device
                checks[name] = {"ok": False, "error": repr(exc)}
                del cases[name]
        ref = accuracy.lora_reference(bench.base, bench.lora_a, bench.lora_b, x)
        checks["lora"] = accuracy.compare(lora(x), ref)
        evals = median_seconds(cases, repeat, device)
    out = {
        "shapes": {"d_in": d, "d_out": d, "R": tasks * r, "r": r, "k": k, "tokens": tokens, "dtype": dtype,
                   "device": device},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": threads.cpu()},
        "seconds": {"train": train, "eval": evals},
        "checks": checks,
        "ratios": {
            "train_moram_over_lora": train["moram"] / train["lora"],
            "eval_dense_over_lora": evals["moram_dense"] / evals["lora"],
            "eval_sparse_over_dense": ratio(evals.get("moram_sparse"), evals["moram_dense"]),
            "eval_authors_style_over_dense": evals["authors_style"] / evals["moram_dense"],
        },
    }
    if numpy_too and device == "cpu" and dt in (torch.float32, torch.float64):  # NumPy has no bfloat16
        out.update(_numpy_vs_torch(layer, x, repeat))
    return out


def _numpy_vs_torch(layer: MoRAMLinear, x: torch.Tensor, repeat: int) -> dict:
    from moram_ref.numpy.layer import MoRAMLinear as NpLayer

    state = {k: (None if v is None else v.detach().cpu().numpy()) for k, v in layer.state_dict().items()}
    np_layer = NpLayer(state["base_layer.weight"], state["base_layer.bias"], layer.config)
    np_layer.load_state_dict(state)
    xn = x.detach().cpu().numpy()
    gy = np.ones((xn.shape[0], np_layer.d_out), xn.dtype)

    def np_train():
        _, cache = np_layer.forward(xn, training=True)
        np_layer.backward(gy, cache)

    def t_train():
        layer.train()
        xi = x.detach().requires_grad_(True)
        layer(xi).sum().backward()

    def t_eval():
        layer.eval()
        with torch.no_grad():
            layer(x)

    t = median_seconds({"numpy_eval": lambda: np_layer.forward(xn), "torch_eval": t_eval,
                 "numpy_train": np_train, "torch_train": t_train}, max(3, repeat // 2))
    return {"seconds_numpy_vs_torch": t,
            "ratios_numpy": {"eval_numpy_over_torch": t["numpy_eval"] / t["torch_eval"],
                             "train_numpy_over_torch": t["numpy_train"] / t["torch_train"]}}


def add_size_arguments(p: argparse.ArgumentParser) -> None:
    """The layer case's flags, shared with ``bench_routing`` (checked by :func:`check_sizes`)."""
    from moram_ref.experiments import cliargs  # noqa: PLC0415

    p.add_argument("--d", type=cliargs.integer(1), default=768, help="layer width (d_in = d_out)")
    p.add_argument("--tasks", type=cliargs.integer(1), default=10, help="tasks in the bank (R = tasks × r)")
    p.add_argument("--atoms-per-task", type=cliargs.integer(1), default=16, help="r")
    p.add_argument("--top-k", type=cliargs.integer(1), default=16, help="k, at most R")
    p.add_argument("--tokens", type=cliargs.integer(1), default=8192, help="tokens per call")
    p.add_argument("--repeat", type=cliargs.integer(1), default=7, help="timed repetitions (the median is kept)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def check_sizes(a: argparse.Namespace, width: int = 4) -> None:
    """:class:`~moram_ref.experiments.cliargs.UsageError` for a device that is not here (or not cpu/cuda), a
    ``--top-k`` above the bank, or sizes whose tensors (``width`` bytes an element) cannot fit its memory."""
    from moram_ref.experiments import cliargs  # noqa: PLC0415

    cliargs.device("--device", a.device)  # also refuses a device type other than cpu and cuda
    if a.top_k > a.tasks * a.atoms_per_task:
        raise cliargs.UsageError(f"--top-k: {a.top_k} exceeds the bank size --tasks × --atoms-per-task = "
                                 f"{a.tasks * a.atoms_per_task}")
    # the base weight, a LoRA of rank R, a few (tokens, d) activations and (tokens, R) responses
    cliargs.fits_in_memory("--d/--tokens/--tasks/--atoms-per-task", width * (3 * a.d * a.d + 8 * a.tokens * a.d
                                                            + 4 * a.tasks * a.atoms_per_task * (a.d + a.tokens)),
                           a.device)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments import cliargs  # noqa: PLC0415

    add_size_arguments(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                   help="the layer's and the inputs' dtype (default %(default)s)")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy-vs-torch comparison")
    p.add_argument("--json", type=cliargs.out_file, default=None, help="also write the results to this file")


def main(argv: list[str] | None = None) -> int:
    from moram_ref.experiments.cliargs import DescribedHelp, Parser, UsageError  # noqa: PLC0415

    p = Parser(prog="python -m moram_ref.bench", description=__doc__,
               formatter_class=DescribedHelp)
    add_arguments(p)
    try:
        return cli_run(p.parse_args(argv))
    except UsageError as exc:
        p.error(str(exc))


LEGEND = """\
How to read it: train = forward+backward with a current task, eval = forward with every atom frozen;
numpy_* and *_numpy are the NumPy reference layer. A ratio X_over_Y is X's median time over Y's, both
measured in this run (below 1: X is faster). Each check compares a path's output with a float64 reference
within bounds derived from the dtype's rounding; tokens near a tie (whose kept atoms or gate decisions
rounding may change) are left out of it. docs/performance.md has the goals and earlier figures."""


def cli_run(a: argparse.Namespace) -> int:
    """Check the flags (:class:`~moram_ref.experiments.cliargs.UsageError`), run, print, write ``--json``."""
    from moram_ref.experiments import cliargs, rundir  # noqa: PLC0415

    check_sizes(a, width=8 if a.dtype == "float64" else 4)
    res = run(a.d, a.tasks, a.atoms_per_task, a.top_k, a.tokens, a.repeat, a.dtype, a.device, not a.no_numpy)
    print(f"shapes: {res['shapes']}\nmachine: {res['machine']}")
    for group in ("seconds", "seconds_numpy_vs_torch"):
        for name, val in _flat(res.get(group, {})).items():
            print(f"  {name:<32} {1e3 * val:9.1f} ms")
    for group in ("ratios", "ratios_numpy"):
        for name, val in res.get(group, {}).items():
            print(f"  {name:<32} " + ("  (n/a)" if val is None else f"{val:9.3f}"))
    for name, chk in res["checks"].items():
        detail = chk.get("error") or (f"max |diff| {chk['max_abs_diff']:.3g}, {chk['violations']} of "
                                      f"{chk['checked_elements']} beyond the bound, "
                                      f"{chk['near_tie_tokens']} tokens near a tie")
        print(f"  check {name:<26} {'ok' if chk['ok'] else 'FAILED'}  ({detail})")
    print(LEGEND)
    if a.json:
        rundir.write_json(a.json, res)
        print(f"wrote {a.json}")
    return 0


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    raise SystemExit(main())
