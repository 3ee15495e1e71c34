"""X-TAIL and MTIL training and evaluation on open_clip (spec §5–§6), resumable.

Per task: ``begin_task`` (fresh atoms from a generator seeded by ``(seed, t)``), the K-shot subset from its
manifest, ``iterations`` steps of ``batch`` images in an order seeded by ``(seed, t)``, AdamW (0.9, 0.9999),
weight decay 0, cosine schedule, the two-term loss with earlier classes masked; the text features of the
current classes carry gradient, those of earlier classes are computed once per task without. Then
``end_task`` and an evaluation on every domain's test set over the union of all domains' classes, each
domain with its own template. The text classifier is computed once per evaluation. MTIL (``protocol="mtil"``):
the loss sees the current dataset's classes only and each dataset is scored in its own label space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from moram_ref.config import MoRAMConfig
from moram_ref.experiments import rundir, seeding, sequence_state
from moram_ref.experiments.clip.data import Domain, few_shot
from moram_ref.experiments.progress import Step
from moram_ref.shapes import check_scores
from moram_ref.torch import attach as A
from moram_ref.torch import checkpoint
from moram_ref.torch.losses import two_term_loss

from moram_ref.experiments.clip import METHODS  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class ClipSettings:
    method: str = "moram"
    protocol: str = "xtail"  # "xtail": union label space, earlier classes masked; "mtil": per-dataset
    shots: int | None = 16  # None: every training image (full-shot)
    iterations: int = 500
    batch: int = 64
    lr: float = 5e-4
    eval_batch: int = 256
    seed: int = 42
    targets: str = ""  # a regex from backbone.target_regex(); empty: both encoders, attention + MLP
    workers: int = 0
    moram: MoRAMConfig = field(default_factory=MoRAMConfig.paper_clip)


class ImageList(torch.utils.data.Dataset):
    """Images (files, or ``tv:`` items of torchvision datasets under ``data_root``) as RGB tensors."""

    def __init__(self, paths, labels, transform, data_root: Path | None = None):
        self.paths, self.labels, self.transform, self.data_root = paths, labels, transform, data_root

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image  # noqa: PLC0415

        p = str(self.paths[i])
        if p.startswith("tv:"):
            from moram_ref.experiments.clip.tvdata import open_item  # noqa: PLC0415

            img = open_item(p, str(self.data_root))
        else:
            try:
                img = Image.open(p)
                img.load()
            except FileNotFoundError:
                raise
            except OSError as exc:  # truncated or not an image: named (PIL's "Truncated File Read" is not)
                raise OSError(exc.errno, f"{p}: cannot read the image ({exc})") from None
        return self.transform(img.convert("RGB")), int(self.labels[i])


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one (``torchrun`` sets it up)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()


def _features(model, images=None, tokens=None):
    if images is not None:
        images = images.to(dtype=next(model.parameters()).dtype)
        return F.normalize(model.encode_image(images), dim=-1)
    return F.normalize(model.encode_text(tokens), dim=-1)


@torch.no_grad()
def text_classifier(model, tokenizer, domains: list[Domain], device, batch: int = 256,
                    ensemble: bool = False) -> torch.Tensor:
    """Normalised class features (n_classes, D); with ``ensemble``, each class's features averaged over the
    domain's evaluation templates and renormalised (CLIP's prompt ensembling)."""
    per_class = [[p] for d in domains for p in d.prompts] if not ensemble else \
        [ps for d in domains for ps in d.eval_prompts()]
    flat = [p for ps in per_class for p in ps]
    feats = torch.cat([_features(model, tokens=tokenizer(flat[i : i + batch]).to(device))
                       for i in range(0, len(flat), batch)])  # (n_prompts, D)
    sizes = [len(ps) for ps in per_class]
    return F.normalize(torch.stack([f.mean(0) for f in torch.split(feats, sizes)]), dim=-1)  # (n_classes, D)


@torch.no_grad()
def evaluate(model, tokenizer, transform, domains: list[Domain], settings: ClipSettings, device,
             data_root: Path | None = None) -> np.ndarray:
    """Top-1 accuracy (%) on every domain's test set: over the union label space of all domains (X-TAIL),
    or over the domain's own classes (MTIL)."""
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))
    with autocast:
        classifier = text_classifier(model, tokenizer, domains, device, ensemble=True).float()
    offsets = np.cumsum([0] + [len(d.classnames) for d in domains])
    accs = []
    rank, size = world()
    for j, d in enumerate(domains):
        items = ImageList(d.test.paths, d.test.labels, transform, data_root)
        share = torch.utils.data.Subset(items, list(range(rank, len(items), size)))  # sharded evaluation
        loader = torch.utils.data.DataLoader(share, batch_size=settings.eval_batch, num_workers=settings.workers)
        hits, total = 0, 0
        own = slice(int(offsets[j]), int(offsets[j + 1]))
        for images, labels in loader:
            with autocast:  # bf16 on a GPU
                scores = _features(model, images=images.to(device)).float() @ classifier.T
            check_scores(scores, "class", f"test images of {d.key}", "image or class-name features")
            if settings.protocol == "mtil":
                hits += int((scores[:, own].argmax(1).cpu() == labels).sum())
            else:
                hits += int((scores.argmax(1).cpu() == labels + int(offsets[j])).sum())
            total += len(labels)
        if size > 1:
            counts = torch.tensor([hits, total], dtype=torch.long, device=device)
            torch.distributed.all_reduce(counts)
            hits, total = (int(c) for c in counts)
        accs.append(100.0 * hits / total)
    return np.array(accs)


