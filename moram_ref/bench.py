"""Layer benchmark: ratios measured side by side in one run (``python -m moram_ref.bench``).

Cases (all include the frozen base layer ``y0 = x W0ᵀ + b0``, as a real adapted layer does):
* training forward+backward: MoRAM (R − r frozen atoms + r current) vs a plain LoRA of rank R;
* evaluation forward: MoRAM dense value path, MoRAM sparse value path (only the k kept columns of B,
  via a CSR product), the authors' style (bank concatenated anew on every call), plain LoRA;
* NumPy reference vs torch on the CPU (evaluation forward, and training forward+backward).
Timings are medians over interleaved repetitions; only ratios measured in the same run are reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from moram_ref.config import MoRAMConfig
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
    csr = torch.sparse_csr_tensor(crow, idx.flatten(), coef.flatten(), size=(n, c.shape[-1]),
                                  check_invariants=False)
    return (csr @ values.T).reshape(*c.shape[:-1], values.shape[0])  # (..., d_out)


def _timeit(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():  # interleaved, so drifts hit every case alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(d: int = 768, tasks: int = 10, r: int = 16, k: int = 16, tokens: int = 8192, repeat: int = 7,
        dtype: str = "float32", device: str = "cpu", numpy_too: bool = True) -> dict:
    dt = getattr(torch, dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    n_atoms = tasks * r
    cfg = MoRAMConfig(atoms_per_task=r, top_k=k, temperature=0.01, threshold=0.2)
    base = torch.nn.Linear(d, d).to(device, dt)
    layer = MoRAMLinear(base, cfg)
    for t in range(tasks):
        layer.begin_task(gen)
        with torch.no_grad():
            layer.values.copy_(torch.randn(layer.values.shape, generator=gen).to(device, dt) * 0.02)
        if t < tasks - 1:
            layer.end_task()
    lora_a = torch.nn.Parameter(torch.randn(n_atoms, d, generator=gen).to(device, dt) / d**0.5)
    lora_b = torch.nn.Parameter(torch.randn(d, n_atoms, generator=gen).to(device, dt) * 0.02)
    x = torch.randn(tokens, d, generator=gen).to(device, dt)

    def lora(inp):
        return base(inp) + torch.nn.functional.linear(torch.nn.functional.linear(inp, lora_a), lora_b)

    def train_step(fn):
        def step():
            xi = x.detach().requires_grad_(True)
            fn(xi).sum().backward()
        return step

    layer.train()
    train = _timeit({"moram": train_step(layer), "lora": train_step(lora)}, repeat)

    # evaluation happens after end_task() (spec §4): the whole bank is frozen, one block
    layer.end_task()
    layer.eval()
    keys_all, values_all = layer.bank()
    split = (tasks - 1) * r  # the authors' code keeps the bank as per-task pieces and joins them per call

    def authors_style(inp):  # concatenate the bank anew, then the dense value path
        keys = torch.cat([layer.frozen_keys[:split], layer.frozen_keys[split:]])
        vals = torch.cat([layer.frozen_values[:, :split], layer.frozen_values[:, split:]], dim=1)
        p = activation.responses(inp, keys)
        w = activation.mixing_weights(p, cfg, training=False)["w"]
        return base(inp) + activation.update(w, p, vals)

    def sparse_path(inp):
        p = activation.responses(inp, layer.frozen_keys)
        tr = activation.mixing_weights(p, cfg, training=False)
        return base(inp) + sparse_update(tr["w"], p, values_all, tr["idx"])

    cases = {"moram_dense": lambda: layer(x), "moram_sparse": lambda: sparse_path(x),
             "authors_style": lambda: authors_style(x), "lora": lambda: lora(x)}
    tol = 1e-4 if dt in (torch.float32, torch.float64) else 5e-2
    with torch.no_grad():
        try:
            torch.testing.assert_close(sparse_path(x), layer(x), rtol=tol, atol=tol)  # same result, proven here
        except (NotImplementedError, RuntimeError):  # e.g. no bf16 sparse CSR product on this device
            del cases["moram_sparse"]
        evals = _timeit(cases, repeat)
    out = {
        "shapes": {"d_in": d, "d_out": d, "R": n_atoms, "r": r, "k": k, "tokens": tokens, "dtype": dtype, "device": device},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine()},
        "seconds": {"train": train, "eval": evals},
        "ratios": {
            "train_moram_over_lora": train["moram"] / train["lora"],
            "eval_dense_over_lora": evals["moram_dense"] / evals["lora"],
            "eval_sparse_over_dense": evals["moram_sparse"] / evals["moram_dense"] if "moram_sparse" in evals else None,
            "eval_authors_style_over_dense": evals["authors_style"] / evals["moram_dense"],
        },
    }
    if numpy_too and device == "cpu":
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

    t = _timeit({"numpy_eval": lambda: np_layer.forward(xn), "torch_eval": t_eval,
                 "numpy_train": np_train, "torch_train": t_train}, max(3, repeat // 2))
    return {"seconds_numpy_vs_torch": t,
            "ratios_numpy": {"eval_numpy_over_torch": t["numpy_eval"] / t["torch_eval"],
                             "train_numpy_over_torch": t["numpy_train"] / t["torch_train"]}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments import cliargs  # noqa: PLC0415

    p.add_argument("--d", type=cliargs.integer(1), default=768, help="layer width (d_in = d_out)")
    p.add_argument("--tasks", type=cliargs.integer(1), default=10, help="tasks in the bank (R = tasks × r)")
    p.add_argument("--atoms-per-task", type=cliargs.integer(1), default=16, help="r")
    p.add_argument("--top-k", type=cliargs.integer(1), default=16, help="k")
    p.add_argument("--tokens", type=cliargs.integer(1), default=8192, help="tokens per call")
    p.add_argument("--repeat", type=cliargs.integer(1), default=7, help="timed repetitions (the median is kept)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy-vs-torch comparison")
    p.add_argument("--json", type=cliargs.out_file, default=None, help="also write the results to this file")


def main(argv: list[str] | None = None) -> int:
    from moram_ref.experiments.cliargs import Parser, UsageError  # noqa: PLC0415

    p = Parser(prog="python -m moram_ref.bench", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    try:
        return cli_run(p.parse_args(argv))
    except UsageError as exc:
        p.error(str(exc))


def cli_run(a: argparse.Namespace) -> int:
    """Check the flags (:class:`~moram_ref.experiments.cliargs.UsageError`), run, print, write ``--json``."""
    from moram_ref.experiments import cliargs, rundir  # noqa: PLC0415

    cliargs.device("--device", a.device)
    if a.top_k > a.tasks * a.atoms_per_task:
        raise cliargs.UsageError(f"--top-k: {a.top_k} exceeds the bank size --tasks × --atoms-per-task = "
                                 f"{a.tasks * a.atoms_per_task}")
    res = run(a.d, a.tasks, a.atoms_per_task, a.top_k, a.tokens, a.repeat, a.dtype, a.device, not a.no_numpy)
    print(f"shapes: {res['shapes']}\nmachine: {res['machine']}")
    for group in ("seconds", "seconds_numpy_vs_torch"):
        for name, val in _flat(res.get(group, {})).items():
            print(f"  {name:<32} {1e3 * val:9.1f} ms")
    for group in ("ratios", "ratios_numpy"):
        for name, val in res.get(group, {}).items():
            print(f"  {name:<32} " + ("  (n/a)" if val is None else f"{val:9.3f}"))
    if a.json:
        rundir.write_json(a.json, res)
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
