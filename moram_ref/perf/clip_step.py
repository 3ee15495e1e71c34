"""The CLIP section of the GPU check: one X-TAIL-shaped training step on a random open_clip ViT-B-16.

Batch 64 images (224²) against 200 class prompts, adapters on both encoders (spec §5 targets), bf16
autocast on CUDA, the two-term loss of the CLIP track. Methods, each on a fresh copy of one random model:
``frozen`` (forward and loss only), ``seq_lora`` (plain LoRA, rank 16 per layer), ``moram`` (eager) and
``moram_fused`` (``routing_kernel="triton"``, where that field exists); MoRAM in the last of 10 tasks (9
frozen with random values, :data:`BANK_TASKS`). Self-checks: attaching MoRAM at ``begin_task`` (values 0)
leaves the features unchanged, every loss is finite, the fused variant's layers agree with eager's layer by
layer on the model's own activations (:mod:`moram_ref.perf.layer_agreement`, both modes), and its first
losses follow eager's.
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


def _model(quick: bool, device: str):
    from moram_ref.experiments.clip import backbone

    if quick:
        model, _, _, tokenizer = backbone.tiny_clip()
        return model.to(device), tokenizer, 32
    model, _, _, tokenizer = backbone.load_clip("ViT-B-16", pretrained=None, device=device)
    return model, tokenizer, 224


def _features(model, images, tokens):
    img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    return img.float(), txt.float()


BANK_TASKS = 10  # X-TAIL's 10 domains: MoRAM's step is timed in the last task (R = 160 per layer, as the
# layer section's CLIP-like case), where routing chooses k = 16 of 160; in the first task it keeps all 16


def clip_section(device: str, quick: bool, deadline: float, save=lambda part: None) -> dict:
    """Seconds per step, images/s, peak memory per method; ratios vs sequential LoRA; checks."""
    from moram_ref.config import MoRAMConfig
    from moram_ref.experiments.clip.backbone import target_regex
    from moram_ref.torch import attach as A
    from moram_ref.torch.losses import two_term_loss

    batch, n_classes, warmup, steps = (4, 6, 1, 2) if quick else (64, 200, 2, 5)
    base, tokenizer, size = _model(quick, device)
    base.requires_grad_(False)
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    tokens = tokenizer([f"a photo of a class {i}." for i in range(n_classes)]).to(device)
    labels = torch.randint(n_classes // 2, n_classes, (batch,), generator=gen).to(device)
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=is_cuda(device))
    amp = lambda: torch.autocast(**autocast)  # noqa: E731
    cfg = MoRAMConfig.paper_clip()
    methods = {"frozen": None, "seq_lora": ("seq_lora", cfg), "moram": ("moram", config_with_kernel(cfg, "torch"))}
    try:
        methods["moram_fused"] = ("moram", fused_config(cfg, device))
    except TypeError as exc:
        out_fused = {"available": False, "reason": str(exc)}
    else:
        out_fused = None
    out: dict = {"shapes": {"batch": batch, "classes": n_classes, "image_size": size,
                            "model": "tiny open_clip" if quick else "open_clip ViT-B-16, random init",
                            "autocast": "bf16" if is_cuda(device) else None}, "methods": {}}
    if out_fused:
        out["methods"]["moram_fused"] = out_fused
    with torch.no_grad(), torch.autocast(**autocast):
        frozen_img, frozen_txt = _features(base, images, tokens)
    check_batch = images[:16], tokens[:32]  # the layer check's inputs: a slice keeps its references small
    eager_ref = None  # the eager model's layer inputs and outputs, for the fused variant's check
    for name, spec in methods.items():
        if name == "moram_fused" and time.monotonic() > deadline:
            out["methods"][name] = {"available": False, "reason": "skipped: time budget"}
            continue
        model = None
        try:
            model = copy.deepcopy(base)
            opt = None
            rec: dict = {}
            if spec is not None:
                A.attach(model, spec[1], target_regex(), method=spec[0])
                gen = torch.Generator(device="cpu").manual_seed(0)
                A.begin_task(model, gen)
                if spec[0] == "moram":  # values start at 0: the attached model is the frozen one (spec §4)
                    with torch.no_grad(), torch.autocast(**autocast):
                        img, txt = _features(model.eval(), images, tokens)
                    diff = max(float((img - frozen_img).abs().max()), float((txt - frozen_txt).abs().max()))
                    # expected exactly 0 (y + 0 = y); one bf16 ulp of a unit feature allows for a kernel
                    # that is not bitwise reproducible, while a wrong update (≫ 2⁻⁸) still fails
                    rec["check_identity_at_begin"] = {"ok": diff <= 2.0**-8, "max_abs_diff": diff}
                    model.train()
                    rec["tasks_in_bank"] = 3 if quick else BANK_TASKS  # quick: a pipeline check
                    fill_bank(model, rec["tasks_in_bank"], gen)  # the step of the sequence's last task
                    if name == "moram":  # each layer's inputs during one eager forward, outputs in both modes
                        eager_ref = LA.eager_reference(model, lambda: _features(model, *check_batch), amp)
                    elif eager_ref:  # the same inputs through the fused layers
                        rec.update(LA.checks_against(eager_ref, model, amp))
                    model.train()
                opt = torch.optim.AdamW(list(A.trainable_parameters(model)), lr=5e-4, betas=(0.9, 0.9999))
            losses, times = [], []
            if is_cuda(device):
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup + steps):
                sync(device)
                t0 = time.perf_counter()
                with torch.autocast(**autocast), torch.set_grad_enabled(opt is not None):
                    img, txt = _features(model, images, tokens)
                    loss = two_term_loss(img, txt, labels, n_classes // 2, 100.0)
                if opt is not None:
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                sync(device)
                times.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))
            step_s = statistics.median(times[warmup:])
            rec.update(available=True, seconds_per_step=step_s, images_per_s=batch / step_s, losses=losses,
                       check_finite_loss={"ok": all(math.isfinite(v) for v in losses)},
                       peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else None)
            eager = out["methods"].get("moram", {}).get("losses")
            if name == "moram_fused" and eager:  # step 0 routes through the frozen bank, step 1 follows the first update
                frozen = out["methods"].get("frozen", {}).get("losses")
                rec["check_losses_agree_with_eager"] = loss_agreement(eager, losses, checked=2,
                                                                      plain=frozen[0] if frozen else None)
            rec["ok"] = all(v["ok"] for k, v in rec.items() if k.startswith("check_"))
        except Exception as exc:
            rec = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc(limit=6)}
        out["methods"][name] = rec
        del model
        save(out)
    sec = {n: m.get("seconds_per_step") for n, m in out["methods"].items()}
    out["ratios"] = {"moram_over_seq_lora": ratio(sec.get("moram"), sec.get("seq_lora")),
                     "moram_fused_over_seq_lora": ratio(sec.get("moram_fused"), sec.get("seq_lora")),
                     "seq_lora_over_frozen": ratio(sec.get("seq_lora"), sec.get("frozen"))}
    out["ok"] = all(m.get("ok", True) for m in out["methods"].values())  # not available: no "ok", not a failure
    return out
