"""The prepared GPU check: one script, run once on a lent GPU machine with no internet, JSON out.

``python -m moram_ref.gpu_check --out gpu_check.json`` runs, each section timed and guarded:
* ``layer``: the layer benchmark on CUDA in float32 and bfloat16 (ratios vs plain LoRA);
* ``clip``: a random-initialised ViT-B-16 with adapters on both encoders, an X-TAIL-shaped step
  (batch 64), images/s for the frozen backbone (forward only), sequential LoRA and MoRAM, peak memory;
* ``llm``: a random-initialised decoder of Llama-3.2-1B's shape in bf16, MoRAM on q/k/v/o, a few
  training steps (tokens/s, peak memory) and batched greedy generation throughput.
``--small`` shrinks every section so that the same code runs on a CPU in seconds (tested in CI).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                   rope_theta=500000.0, tie_word_embeddings=True)
SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def layer_section(device: str, small: bool) -> dict:
    from moram_ref import bench

    out = {}
    for dtype in ("float32", "bfloat16"):
        shapes = dict(d=64, tasks=2, r=4, k=4, tokens=256, repeat=2) if small else dict(repeat=7)
        res = bench.run(dtype=dtype, device=device, numpy_too=False, **shapes)
        out[dtype] = {"ratios": res["ratios"], "seconds": res["seconds"], "shapes": res["shapes"]}
    return out


def llm_section(device: str, small: bool, steps: int = 5) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from moram_ref.config import MoRAMConfig
    from moram_ref.experiments.llm.backbones import ATTENTION_TARGETS
    from moram_ref.torch import attach as A

    dtype = torch.float32 if small else torch.bfloat16
    torch.manual_seed(0)
    cfg = LlamaConfig(**(SMALL if small else LLAMA_32_1B))
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    A.attach(model, MoRAMConfig.paper_llm(), ATTENTION_TARGETS, dtype=torch.float32)
    A.begin_task(model, torch.Generator(device="cpu").manual_seed(0))
    params = list(A.trainable_parameters(model))
    opt = torch.optim.Adam(params, lr=5e-4, betas=(0.9, 0.95))
    batch, length = (2, 32) if small else (8, 512)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    train_s = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    A.end_task(model)
    model.eval()
    n_prompts, new_tokens = (4, 8) if small else (64, 64)
    prompts = torch.randint(3, cfg.vocab_size, (n_prompts, 32 if small else 256), device=device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    _sync(device)
    gen_s = time.perf_counter() - t0
    return {
        "model": "random Llama-3.2-1B shape" if not small else "tiny llama", "parameters": n_params,
        "trainable_atoms_per_task": sum(p.numel() for p in params), "dtype": str(dtype),
        "train": {"batch": batch, "length": length, "seconds_per_step": train_s, "tokens_per_s": batch * length / train_s,
                  "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None},
        "generate": {"prompts": n_prompts, "new_tokens": new_tokens, "seconds": gen_s,
                     "new_tokens_per_s": n_prompts * new_tokens / gen_s},
    }


def clip_section(device: str, small: bool, steps: int = 5) -> dict:
    """An X-TAIL-shaped step (batch 64, both encoders) on a random ViT-B-16: images/s per method, peak memory."""
    from moram_ref.config import MoRAMConfig
    from moram_ref.experiments.clip import backbone
    from moram_ref.torch import attach as A
    from moram_ref.torch.losses import two_term_loss

    out = {}
    batch, n_classes = (4, 6) if small else (64, 200)
    for method in ("none", "seq_lora", "moram"):
        if small:
            model, _, _, tokenizer = backbone.tiny_clip()
            size = 32
        else:
            model, _, _, tokenizer = backbone.load_clip("ViT-B-16", pretrained=None, device=device)
            size = 224
        model = model.to(device)
        model.requires_grad_(False)
        opt = None
        if method != "none":  # "none": the frozen backbone alone, forward and loss only
            A.attach(model, MoRAMConfig.paper_clip(), backbone.target_regex(), method=method)
            A.begin_task(model, torch.Generator().manual_seed(0))
            opt = torch.optim.AdamW(list(A.trainable_parameters(model)), lr=5e-4, betas=(0.9, 0.9999))
        images = torch.randn(batch, 3, size, size, device=device)
        tokens = tokenizer([f"a photo of a class {i}." for i in range(n_classes)]).to(device)
        labels = torch.randint(n_classes // 2, n_classes, (batch,), device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")), \
                    torch.set_grad_enabled(opt is not None):
                img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
                txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
                loss = two_term_loss(img.float(), txt.float(), labels, n_classes // 2, 100.0)
            if opt is not None:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
        step_s = sorted(times[1:] or times)[len(times[1:] or times) // 2]
        out[method] = {"seconds_per_step": step_s, "images_per_s": batch / step_s,
                       "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None}
    out["shapes"] = {"batch": batch, "classes": n_classes, "model": "tiny" if small else "ViT-B-16 (random init)"}
    return out


SECTIONS = {"layer": layer_section, "llm": llm_section, "clip": clip_section}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moram_ref.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    a = p.parse_args(argv)
    report = {"device": a.device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None, "sections": {}}
    for name in a.sections:
        t0 = time.perf_counter()
        try:
            report["sections"][name] = {"ok": True, **SECTIONS[name](a.device, a.small)}
        except Exception as exc:  # one failing section must not hide the others' results
            report["sections"][name] = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}
        report["sections"][name]["wall_s"] = time.perf_counter() - t0
        a.out.write_text(json.dumps(report, indent=1, default=str))  # written after every section
        print(f"{name}: {'ok' if report['sections'][name]['ok'] else 'FAILED'} "
              f"({report['sections'][name]['wall_s']:.0f} s)")
    print(f"wrote {a.out}")
    return 0 if all(s["ok"] for s in report["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
