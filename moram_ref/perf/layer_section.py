"""The layer section of the GPU check: every implementation checked, then timed side by side.

Implementations (all include the frozen base layer): ``eager`` (:class:`MoRAMLinear` as is), ``compiled``
(``torch.compile(fullgraph=True)`` of the same module: a graph break is a failed check), ``fused``
(``MoRAMConfig(routing_kernel="triton")`` where that field exists), ``lora`` (plain LoRA of rank R),
``authors`` (:func:`layer_cases.authors_forward`), and in evaluation ``stacked`` / ``stacked_fused`` (the frozen
bank's responses in the base layer's product, :func:`layer_cases.stacked_eval_forward`; routing by the
reference functions / by the fused kernel).
Per case and dtype: a float64 self-check of every implementation's output (training and evaluation
mode) and gradients (:mod:`moram_ref.perf.accuracy`), median seconds for training (forward+backward) and
evaluation (forward), peak memory, and the ratios. A failing check or implementation is recorded, with
its numbers, and the run goes on.
"""

from __future__ import annotations

import copy
import time
import traceback

import torch

from moram_ref.perf import accuracy, layer_cases
from moram_ref.perf.timing import median_seconds, peak_memory_gib, ratio

MORAM_IMPLS = ("eager", "compiled", "fused", "stacked", "stacked_fused")  # "stacked*": evaluation only


def _route_dtype(layer, x: torch.Tensor) -> torch.dtype:
    """The dtype in which the layer routes: at least float32, float64 if an operand is (docs/semantics.md)."""
    return torch.promote_types(torch.promote_types(x.dtype, layer.frozen_keys.dtype), torch.float32)


