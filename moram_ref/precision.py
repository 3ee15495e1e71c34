"""Routing agreement with the float64 reference under the precision policy (``python -m moram_ref.precision``).

The policy (docs/semantics.md#precision): ``p = A x`` exact on the operands as given (no operand is rounded),
accumulated and returned in float32; normalise, top-k, softmax and gate in float32; the value product in
the base output's dtype; autocast never reaches the MoRAM branch. This module measures what that costs,
per variant of the same layer and input, against float64 on *the operands that variant receives*
(for a bf16 model: the bf16-rounded input and atoms, so the numbers isolate the layer's arithmetic):

* ``kept_differs``: share of tokens whose kept set differs from the reference;
* ``gate_flips``: share of (token, atom) pairs kept by the reference whose gate decision ``s ≥ δ`` differs;
* ``max_abs_dw``: the largest ``|w − w_ref|`` over all tokens and atoms;
* ``delta_rel_err``: ``‖Δ − Δ_ref‖ / ‖Δ_ref‖`` (Frobenius norms over all tokens).

Variants: ``float32``; ``float32 + autocast`` (bf16 autocast on the input's device); ``bfloat16`` (model and
input in bf16); ``bfloat16 + autocast``; and, for contrast, ``bf16 responses`` — ``p`` from a bf16 product with
bf16 output, what autocast's ``F.linear`` did to the layer before the policy. Cases: random layers and
inputs, and the inputs every MoRAM layer of a tiny open_clip CLIP sees (backbone trained a few steps on
synthetic images and captions, then two MoRAM tasks), all in evaluation mode.
"""

from __future__ import annotations

import copy

import torch

from moram_ref.config import MoRAMConfig
from moram_ref.torch import activation
from moram_ref.torch.layer import MoRAMLinear

VARIANTS = ("float32", "float32 + autocast", "bfloat16", "bfloat16 + autocast", "bfloat16, float32 atoms",
            "bfloat16 vs float32 operands", "bf16 responses")
METRICS = ("kept_differs", "gate_flips", "max_abs_dw", "delta_rel_err")


def variant_trace(layer: MoRAMLinear, x: torch.Tensor, variant: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(trace of ``variant``, float64 reference trace); evaluation mode; ``layer`` and ``x`` are float32.

    The reference is float64 on the operands the variant receives, except for ``"bfloat16 vs float32
    operands"`` (the bf16 model against float64 on the unrounded float32 input and atoms: what rounding
    the model to bf16 costs). ``"bfloat16, float32 atoms"``: a bf16 base layer and input with float32 atoms
    (the LLM track's layout). Each trace holds ``keep, gated`` (bool) and ``w, delta`` (float64).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    model, inp = copy.deepcopy(layer), x
    if variant.startswith("bfloat16"):
        inp = x.bfloat16()
        model = model.bfloat16() if variant != "bfloat16, float32 atoms" else model
        model.base_layer.bfloat16()
    source = layer if variant == "bfloat16 vs float32 operands" else model
    ref = _keep_only(copy.deepcopy(source).double().trace(x.double() if source is layer else inp.double()))
    if variant == "bf16 responses":
        tr = _bf16_responses_trace(model, inp)
    else:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=variant.endswith("autocast")):
            tr = model.trace(inp)
    return _keep_only(tr), ref


