"""Routing benchmark: ratios measured side by side in one run (``python -m moram_ref.bench_routing``).

* top-k: the exact, branch-free rule of :func:`moram_ref.torch.activation._top_k_indices_branch_free` (two
  ``topk``, the second on integer rank keys; what the layer runs on CUDA and under ``torch.compile``) vs the
  former path (one ``topk``, then a host-side check for a tie at the boundary — a device synchronisation on
  every call off the CPU; the layer's eager CPU path now works this way) vs a stable descending sort;
* the layer (R − r frozen atoms + r current, all kept in the graph): eager vs ``torch.compile(fullgraph=True)``,
  evaluation forward and training forward+backward.
Timings are medians over interleaved repetitions; only ratios measured in the same run are reported.
"""

from __future__ import annotations

import argparse
import platform

import torch

from moram_ref import bench
from moram_ref.experiments import cliargs, threads
from moram_ref.perf import timing
from moram_ref.perf.timing import median_seconds
from moram_ref.config import MoRAMConfig
from moram_ref.torch import activation
from moram_ref.torch.layer import MoRAMLinear


def top_k_indices_with_sync(s: torch.Tensor, k: int) -> torch.Tensor:
    """The former top-k (for comparison only): ``topk``, then the exact rule where a row has a boundary tie,
    decided on the host (``bool(tensor)``) — one device synchronisation per call, and a graph break."""
    k = min(k, s.shape[-1])
    values, idx = torch.topk(s, k, dim=-1, sorted=False)  # (..., k)
    kth = values.amin(dim=-1, keepdim=True)  # (..., 1)
    if bool(((s >= kth).sum(dim=-1) > k).any()):
        keep = activation.top_k_mask(s, k)
        idx = torch.nonzero(keep.reshape(-1, s.shape[-1]))[:, 1].reshape(*s.shape[:-1], k)
    return idx


def top_k_indices_by_sort(s: torch.Tensor, k: int) -> torch.Tensor:
    """Exact too: a stable descending sort keeps equal scores in index order; the first ``k`` (for comparison)."""
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :k]


def run(d: int = 768, tasks: int = 10, r: int = 16, k: int = 16, tokens: int = 8192, repeat: int = 7,
        device: str = "cpu", compile_layer: bool = True) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    n_atoms = tasks * r
    s = activation.normalise(torch.randn(tokens, n_atoms, generator=gen).to(device))  # (N, R)
    ties = s.clone()
    ties[:, 1::2] = ties[:, 0::2][:, : ties[:, 1::2].shape[1]]  # every score twice: ties everywhere
    want = {name: torch.sort(activation.top_k_indices(t, k), -1).values for name, t in (("s", s), ("ties", ties))}
    topk_fns = {"rank_key": activation._top_k_indices_branch_free, "with_sync": top_k_indices_with_sync,
                "stable_sort": top_k_indices_by_sort}
    for name, fn in topk_fns.items():  # every candidate is exact: the same sets, proven here
        for case, t in (("s", s), ("ties", ties)):
            if not torch.equal(torch.sort(fn(t, k), -1).values, want[case]):
                raise AssertionError(f"{name} keeps other atoms than top_k_indices on the {case} case")
    topk = median_seconds({f"{n}_{c}": (lambda fn=fn, t=t: fn(t, k)) for n, fn in topk_fns.items()
                    for c, t in (("random", s), ("ties", ties))}, repeat)

    cfg = MoRAMConfig(atoms_per_task=r, top_k=k, temperature=0.01, threshold=0.2)
    layer = MoRAMLinear(torch.nn.Linear(d, d), cfg).to(device)
    for t in range(tasks):
        layer.begin_task(gen)
        with torch.no_grad():
            layer.values.copy_(torch.randn(layer.values.shape, generator=gen).to(device) * 0.02)
        if t < tasks - 1:
            layer.end_task()
    x = torch.randn(tokens, d, generator=gen).to(device)
    out = {"shapes": {"d": d, "R": n_atoms, "r": r, "k": k, "tokens": tokens, "device": device},
           "machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "cpu": threads.cpu()},
           "seconds": {"topk": topk},
           "ratios": {f"topk_{a}_over_with_sync_{c}": topk[f"{a}_{c}"] / topk[f"with_sync_{c}"]
                      for a in ("rank_key", "stable_sort") for c in ("random", "ties")}}
    if compile_layer:
        compiled = torch.compile(layer, fullgraph=True)

        def train_step(fn):
            def step():
                fn(x.detach().requires_grad_(True)).sum().backward()
            return step

        layer.train()
        train = median_seconds({"eager": train_step(layer), "compiled": train_step(compiled)}, repeat)
        layer.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-4)
            evals = median_seconds({"eager": lambda: layer(x), "compiled": lambda: compiled(x)}, repeat)
        out["seconds"].update({"layer_train": train, "layer_eval": evals})
        out["ratios"].update({"layer_train_compiled_over_eager": train["compiled"] / train["eager"],
                              "layer_eval_compiled_over_eager": evals["compiled"] / evals["eager"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = cliargs.Parser(prog="python -m moram_ref.bench_routing", description=__doc__,  # errors: one line, exit 2
                       formatter_class=cliargs.DescribedHelp)
    bench.add_size_arguments(p)
    p.add_argument("--no-compile", action="store_true", help="skip the eager vs compiled layer timings")
    a = p.parse_args(argv)
    timing.quiet_cuda_home_notice()
    try:
        bench.check_sizes(a)
    except cliargs.UsageError as exc:
        p.error(str(exc))
    res = run(a.d, a.tasks, a.atoms_per_task, a.top_k, a.tokens, a.repeat, a.device, not a.no_compile)
    print(f"shapes: {res['shapes']}\nmachine: {res['machine']}")
    for group, times in res["seconds"].items():
        for name, val in times.items():
            print(f"  {group + '.' + name:<32} {1e3 * val:9.2f} ms")
    for name, val in res["ratios"].items():
        print(f"  {name:<44} {val:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