def _backward(fn, x: torch.Tensor, params: dict, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``y = fn(x)`` and the gradients of ``Σ_rows y`` w.r.t. ``x`` and ``params`` (rows near a tie weigh 0)."""
    for p in params.values():
        p.grad = None
    xi = x.detach().clone().requires_grad_(True)
    y = fn(xi)
    (y.to(rows.dtype) * rows[:, None]).sum().backward()
    grads = {"x": xi.grad, **{name: p.grad for name, p in params.items()}}
    for p in params.values():
        p.grad = None
    return y.detach(), grads


def _reference_grads(bench, rows: torch.Tensor, lora: bool) -> dict:
    """The same gradients in float64 (a float64 copy of the layer, or of LoRA)."""
    rows = rows.double()
    if lora:
        w0, b0 = bench.base.weight.double(), bench.base.bias.double()
        params = {"lora_a": bench.lora_a.detach().double().requires_grad_(True),
                  "lora_b": bench.lora_b.detach().double().requires_grad_(True)}
        return _backward(lambda x: x @ w0.T + b0 + (x @ params["lora_a"].T) @ params["lora_b"].T,
                         bench.x.double(), params, rows)[1]
    ref = copy.deepcopy(bench.layer).double().train(bench.layer.training)
    return _backward(ref, bench.x.double(), {"keys": ref.keys, "values": ref.values}, rows)[1]


def _check(name: str, fn, bench, training: bool, params: dict) -> dict:
    """``fn``'s output (and, training, gradients) against the float64 reference, within the bounds."""
    x = bench.x
    if name == "lora":
        ref = accuracy.lora_reference(bench.base, bench.lora_a, bench.lora_b, x)
    else:
        route = x.dtype if name == "authors" else _route_dtype(bench.layer, x)
        ref = accuracy.moram_reference(bench.layer, x, training, route)
    with torch.no_grad():
        base_out = bench.base(x)  # the frozen base alone, for the tighter update check
    same_base = name in ("eager", "authors", "lora")  # these call base_layer(x) themselves, eagerly
    if not training:
        with torch.no_grad():
            return accuracy.compare(fn(x), ref, base_out, same_base)
    rows = (~ref["tie"]).float()
    y, got = _backward(fn, x, params, rows)
    res = accuracy.compare(y, ref, base_out, same_base)
    want = _reference_grads(bench, rows, lora=name == "lora")
    res["grads"] = accuracy.compare_grads(got, want, accuracy.grad_tolerance(x.dtype, ref.get("rho_max")))
    res["ok"] = res["ok"] and res["grads"]["ok"]
    return res


def run_case(case: layer_cases.LayerCase, dtype: torch.dtype, device: str, repeat: int,
             compile_backend: str | None) -> dict:
    """Check and time every implementation at one case and dtype (see the module docstring)."""
    torch._dynamo.reset()
    bench = layer_cases.build(case, dtype, device)
    layer = bench.layer.train()
    impls: dict[str, dict] = {}
    fns = {"eager": layer, "authors": lambda x: layer_cases.authors_forward(layer, x),
           "lora": lambda x: layer_cases.lora_forward(bench, x)}
    fused = None
    try:
        fused = layer_cases.twin(layer, layer_cases.fused_config(layer.config, device))
        fns["fused"] = fused
    except TypeError as exc:  # no such field in this version, or not on this device: say so, go on
        impls["fused"] = {"available": False, "reason": str(exc)}
    if compile_backend:
        fns["compiled"] = torch.compile(layer, fullgraph=True, backend=compile_backend)  # a graph break fails
    else:
        impls["compiled"] = {"available": False, "reason": "not requested (budget or --compile none)"}
    params = {"eager": layer, "compiled": layer, "authors": layer, "fused": fused}
    out = {"shapes": {"d_in": case.d, "d_out": case.d, "R": case.n_atoms, "r": case.r, "k": case.k,
                      "tokens": case.tokens, "dtype": str(dtype).removeprefix("torch.")}, "impls": impls}
    for mode in ("train", "eval"):
        training = mode == "train"
        if not training:
            layer_cases.freeze_for_eval(*(m for m in (layer, fused) if m is not None))
            for name, owner in (("stacked", layer), ("stacked_fused", fused)):  # routing: the owner's kernel
                if owner is None:
                    impls[name] = {"available": False, "reason": impls["fused"]["reason"]}
                    continue
                try:
                    w = layer_cases.stack_for_eval(owner)
                    fns[name] = lambda x, w=w, owner=owner: layer_cases.stacked_eval_forward(owner, w, x)
                    impls[name] = {"available": True, "routing_kernel": owner.config.routing_kernel}
                except ValueError as exc:
                    impls[name] = {"available": False, "reason": str(exc)}
        for name in list(fns):
            rec = impls.setdefault(name, {"available": True})
            t0 = time.perf_counter()
            try:
                if name == "lora":
                    p = {"lora_a": bench.lora_a, "lora_b": bench.lora_b}
                else:
                    p = {"keys": params[name].keys, "values": params[name].values} if training else {}
                rec[f"check_{mode}"] = _check(name, fns[name], bench, training, p)
            except Exception as exc:  # e.g. a kernel that fails to build: a failure, recorded, not timed
                rec.update(ok=False, error=f"{mode}: {exc!r}", traceback=traceback.format_exc(limit=4))
                del fns[name]
                continue
            rec[f"first_call_{mode}_s"] = time.perf_counter() - t0  # includes compilation for "compiled"
        calls = {n: layer_cases.train_step(f, bench.x) for n, f in fns.items()} if training else \
            {n: (lambda f=f: f(bench.x)) for n, f in fns.items()}
        with torch.set_grad_enabled(training):
            seconds = median_seconds(calls, repeat, device, warmup=2)
            for n, call in calls.items():
                impls[n][f"peak_memory_{mode}_gib"] = peak_memory_gib(call, device)
        out[f"{mode}_s"] = seconds
        out[f"ratios_{mode}"] = {
            **{f"{n}_over_lora": ratio(seconds.get(n), seconds.get("lora")) for n in MORAM_IMPLS},
            **{f"{n}_over_authors": ratio(seconds.get(n), seconds.get("authors")) for n in MORAM_IMPLS},
            "authors_over_lora": ratio(seconds.get("authors"), seconds.get("lora")),
        }
        passed = [n for n in MORAM_IMPLS if n in seconds and impls[n].get(f"check_{mode}", {}).get("ok")]
        best = min(passed, key=seconds.get, default=None)  # only an implementation that passed its check
        out[f"best_moram_{mode}"] = best
    for rec in impls.values():  # one verdict per implementation that was checked (or failed before its check)
        if "ok" in rec or any(f"check_{m}" in rec for m in ("train", "eval")):
            rec["ok"] = rec.get("ok", True) and all(rec.get(f"check_{m}", {}).get("ok", True) for m in ("train", "eval"))
    out["checks_ok"] = all(r.get("ok", True) for r in impls.values())
    return out


ORDER = [("clip_like", "bfloat16"), ("llm_like", "bfloat16"), ("big_bank", "bfloat16"),
         ("clip_like", "float32"), ("llm_like", "float32"), ("big_bank", "float32")]
ORDER_FIRST = "clip_like/bfloat16"  # the case issue #11's layer goals are measured on


def layer_section(device: str, quick: bool, deadline: float, compile_backend: str | None,
                  save=lambda part: None) -> dict:
    """Every case of ``ORDER``, most important first; compilation only while ``deadline`` is ahead.

    ``save(part)`` is called after every case with the results so far (the caller writes them out).
    """
    cases = layer_cases.QUICK_CASES if quick else layer_cases.CASES
    repeat = 3 if quick else 25
    out: dict = {"device": device, "compile_backend": compile_backend, "cases": {}}
    for name, dt in ORDER:
        key = f"{name}/{dt}"
        remaining = deadline - time.monotonic()
        if remaining <= 0 and key != ORDER_FIRST:  # the goals' case always runs; the others within the share,
            out["cases"][key] = {"skipped": "time budget of the layer section spent"}  # so later sections keep theirs
            continue
        # compiling costs tens of seconds per case on a GPU: only while 45 s of the share remain
        # (--quick: the first case only, to keep the CPU run short)
        backend = compile_backend if (key == ORDER_FIRST if quick else remaining > 45) else None
        try:
            out["cases"][key] = run_case(cases[name], getattr(torch, dt), device, repeat, backend)
        except Exception as exc:
            out["cases"][key] = {"error": repr(exc), "traceback": traceback.format_exc(limit=6)}
        save(out)
    out["ok"] = all(c.get("checks_ok", False) for c in out["cases"].values() if "skipped" not in c)
    return out
