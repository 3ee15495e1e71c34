"""The LLM sections of the GPU check: a training step and greedy generation on a random Llama-3.2-1B shape.

bf16 weights, atoms in float32 (as the LLM track attaches them), MoRAM on q/k/v/o (spec §5, LLM column)
with a bank of 8 tasks (7 frozen + the current one). Training: seconds per 8×512-token step for sequential
LoRA, MoRAM, and MoRAM with ``routing_kernel="triton"`` where that field exists. Generation: new tokens/s
for 64 prompts × 64 new tokens (greedy): the plain model, merged plain LoRA (``W + B A`` folded into the
weights: the plain model's cost), MoRAM eager, and "compiled" (a static cache and compiled decoding
steps, :mod:`moram_ref.experiments.llm.throughput`), plain and MoRAM. Self-checks: the attached model equals the plain one
while its values are 0; losses finite; the fused variant's layers agree with eager's layer by layer on the
model's own activations (:mod:`moram_ref.perf.layer_agreement`, both modes; its step-0 loss is compared
too, but on a random Llama the bank hardly moves the loss); every method trains on the same dropout draws;
every variant's first new token is its model's argmax wherever the top two logits are further apart than
bf16 rounding can explain.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import traceback

import torch

from moram_ref.perf import layer_agreement as LA
from moram_ref.perf.accuracy import loss_agreement
from moram_ref.perf.bank import fill_bank
from moram_ref.perf.layer_cases import config_with_kernel, fused_config
from moram_ref.perf.timing import is_cuda, ratio, sync

LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                   rope_theta=500000.0, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
TASKS = 8


def random_llama(quick: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**(TINY if quick else LLAMA_32_1B))
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(torch.bfloat16).eval(), cfg


def attach_with_bank(model, config, method: str, tasks: int, check_ids: torch.Tensor | None = None) -> dict:
    """Attach ``method`` (atoms in float32), then ``tasks − 1`` finished tasks with random values, then a
    current one. With ``check_ids``: first checks that the attached model (values 0) equals the plain one."""
    from moram_ref.experiments.llm.backbones import ATTENTION_TARGETS
    from moram_ref.torch import attach as A

    checks = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    want = model(input_ids=check_ids).logits if check_ids is not None else None
    A.attach(model, config, ATTENTION_TARGETS, method=method, dtype=torch.float32)
    A.begin_task(model, gen)
    if want is not None:
        diff = float((model(input_ids=check_ids).logits.float() - want.float()).abs().max())
        # expected exactly 0 (y + 0 = y); one bf16 ulp of the largest logit allows for a kernel that is not
        # bitwise reproducible, while a wrong update still fails
        tol = 2.0**-8 * float(want.float().abs().max())
        checks["check_identity_at_begin"] = {"ok": diff <= tol, "max_abs_diff": diff, "tolerance": tol}
    fill_bank(model, tasks, gen)
    return checks


def llm_train_section(device: str, quick: bool, deadline: float, save=lambda part: None) -> dict:
    from moram_ref.config import MoRAMConfig
    from moram_ref.torch import attach as A

    base, cfg = random_llama(quick, device)
    batch, length, warmup, steps = (2, 32, 1, 2) if quick else (8, 512, 2, 4)
    gen = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=gen).to(device)
    moram_cfg = MoRAMConfig.paper_llm()
    methods = {"seq_lora": ("seq_lora", moram_cfg), "moram": ("moram", config_with_kernel(moram_cfg, "torch"))}
    out: dict = {"shapes": {"model": "tiny llama" if quick else "random Llama-3.2-1B shape", "dtype": "bfloat16",
                            "batch": batch, "length": length, "tasks_in_bank": TASKS}, "methods": {}}
    try:
        methods["moram_fused"] = ("moram", fused_config(moram_cfg, device))
    except TypeError as exc:
        out["methods"]["moram_fused"] = {"available": False, "reason": str(exc)}
    check_ids = ids[:, : min(length, 64)]
    eager_ref = None  # the eager model's layer inputs and outputs, for the fused variant's check
    for name, (method, config) in methods.items():
        if name == "moram_fused" and time.monotonic() > deadline:
            out["methods"][name] = {"available": False, "reason": "skipped: time budget"}
            continue
        model = None
        try:
            model = copy.deepcopy(base)
            with torch.no_grad():
                rec = attach_with_bank(model, config, method, TASKS if method == "moram" else 1,
                                       check_ids=check_ids if method == "moram" else None)
            if name == "moram":  # each layer's inputs during one eager forward, outputs in both modes
                eager_ref = LA.eager_reference(model, lambda: model(input_ids=check_ids))
            elif name == "moram_fused" and eager_ref:  # the same inputs through the fused layers
                rec.update(LA.checks_against(eager_ref, model))
            params = list(A.trainable_parameters(model))
            opt = torch.optim.Adam(params, lr=5e-4, betas=(0.9, 0.95))
            model.train()
            if is_cuda(device):
                torch.cuda.reset_peak_memory_stats()
            times, losses = [], []
            torch.manual_seed(1)  # the same dropout draws (p = 0.1 on the adapters' inputs) for every method
            for _ in range(warmup + steps):
                sync(device)
                t0 = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync(device)
                times.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))
            step_s = statistics.median(times[warmup:])
            rec.update(seconds_per_step=step_s, tokens_per_s=batch * length / step_s, losses=losses,
                       trainable_parameters=sum(p.numel() for p in params),
                       check_finite_loss={"ok": all(math.isfinite(v) for v in losses)},
                       peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else None)
            eager = out["methods"].get("moram", {}).get("losses")
            plain = out["methods"].get("seq_lora", {}).get("losses")  # LoRA's B starts at 0: step 0 is the plain model
            if name == "moram_fused" and eager:  # a bank of 7 frozen tasks: step 0 already routes through the kernel
                rec["check_losses_agree_with_eager"] = loss_agreement(eager, losses, checked=1,
                                                                      plain=plain[0] if plain else None)
            rec["ok"] = all(v["ok"] for k, v in rec.items() if k.startswith("check_"))
        except Exception as exc:
            rec = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc(limit=6)}
        out["methods"][name] = rec
        del model
        save(out)
    sec = {n: m.get("seconds_per_step") for n, m in out["methods"].items()}
    out["ratios"] = {f"{n}_over_seq_lora": ratio(sec.get(n), sec.get("seq_lora")) for n in ("moram", "moram_fused")}
    out["ok"] = all(m.get("ok", True) for m in out["methods"].values())
    return out


def _first_token_check(model, prompts: torch.Tensor, first: torch.Tensor) -> dict:
    """First new token == the model's own argmax, wherever the top-2 gap exceeds bf16 rounding.

    A bf16 logit is a length-``hidden`` dot product rounded a few times: its error is below
    ``16·2⁻⁸·max|logit|`` (a generous count of roundings); rows whose two best logits are closer may
    legitimately pick either.
    """
    with torch.no_grad():
        kw = dict(input_ids=prompts, attention_mask=torch.ones_like(prompts))
        try:  # only the last position's logits (64 × 256 × 128k bf16 logits would be 4 GiB)
            logits = model(**kw, logits_to_keep=1).logits[:, -1].float()
        except TypeError:
            logits = model(**kw).logits[:, -1].float()
    top = logits.topk(2, dim=-1)
    margin = 16 * 2.0**-8 * logits.abs().amax(-1)
    clear = (top.values[:, 0] - top.values[:, 1]) > margin
    wrong = int(((first != top.indices[:, 0]) & clear).sum())
    return {"ok": wrong == 0, "disagreements": wrong, "rows_checked": int(clear.sum()), "rows": int(len(first))}


def _throughput_api():
    """The LLM track's throughput function and merged-LoRA maker, where this version has them."""
    try:
        from moram_ref.experiments.llm.throughput import generation_throughput, merge_random_lora
    except ImportError:
        return None, None
    return generation_throughput, merge_random_lora