def _bf16_responses_trace(layer: MoRAMLinear, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the layer computed under autocast before the policy: ``p`` rounded to bf16, routing in float32."""
    keys, values = layer.bank()  # (R, d_in), (d_out, R)
    p = activation.responses(x.bfloat16(), keys.bfloat16()).float()  # (..., R)
    tr = activation.mixing_weights(p, layer.config, training=False)
    return {**tr, "delta": activation.update(tr["w"], p, values.float())}


def _keep_only(tr: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: tr[k].detach() for k in ("keep", "gated")}
    out.update({k: tr[k].detach().double() for k in ("w", "delta")})
    return out


def agreement(pairs: list[tuple[dict, dict]]) -> dict[str, float]:
    """The four metrics over every (trace, reference) pair pooled (tokens of all layers together)."""
    tokens = kept_diff = ref_kept = flips = 0
    max_dw, err2, ref2 = 0.0, 0.0, 0.0
    for tr, ref in pairs:
        keep, rkeep = tr["keep"].reshape(-1, tr["keep"].shape[-1]), ref["keep"].reshape(-1, ref["keep"].shape[-1])
        tokens += keep.shape[0]
        kept_diff += int((keep != rkeep).any(dim=-1).sum())
        ref_kept += int(rkeep.sum())
        flips += int(((tr["gated"] != ref["gated"]) & ref["keep"]).sum())
        max_dw = max(max_dw, float((tr["w"] - ref["w"]).abs().max()))
        err2 += float(((tr["delta"] - ref["delta"]) ** 2).sum())
        ref2 += float((ref["delta"] ** 2).sum())
    return {"kept_differs": kept_diff / max(tokens, 1), "gate_flips": flips / max(ref_kept, 1),
            "max_abs_dw": max_dw, "delta_rel_err": (err2 / ref2) ** 0.5 if ref2 > 0 else 0.0, "tokens": tokens}


def random_case(d: int = 768, tasks: int = 2, config: MoRAMConfig | None = None, tokens: int = 4096,
                seed: int = 0) -> list[tuple[MoRAMLinear, torch.Tensor]]:
    """One random layer (``tasks`` frozen tasks, keys as ``begin_task`` draws them, values N(0, 0.02²))
    and ``tokens`` standard normal inputs."""
    config = config or MoRAMConfig.paper_clip()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = MoRAMLinear(torch.nn.Linear(d, d), config)
    for _ in range(tasks):
        layer.begin_task(gen)
        with torch.no_grad():
            layer.values.normal_(0.0, 0.02, generator=gen)
        layer.end_task()
    return [(layer.eval(), torch.randn(tokens, d, generator=gen))]


def tiny_clip_case(width: int = 128, steps: int = 40, task_steps: int = 20, seed: int = 0,
                   images: int = 64) -> list[tuple[MoRAMLinear, torch.Tensor]]:
    """(layer, inputs it sees) for every MoRAM layer of a tiny open_clip CLIP, paper CLIP settings.

    The backbone trains ``steps`` contrastive steps on synthetic images (10 classes, a colour each, plus
    noise) and their captions; then MoRAM (q/k/v/out and MLP of both towers) trains two tasks of five
    classes, ``task_steps`` each, and every layer's inputs are recorded on ``images`` test images and the
    ten captions.
    """
    import open_clip  # noqa: PLC0415  (the 'clip' extra)

    from moram_ref.experiments.clip.backbone import prepare, target_regex  # noqa: PLC0415
    from moram_ref.torch import attach as A  # noqa: PLC0415

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = open_clip.CLIP(embed_dim=64, vision_cfg={"image_size": 32, "layers": 2, "width": width, "patch_size": 8,
                                                      "head_width": 32},
                           text_cfg={"context_length": 16, "vocab_size": 49408, "width": width, "heads": 4, "layers": 2})
    prepare(model)
    tokens = open_clip.get_tokenizer("ViT-B-16", context_length=16)([f"a photo of thing number {c}" for c in range(10)])
    colours = torch.rand(10, 3, 1, 1, generator=gen)

    def batch(classes: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 3, 32, 32)
        return colours[classes] + 0.3 * torch.randn(len(classes), 3, 32, 32, generator=gen)

    def train(params, classes: range, n: int) -> None:
        opt = torch.optim.AdamW(params, lr=1e-3)
        for _ in range(n):
            labels = torch.tensor(classes)[torch.randint(len(classes), (32,), generator=gen)]
            img = torch.nn.functional.normalize(model.encode_image(batch(labels)), dim=-1)
            txt = torch.nn.functional.normalize(model.encode_text(tokens[list(classes)]), dim=-1)
            loss = torch.nn.functional.cross_entropy(model.logit_scale.exp() * img @ txt.T, labels - classes[0])
            opt.zero_grad()
            loss.backward()
            opt.step()

    model.train()
    train(list(model.parameters()), range(10), steps)
    model.requires_grad_(False)
    A.attach(model, MoRAMConfig.paper_clip(), target_regex())
    for t in range(2):
        A.begin_task(model, gen)
        A.set_training(model, True)
        train(list(A.trainable_parameters(model)), range(5 * t, 5 * t + 5), task_steps)
        A.end_task(model)
    model.eval()
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0].detach()))
             for name, m in A.moram_layers(model)]
    with torch.no_grad():
        model.encode_image(batch(torch.arange(images) % 10))
        model.encode_text(tokens)
    for h in hooks:
        h.remove()
    layers = dict(A.moram_layers(model))
    return [(layers[name], torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])) for name, xs in seen.items()]


def measure(cases: dict[str, list[tuple[MoRAMLinear, torch.Tensor]]],
            variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """One row per (case, variant): the metrics of :func:`agreement`."""
    rows = []
    for case, pairs in cases.items():
        for variant in variants:
            with torch.no_grad():
                traces = [variant_trace(layer, x, variant) for layer, x in pairs]
            rows.append({"case": case, "variant": variant, **agreement(traces)})
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`measure`'s rows."""
    lines = ["| case | variant | tokens | kept set differs | gate decisions flip | max abs Δw | Δ rel. error |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['variant']} | {r['tokens']} | {100 * r['kept_differs']:.2f} % | "
                     f"{100 * r['gate_flips']:.2f} % | {r['max_abs_dw']:.2e} | {100 * r['delta_rel_err']:.3f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from moram_ref.experiments import cliargs  # noqa: PLC0415

    p = cliargs.Parser(prog="python -m moram_ref.precision", description=__doc__,  # errors: one line, exit 2
                       formatter_class=cliargs.DescribedHelp)
    p.add_argument("--d", type=cliargs.integer(1, cliargs.MAX_COUNT), default=768, help="width of the random layer")
    p.add_argument("--tokens", type=cliargs.integer(1, cliargs.MAX_COUNT), default=4096,
                   help="tokens of the random case")
    p.add_argument("--clip-width", type=cliargs.integer(0, 4096), default=128,
                   help="width of the tiny CLIP (0 skips it; else a multiple of 32, the head width)")
    p.add_argument("--seed", type=cliargs.integer(0, cliargs.MAX_SEED), default=0, help="seed of the random cases")
    a = p.parse_args(argv)
    if a.clip_width % 32:
        p.error(f"--clip-width: expected 0 or a positive multiple of 32 (the head width), got {a.clip_width}")
    try:  # float64 references of the weights and a few (tokens, d) activations
        cliargs.fits_in_memory("--d/--tokens", 8 * (4 * a.d * a.d + 8 * a.tokens * a.d), "cpu")
    except cliargs.UsageError as exc:
        p.error(str(exc))
    cases = {f"random, d={a.d}, 2×16 atoms, paper CLIP": random_case(a.d, 2, MoRAMConfig.paper_clip(), a.tokens, a.seed),
             f"random, d={a.d}, 2×8 atoms, paper LLM": random_case(a.d, 2, MoRAMConfig.paper_llm(), a.tokens, a.seed)}
    if a.clip_width:
        cases[f"tiny CLIP (width {a.clip_width}), every MoRAM layer"] = tiny_clip_case(a.clip_width, seed=a.seed)
    print(format_table(measure(cases)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
