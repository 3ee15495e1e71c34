"""Train through a task sequence and evaluate after every task (spec §5–§6), resumable, any process count.

Determinism across resumes and process counts: the fresh atoms of task ``t`` come from a generator
seeded by ``(seed, t)``, the data order of (task, epoch) from ``(seed, t, epoch)``, the dropout masks of
a micro-batch from ``(seed, t, epoch, step, micro-batch)``; nothing depends on what ran before in the
process, so a run resumed after a kill trains exactly as the uninterrupted one. Every global batch
(``batch`` samples) is split into micro-batches dealt round-robin to the processes; each micro-batch
loss is its summed token loss divided by the *global* batch's answer-token count, times the process
count (DDP averages gradients), so the update equals the one-process update and the learning rate
means the same at any scale. A process whose share of a
global batch is empty still runs a (zero-loss) forward and backward, so it joins every collective.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.experiments import rundir, seeding, sequence_state
from moram_ref.experiments.llm import backbones, scoring
from moram_ref.experiments.llm.backbones import ATTENTION_TARGETS
from moram_ref.experiments.llm.data import MAX_PROMPT, TRACE_EPOCHS, Task, collate, encode_examples
from moram_ref.experiments.llm.generate import generate
from moram_ref.experiments.progress import Step
from moram_ref.torch import attach as A
from moram_ref.torch import checkpoint
from moram_ref.torch.olora import orthogonality_penalty

from moram_ref.experiments.llm import METHODS  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class LLMSettings:
    method: str = "moram"
    epochs: int | None = None  # None: the paper's TRACE epochs per task, 1 for other tasks
    batch: int = 32  # effective (global) batch
    micro_batch: int = 4
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    max_prompt: int = 1024
    max_answer: int = 512
    max_new_tokens: int = 64
    eval_batch: int = 16
    olora_lambda: float = 0.5
    numglue_mode: str = "numeric"
    seed: int = 1234
    fsdp: bool = False  # shard the frozen model over the processes (FSDP2); the atoms stay replicated
    targets: tuple[str, ...] = tuple(ATTENTION_TARGETS)
    moram: MoRAMConfig = field(default_factory=MoRAMConfig.paper_llm)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.batch < 1 or self.micro_batch < 1:
            raise ValueError(f"batch and micro_batch must be >= 1, got {self.batch}, {self.micro_batch}")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def epochs_for(task: str, settings: LLMSettings) -> int:
    return settings.epochs if settings.epochs is not None else TRACE_EPOCHS.get(task, 1)


def train_task(model, tokenizer, task: Task, t: int, settings: LLMSettings, dist: Dist, on_step=None,
               n_tasks: int = 0) -> dict:
    """``begin_task``, the epochs of task ``t`` (0-based), ``end_task``. Returns counts (steps, truncations).

    Mode: the whole model is in training mode during the task (as Hugging Face's ``Trainer`` has it):
    the adapters' dropout acts, the threshold δ is off (``threshold_mode="eval"``, spec §3) and gradient
    checkpointing, which acts only in training mode, recomputes activations; the backbone's own dropout
    is its config's (``attention_dropout`` is 0 in the LLaMA, Qwen2 and Gemma configs). The model is left
    in evaluation mode, also when the task is interrupted. Randomness: see :mod:`..seeding`; the global
    generator is reseeded per micro-batch (by its global index) and restored afterwards.
    ``on_step`` (optional) receives a :class:`~moram_ref.experiments.progress.Step` after every step.
    """
    gen = torch.Generator().manual_seed(settings.seed * 1000 + t)
    A.begin_task(model, gen)
    params = list(A.trainable_parameters(model))
    net = model
    if dist.world > 1 and not settings.fsdp:
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, weight_decay=0.0)
    enc = encode_examples(tokenizer, task.train, MAX_PROMPT.get(task.name, settings.max_prompt), settings.max_answer)
    device = next(model.parameters()).device
    epochs = epochs_for(task.name, settings)
    total = epochs * math.ceil(len(enc.input_ids) / settings.batch)
    steps = 0
    model.train()
    try:
        with seeding.private_rng(device):
            for epoch in range(epochs):
                order = np.random.default_rng([settings.seed, t, epoch]).permutation(len(enc.input_ids))
                for b, start in enumerate(range(0, len(order), settings.batch)):
                    batch = order[start : start + settings.batch]
                    n_tokens = sum(sum(lbl != -100 for lbl in enc.labels[i]) for i in batch)
                    # micro-batch m of the global batch goes to process m % world; a share may be empty
                    n_micro = dist.world * math.ceil(len(batch) / (dist.world * settings.micro_batch))
                    micro = [batch[m::n_micro] for m in range(n_micro)][dist.rank :: dist.world]
                    opt.zero_grad(set_to_none=True)
                    step_loss = torch.zeros((), device=device)
                    for j, idx in enumerate(micro):
                        seeding.reseed(settings.seed, t, epoch, b, dist.rank + j * dist.world)
                        sync = j == len(micro) - 1
                        ddp_accumulate = dist.world > 1 and not settings.fsdp and not sync
                        with net.no_sync() if ddp_accumulate else contextlib.nullcontext():
                            loss = _micro_loss(net, model, enc, idx, tokenizer.pad_token_id, n_tokens, dist.world,
                                               device)
                            if settings.method == "olora" and settings.olora_lambda:
                                loss = loss + settings.olora_lambda * orthogonality_penalty(model) / len(micro)
                            loss.backward()
                        step_loss += loss.detach().float()
                    if settings.fsdp and dist.world > 1:  # the replicated atoms: average their gradients by hand
                        for p in params:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= dist.world
                    norm = torch.nn.utils.clip_grad_norm_(params, settings.clip)  # inf: a zero update
                    opt.step()
                    steps += 1
                    if on_step is not None:
                        on_step(Step(settings.method, t + 1, n_tasks or t + 1, task.name, steps, total, step_loss,
                                     grad_norm=norm))
    finally:
        model.eval()
    A.end_task(model)
    return {"steps": steps, "truncated": enc.truncated, "trainable": sum(p.numel() for p in params)}


def _micro_loss(net, model, enc, idx, pad_id, n_tokens, world, device):
    """This micro-batch's summed answer-token loss over the global batch's token count, times ``world``."""
    if len(idx) == 0:
        # an empty share (fewer samples than processes): a forward and a backward through the wrapped model
        # all the same, so that this process joins every collective (DDP's gradient all-reduce, FSDP's
        # all-gathers) exactly as often as the others; the loss is an exact zero
        out = net(input_ids=torch.full((1, 1), pad_id, device=device), use_cache=False).logits
        return out.sum() * 0.0 + sum(p.sum() for p in A.trainable_parameters(model)) * 0.0
    ids, mask, labels = collate([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx], pad_id)
    logits = net(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
    token_loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                   shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
    return token_loss * world / n_tokens


def evaluate_tasks(model, tokenizer, tasks: list[Task], settings: LLMSettings, dist: Dist) -> dict[str, dict]:
    """Greedy answers for every test prompt of ``tasks`` (sharded over processes) and each task's score."""
    out = {}
    for task in tasks:
        mine = list(range(dist.rank, len(task.test), dist.world))
        prompts = [task.test[i]["prompt"] for i in mine]
        synced = settings.fsdp and dist.world > 1
        if synced:  # equal work everywhere: pad each share to the largest with a repeated prompt
            share = math.ceil(len(task.test) / dist.world)
            prompts = prompts + [task.test[0]["prompt"]] * (share - len(prompts))
        preds = generate(model, tokenizer, prompts, settings.max_new_tokens, settings.eval_batch,
                         MAX_PROMPT.get(task.name, settings.max_prompt), synced=synced)[: len(mine)]
        gathered = dist.gather(list(zip(mine, preds)))
        by_index = dict(pair for part in gathered for pair in part)
        predictions = [by_index[i] for i in range(len(task.test))]
        targets = [r["answer"] for r in task.test]
        sources = [r["prompt"] for r in task.test]
        score = scoring.score_task(task.name, predictions, targets, sources, settings.numglue_mode)
        out[task.name] = {"score": score, "predictions": predictions}
    return out


def run_sequence(model, tokenizer, tasks: list[Task], settings: LLMSettings, out: Path, resume: bool = False,
                 eval_only: bool = False, dist: Dist | None = None, log=None, on_step=None) -> np.ndarray:
    """The whole sequence with a checkpoint and an evaluation row after every task; returns ``a[t, i]``.

    ``log`` (a callable taking a line) receives the per-task summaries; ``on_step`` receives a
    :class:`~moram_ref.experiments.progress.Step` after every optimiser step. Both default to silence.
    """
    dist = dist or Dist()
    log = log or (lambda *_: None)
    out = Path(out)
    ck_dir = out / "checkpoints"
    n = len(tasks)
    progress_path = out / "progress.json"
    progress = sequence_state.fresh(n)
    trained = settings.method != "zero_shot"
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if trained:  # zero_shot saves no checkpoint
            ck_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_json(out / "config.json", {"settings": _jsonable(asdict(settings)),
                                                "tasks": [t.name for t in tasks]})
    dist.barrier()
    if settings.fsdp and dist.world > 1:
        shard(model)
    backbones.guard_final_norm(model)  # overflow that leaves the logits finite but flat is refused too
    if trained:  # atoms in float32 on a bf16/fp16 model (they are few; Adam on half-precision weights is lossy)
        base_dtype = next(model.parameters()).dtype
        atoms_dtype = torch.float32 if base_dtype in (torch.bfloat16, torch.float16) else base_dtype
        A.attach(model, settings.moram, list(settings.targets), method=settings.method, dtype=atoms_dtype)
    if (resume or eval_only) and progress_path.is_file():  # the CLI checked the folder (sequence_state.check_run)
        progress = sequence_state.read(progress_path, n, trained)
        if resume and progress["tasks_done"]:
            if trained:
                checkpoint.load(model, ck_dir / f"task{progress['tasks_done']}.safetensors", settings.moram,
                                settings.method, tasks_done=progress["tasks_done"])
            log(sequence_state.resumed_line(settings.method, progress["tasks_done"], n))
    elif resume:  # no progress.json
        log(sequence_state.resumed_line(settings.method, None, n, progress_path.parent))
    start = 0 if eval_only else progress["tasks_done"]
    frozen_results: dict[str, dict] = {}  # the frozen model's answers never change: generate each task once
    for t in range(start, n):
        if eval_only:
            if trained:
                checkpoint.load(model, ck_dir / f"task{t + 1}.safetensors", settings.moram, settings.method,
                                tasks_done=t + 1)
        elif trained:
            info = train_task(model, tokenizer, tasks[t], t, settings, dist, on_step, n)
            progress["train"].append({"task": tasks[t].name, **info})
            cut = info["truncated"]
            if cut["prompt"] or cut["answer"]:
                log(f"{tasks[t].name}: truncated {cut['prompt']} prompt(s) to their last tokens and "
                    f"{cut['answer']} answer(s) (max prompt {settings.max_prompt}, max answer {settings.max_answer})")
            if dist.rank == 0:
                saved = checkpoint.save(model, ck_dir / f"task{t + 1}.safetensors", settings.moram, t + 1,
                                        settings.method, sequence_state.extra(settings.seed))
                sequence_state.vouch(progress, saved)
            dist.barrier()
        if trained:
            results = evaluate_tasks(model, tokenizer, tasks[: t + 1], settings, dist)
        else:
            todo = [task for task in tasks[: t + 1] if task.name not in frozen_results]
            frozen_results.update(evaluate_tasks(model, tokenizer, todo, settings, dist))
            results = {task.name: frozen_results[task.name] for task in tasks[: t + 1]}
        progress["matrix"][t][: t + 1] = [results[task.name]["score"] for task in tasks[: t + 1]]
        progress["tasks_done"] = t + 1
        if dist.rank == 0:
            pred_dir = out / "predictions" / f"after_task{t + 1}"
            pred_dir.mkdir(parents=True, exist_ok=True)
            for name, r in results.items():
                rundir.write_json(pred_dir / f"{name}.json", r)
            if not eval_only:
                checkpoint.write_text_atomic(progress_path, rundir.dumps(progress))
            log(f"{settings.method} after task {t + 1}/{n} ({tasks[t].name}), scores (0–100): "
                + ", ".join(f"{k} {v['score']:.1f}" for k, v in results.items()))
        dist.barrier()
    return np.array(progress["matrix"], dtype=float)


def shard(model) -> int:
    """FSDP2: shard every decoder layer (modules named ``*DecoderLayer``) and the root over all processes.

    Done before the adapters are attached: the frozen base weights are sharded, the atoms (created later
    by ``begin_task``) stay ordinary, replicated parameters whose gradients :func:`train_task` averages.
    """
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (torch.distributed.get_world_size(),))
    model.requires_grad_(False)
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(layers)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