def _fallback_throughput(model, prompts: torch.Tensor, new: int, mode: str) -> dict:
    """Hugging Face ``generate`` timed after one warm-up; "compiled": a static cache (transformers compiles
    the decoding step on CUDA by itself)."""
    kw = dict(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
              do_sample=False, pad_token_id=0)
    if mode == "compiled":
        kw["cache_implementation"] = "static"
    device = prompts.device
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(**kw)
        sync(device)
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        seq = model.generate(**kw)
        sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "new_tokens_per_s": prompts.shape[0] * new / seconds, "warmup_seconds": warmup,
            "sequences": seq[:, prompts.shape[1]:]}


OVERRUN_S = 100  # compiled generation may end this long past the budget: gpu_check's timeout leaves 120 s
MORAM_COMPILE_FACTOR = 1.5  # MoRAM's compiled variant takes at most this × the plain model's (its layers add graph)


def _skip_compiled(name: str, plain_compiled_s: float | None, deadline: float, quick: bool) -> str | None:
    """Why a compiled variant does not start (None: it starts). The goal compares compiled with compiled, so
    MoRAM's runs only after the plain model's did, and only if it is expected (``MORAM_COMPILE_FACTOR`` × the
    plain model's measured time, compilation included) to end within ``OVERRUN_S`` past the budget."""
    now = time.monotonic()
    if name == "plain_compiled":
        return None if now <= deadline - (5 if quick else 60) else "time budget (needs 60 s of it left)"
    if plain_compiled_s is None:
        return "the plain model's compiled variant did not run or failed"
    expected_end = now + MORAM_COMPILE_FACTOR * plain_compiled_s
    if not quick and expected_end > deadline + OVERRUN_S:
        return f"time budget (expected {MORAM_COMPILE_FACTOR * plain_compiled_s:.0f} s, would end " \
               f"{expected_end - deadline:.0f} s past it; {OVERRUN_S} s allowed)"
    return None