def train_task(model, tokenizer, transform, domains: list[Domain], t: int, settings: ClipSettings, device,
               manifest_dir: Path, data_root: Path | None = None, on_step=None) -> dict:
    """``begin_task``, ``settings.iterations`` steps on domain ``t`` (0-based), ``end_task``.

    Mode: the backbone stays in evaluation mode (its own dropout off), the adapters are in training mode
    (their dropout acts, the threshold δ is off, spec §3); everything is left in evaluation mode, also
    when the task is interrupted. Randomness (:mod:`..seeding`): the global generator is reseeded from
    ``(seed, t)`` before the data loader starts and from ``(seed, t, step, rank)`` before every step, and
    restored afterwards, so a resumed run trains exactly as the uninterrupted one. ``on_step`` (optional)
    receives a :class:`~moram_ref.experiments.progress.Step` after every step.
    """
    d = domains[t]
    rank, size = world()
    if settings.shots and rank == 0:
        few_shot(d, settings.shots, settings.seed, manifest_dir)  # one process writes the manifest
    _barrier()
    idx = few_shot(d, settings.shots, settings.seed, manifest_dir) if settings.shots else np.arange(len(d.train.labels))
    A.begin_task(model, torch.Generator().manual_seed(settings.seed * 1000 + t))
    params = list(A.trainable_parameters(model))
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.9999), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / settings.iterations)))
    mtil = settings.protocol == "mtil"  # MTIL: the current dataset's classes only; X-TAIL: earlier ones masked
    offset = 0 if mtil else sum(len(x.classnames) for x in domains[:t])
    model.eval()
    with torch.no_grad():
        seen = text_classifier(model, tokenizer, domains[:t], device) if t and not mtil else None
    cur_tokens = tokenizer(d.prompts).to(device)
    data = ImageList([d.train.paths[i] for i in idx], d.train.labels[idx], transform, data_root)
    rng = np.random.default_rng([settings.seed, t])
    order = np.concatenate([rng.permutation(len(data)) for _ in range(
        math.ceil(settings.iterations * settings.batch / max(len(data), 1)))])[: settings.iterations * settings.batch]
    loader = torch.utils.data.DataLoader(data, batch_size=settings.batch, sampler=order.tolist(),
                                         num_workers=settings.workers, drop_last=False)
    scale = model.logit_scale.exp().detach()
    A.set_training(model, True)
    try:
        with seeding.private_rng(device):
            seeding.reseed(settings.seed, t)  # the loader's worker seeds and any random transform
            for step, (images, labels) in enumerate(loader):
                seeding.reseed(settings.seed, t, step, rank)  # this process's dropout masks
                img, labels = _batch_features(model, images, labels, rank, size, device)
                cur = _features(model, tokens=cur_tokens)
                classes = cur if seen is None else torch.cat([seen, cur])
                loss = two_term_loss(img, classes, labels.to(device) + offset, n_masked=offset, logit_scale=scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if size > 1:
                    for p in params:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= size
                opt.step()
                sched.step()
                if on_step is not None:
                    on_step(Step(settings.method, t + 1, len(domains), d.key, step + 1, len(loader), loss.detach()))
    finally:
        model.eval()
    A.end_task(model)
    return {"steps": settings.iterations, "train_images": len(data), "trainable": sum(p.numel() for p in params)}


def _batch_features(model, images, labels, rank: int, size: int, device):
    """Image features of the whole global batch (B, D) and its labels, in the same order.

    Several processes: each encodes its share ``images[rank::size]``, padded to ``ceil(B / size)`` rows
    with copies of the batch's first image, so every process sends the same shape to the (autograd)
    all-gather, also with an empty share; the padding rows are dropped after it. Every process then
    holds the features of the whole batch (the text→image term of the loss couples the batch); the
    atoms' gradients are averaged by hand afterwards, which gives the one-process update.
    """
    if size == 1:
        return _features(model, images=images.to(device)), labels
    share = -(-len(images) // size)
    mine = images[rank::size]
    padded = torch.cat([mine, images[:1].expand(share - len(mine), *images.shape[1:])])
    parts = torch.distributed.nn.functional.all_gather(_features(model, images=padded.to(device)))
    counts = [len(images[r::size]) for r in range(size)]
    img = torch.cat([part[:c] for part, c in zip(parts, counts)])
    return img, torch.cat([labels[r::size] for r in range(size)])


def run_sequence(model, tokenizer, transform, domains: list[Domain], settings: ClipSettings, out: Path, device="cpu",
                 resume: bool = False, eval_only: bool = False, data_root: Path | None = None, log=None,
                 on_step=None) -> np.ndarray:
    """Every task in order with a checkpoint and an evaluation row after each; returns ``a[t, j]`` (%).

    ``log`` (a callable taking a line) receives the per-task summaries, ``on_step`` a
    :class:`~moram_ref.experiments.progress.Step` after every step (process 0 only); both default to silence.
    """
    from moram_ref.experiments.clip.backbone import target_regex  # noqa: PLC0415

    out = Path(out)
    rank, _ = world()
    if rank or log is None:
        log = lambda *_: None  # noqa: E731  (one process reports)
    if rank:
        on_step = None
    n = len(domains)
    progress_path = out / "progress.json"
    progress = sequence_state.fresh(n)
    trained = settings.method != "zero_shot"
    (out / "checkpoints" if trained else out).mkdir(parents=True, exist_ok=True)  # zero_shot saves no checkpoint
    if trained:
        A.attach(model, settings.moram, settings.targets or target_regex(), method=settings.method)
    if (resume or eval_only) and progress_path.is_file():  # the CLI checked the folder (sequence_state.check_run)
        progress = sequence_state.read(progress_path, n, trained, full_rows=True)
        if resume and progress["tasks_done"]:
            if trained:
                checkpoint.load(model, out / "checkpoints" / f"task{progress['tasks_done']}.safetensors",
                                settings.moram, settings.method, tasks_done=progress["tasks_done"])
            log(sequence_state.resumed_line(settings.method, progress["tasks_done"], n))
    elif resume:  # no progress.json
        log(sequence_state.resumed_line(settings.method, None, n, progress_path.parent))
    start = 0 if eval_only else progress["tasks_done"]
    zero_shot_row = None
    for t in range(start, n):
        if eval_only and trained:
            checkpoint.load(model, out / "checkpoints" / f"task{t + 1}.safetensors", settings.moram, settings.method,
                            tasks_done=t + 1)
        elif trained:
            info = train_task(model, tokenizer, transform, domains, t, settings, device, out / "manifests", data_root,
                              on_step)
            progress["train"].append({"task": domains[t].key, **info})
            if rank == 0:
                saved = checkpoint.save(model, out / "checkpoints" / f"task{t + 1}.safetensors", settings.moram,
                                        t + 1, settings.method, sequence_state.extra(settings.seed))
                sequence_state.vouch(progress, saved)
            _barrier()
        if trained:
            row = evaluate(model, tokenizer, transform, domains, settings, device, data_root)
        else:  # the frozen model's row never changes: evaluate once
            zero_shot_row = zero_shot_row if zero_shot_row is not None else evaluate(
                model, tokenizer, transform, domains, settings, device, data_root)
            row = zero_shot_row
        progress["matrix"][t] = row.tolist()
        progress["tasks_done"] = t + 1
        if settings.method in ("moram", "dense_moram") and not eval_only and rank == 0:
            from moram_ref.experiments.clip.probes import probe  # noqa: PLC0415

            p = probe(model, transform, domains, device=device, data_root=data_root)
            progress.setdefault("n99", []).append(p["n99"])
            if t in (0, 1, n - 1):
                maps = {k: v.tolist() for k, v in p["maps"].items()}
                progress.setdefault("maps", {})[f"after_task_{t + 1}"] = {"layer": p["map_layer"], "maps": maps}
        if not eval_only and rank == 0:
            checkpoint.write_text_atomic(progress_path, rundir.dumps(progress))
        _barrier()
        log(f"{settings.method} after task {t + 1}/{n} ({domains[t].key}), accuracy (%): "
            + ", ".join(f"{d.key} {v:.1f}" for d, v in zip(domains, row)))
    return np.array(progress["matrix"], dtype=float)