def llm_generate_section(device: str, quick: bool, deadline: float, save=lambda part: None) -> dict:
    """New tokens/s per variant (see the module docstring), ratios vs the plain model."""
    from moram_ref.config import MoRAMConfig
    from moram_ref.experiments.llm.backbones import ATTENTION_TARGETS
    from moram_ref.torch import attach as A

    throughput, merge = _throughput_api()
    base, cfg = random_llama(quick, device)
    n_prompts, prompt_len, new = (4, 16, 8) if quick else (64, 256, 64)
    gen = torch.Generator(device="cpu").manual_seed(2)
    prompts = torch.randint(3, cfg.vocab_size, (n_prompts, prompt_len), generator=gen).to(device)
    moram = copy.deepcopy(base)
    with torch.no_grad():
        attach_with_bank(moram, config_with_kernel(MoRAMConfig.paper_llm(), "torch"), "moram", TASKS)
    A.end_task(moram)
    moram.eval()
    merged = copy.deepcopy(base)
    if merge is not None:
        merge(merged, ATTENTION_TARGETS, rank=8, seed=0)
    else:
        with torch.no_grad():  # a rank-8 LoRA folded into q/k/v/o: W + B A, the plain model's cost
            for name, lin in merged.named_modules():
                if name.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    a = torch.randn(8, lin.in_features, generator=gen) / lin.in_features**0.5
                    b = torch.randn(lin.out_features, 8, generator=gen) * 0.02
                    lin.weight += (b @ a).to(lin.weight)
    variants = {"plain": (base, "eager"), "moram_eager": (moram, "eager"), "merged_lora": (merged, "eager"),
                "plain_compiled": (base, "compiled"), "moram_compiled": (moram, "compiled")}
    backend = "eager" if quick else "inductor"  # quick: the same fullgraph tracing, no code generation
    out: dict = {"shapes": {"prompts": n_prompts, "prompt_length": prompt_len, "new_tokens": new,
                            "bank_atoms_per_layer": TASKS * MoRAMConfig.paper_llm().atoms_per_task},
                 "implementation": "moram_ref.experiments.llm.throughput" if throughput else
                 "Hugging Face generate, cache_implementation='static' for 'compiled' (fallback)",
                 "compile_backend": backend, "variants": {}}
    plain_compiled_s = None  # how long the plain model's compiled variant took, compilation included
    for name, (model, mode) in variants.items():
        if mode == "compiled" and (skip := _skip_compiled(name, plain_compiled_s, deadline, quick)):
            out["variants"][name] = {"available": False, "reason": f"skipped: {skip}"}
            continue
        started = time.monotonic()
        try:
            if is_cuda(device):
                torch.cuda.reset_peak_memory_stats()
            if throughput is not None:
                res = throughput(model, None, prompts, new, mode=mode, repeat=1 if quick else 2, backend=backend)
            else:
                res = _fallback_throughput(model, prompts, new, mode)
            check = _first_token_check(model, prompts, res["sequences"][:, 0].to(device))
            out["variants"][name] = {
                "mode": mode, "seconds": res["seconds"], "new_tokens_per_s": res["new_tokens_per_s"],
                "first_call_s": res["warmup_seconds"], "check_first_token": check, "ok": check["ok"],
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else None}
        except Exception as exc:
            out["variants"][name] = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc(limit=6)}
        if name == "plain_compiled":
            plain_compiled_s = time.monotonic() - started if out["variants"][name].get("ok") else None
        save(out)
    tps = {n: v.get("new_tokens_per_s") for n, v in out["variants"].items()}
    out["ratios"] = {f"{n}_over_plain": ratio(tps.get(n), tps.get("plain")) for n in tps if n != "plain"}
    # like for like (the goal's ratio): compiled MoRAM against the plain model compiled the same way
    out["ratios"]["moram_compiled_over_plain_compiled"] = ratio(tps.get("moram_compiled"), tps.get("plain_compiled"))
    out["ok"] = all(v.get("ok", True) for v in out["variants"].values())
    return out
