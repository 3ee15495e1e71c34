"""Checkpoints of the attached state: safetensors + JSON metadata, written atomically (torch only).

One ``.safetensors`` file holds every adapter tensor (frozen banks, current atoms) under its module
path, and in its header a JSON document: format version, method, config, task count, the attached
layers with their shapes (the architecture fingerprint), a sha256 of every tensor (dtype, shape and
bytes) and any caller metadata. The file is written to a temporary name in the same folder, flushed
and fsync'd, then renamed over the target, so a crash mid-write leaves the previous checkpoint intact.
Nothing is ever loaded with pickle.

What is refused, with a :class:`CheckpointError` naming the file and the tensor: saving a non-finite
tensor (a bank with NaN/inf would poison every later task); loading a file whose tensor bytes do not
match their checksum (damage a valid header does not reveal), a non-finite tensor, or a format-1 file
(written before checksums existed: re-create it by rerunning that task).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from moram_ref.config import EXECUTION_ONLY, MoRAMConfig
from moram_ref.provenance import short_repr
from moram_ref.shapes import key_mismatch
from moram_ref.torch.attach import METHODS, attached_layers, make_adapter

FORMAT = "moram_ref.checkpoint"
FORMAT_VERSION = 2  # 2: sha256 of every tensor in the metadata


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model: the message says why."""


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (buffers and parameters, not the base layers), by full name."""
    state = {}
    for name, layer in attached_layers(model):
        for key, tensor in layer.state_dict().items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = tensor
    return state


def describe_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: {"type": type(layer).__name__, "d_in": layer.base_layer.in_features,
                   "d_out": layer.base_layer.out_features} for name, layer in attached_layers(model)}


def save(model: nn.Module, path: str | os.PathLike, config: MoRAMConfig, tasks_done: int,
         method: str = "moram", extra: dict[str, Any] | None = None) -> Path:
    """Write the attached state of ``model`` to ``path`` atomically; returns the path.

    Refuses (``CheckpointError``, a ``ValueError``) a model without attached layers, a non-finite tensor,
    and bad arguments: ``config`` not a MoRAMConfig, ``tasks_done`` not an int >= 0, an unknown
    ``method``, ``extra`` not a JSON-serialisable dict. ``OSError`` naming ``path`` where the file system
    refuses (a full disk, a read-only folder); ``path`` is then as before."""
    if not isinstance(config, MoRAMConfig):
        raise CheckpointError(f"config must be a MoRAMConfig, got {type(config).__name__}")
    if isinstance(tasks_done, bool) or not isinstance(tasks_done, int) or tasks_done < 0:
        raise CheckpointError(f"tasks_done must be an int >= 0, got {tasks_done!r}")
    if method not in METHODS:
        raise CheckpointError(f"method must be one of {METHODS}, got {method!r}")
    try:
        extra_json = json.dumps(extra or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"extra must be a JSON-serialisable dict, got {extra!r} ({exc})") from exc
    if not isinstance(extra or {}, dict):
        raise CheckpointError(f"extra must be a JSON-serialisable dict, got {type(extra).__name__}")
    layers = describe_layers(model)
    if not layers:
        raise CheckpointError("model has no attached layers; nothing to save")
    for name, layer in attached_layers(model):  # the stored config must describe the layers it labels
        own = getattr(layer, "config", None)
        if isinstance(own, MoRAMConfig) and own.atoms_per_task != config.atoms_per_task:
            raise CheckpointError(f"config.atoms_per_task={config.atoms_per_task} does not match layer {name!r} "
                                  f"(atoms_per_task={own.atoms_per_task}): pass the config the model was attached with")
    path = Path(path)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "method": method, "config": config.to_dict(),
        "tasks_done": int(tasks_done), "layers": layers,
        "atoms": {n: int(getattr(layer, "n_atoms", 0)) for n, layer in attached_layers(model)},
        "extra": json.loads(extra_json),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state(model).items()}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save {path}: tensor {name} holds NaN or inf "
                                  f"({int((~torch.isfinite(tensor)).sum())} entries): training produced them "
                                  "(a diverged run: try a smaller --lr, in a new --out)")
    meta["sha256"] = {name: tensor_digest(tensor) for name, tensor in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            save_file(tensors, str(tmp), metadata={"moram_ref": json.dumps(meta)})
        except SafetensorError as exc:  # the file system refused (a full disk, a read-only folder): an OSError
            found = re.search(r"os error (\d+)", str(exc))
            code = int(found.group(1)) if found else errno.EIO
            raise OSError(code, f"could not write {path} ({os.strerror(code)})") from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # safetensors creates it 0600; as readable as the run's other files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a CPU tensor's dtype, shape and bytes (hex)."""
    h = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename (all or nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:  # safetensors words a refused open as a missing file: the file system's own reason first
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be opened ({exc.strerror})") from None
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("moram_ref")
    except Exception as exc:  # safetensors raises its own error types on corrupt headers
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no moram_ref metadata (not written by moram_ref)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an over-long integer, deep nesting
        raise CheckpointError(f"checkpoint {path} has unreadable moram_ref metadata "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}, written before tensor checksums "
                              f"(version {FORMAT_VERSION}); it cannot be verified, so it is not loaded: rerun the "
                              f"task that wrote it")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than "
                              f"this moram_ref reads ({FORMAT_VERSION}); upgrade moram_ref")
    missing = [k for k in ("method", "config", "tasks_done", "layers", "sha256") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} metadata lacks {missing}")
    why = _metadata_problem(meta)
    if why:
        raise CheckpointError(f"checkpoint {path} metadata {why}")
    return meta


MAX_WIDTH = 2**31 - 1  # the widest layer a checkpoint may describe (torch's int32 index range)
MAX_SHAPES = 256  # distinct (d_in, d_out) pairs a checkpoint may describe (a real model has a handful; each is built)


def _metadata_problem(meta: dict[str, Any]) -> str | None:
    """Why the fields every reader relies on do not have their types (None when they do): ``method`` a
    string, ``config`` an object, ``tasks_done`` an integer ≥ 0 (not a bool), ``layers`` a non-empty object of
    ``{type, d_in, d_out}`` with widths 1 … ``MAX_WIDTH``, ``sha256`` an object of strings, ``extra`` (if any)
    an object."""
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta["method"], str):
        return f"has method {short_repr(meta['method'])}: expected a method name"
    if not isinstance(meta["config"], dict):
        return f"has config {short_repr(meta['config'])}: expected an object of MoRAM settings"
    if not count(meta["tasks_done"]) or meta["tasks_done"] < 0:
        return f"has tasks_done {short_repr(meta['tasks_done'])}: expected a number of tasks (an integer ≥ 0)"
    layers = meta["layers"]
    if not isinstance(layers, dict) or not layers:
        return f"has layers {short_repr(layers)}: expected an object describing at least one adapted layer"
    for name, desc in layers.items():
        if not (isinstance(desc, dict) and isinstance(desc.get("type"), str)
                and all(count(desc.get(k)) and 1 <= desc[k] <= MAX_WIDTH for k in ("d_in", "d_out"))):
            return (f"describes layer {name!r} as {short_repr(desc)}: expected {{type, d_in, d_out}} with widths "
                    f"from 1 to {MAX_WIDTH}")
    shapes = {(d["d_in"], d["d_out"]) for d in layers.values()}
    if len(shapes) > MAX_SHAPES:
        return (f"describes layers of {len(shapes)} different (d_in, d_out) shapes: more than the {MAX_SHAPES} "
                "this moram_ref checks (a real model has a handful)")
    digests = meta["sha256"]
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        return f"has sha256 {short_repr(digests)}: expected an object {{tensor name: hex digest}}"
    if not isinstance(meta.get("extra", {}), dict):
        return f"has extra {short_repr(meta['extra'])}: expected an object (the run's seed and settings)"
    return None


def load(model: nn.Module, path: str | os.PathLike, config: MoRAMConfig | None = None,
         method: str | None = None, tasks_done: int | None = None) -> dict[str, Any]:
    """Restore every adapter of ``model`` from ``path``; returns the metadata.

    Checks first (format, method, config, the task count it was written after when ``tasks_done`` is
    given, layer names, types and shapes, every tensor readable), then assigns: a checkpoint that does not
    fit leaves the model unchanged.
    """
    meta = read_metadata(path)
    if method is not None and meta["method"] != method:
        raise CheckpointError(f"checkpoint {path} method {meta['method']!r} differs from this model's {method!r}")
    check_tasks_done(path, meta, tasks_done)
    diff = config_differences(meta, config) if config is not None else {}
    if diff:
        raise CheckpointError(f"checkpoint {path} config differs from this model's (checkpoint, model): {diff}")
    layers = describe_layers(model)
    if meta["layers"] != layers:
        missing = sorted(set(layers) - set(meta["layers"]))
        extra = sorted(set(meta["layers"]) - set(layers))
        changed = sorted(n for n in set(layers) & set(meta["layers"]) if layers[n] != meta["layers"][n])
        raise CheckpointError(f"checkpoint {path} was written for another architecture: layers missing from it "
                              f"{missing[:5]}, not in this model {extra[:5]}, different shape/type {changed[:5]}")
    tensors = _verified_tensors(path, meta)
    expected = set(adapter_state(model))
    if _required(expected) != _required(set(tensors)):
        raise CheckpointError(f"checkpoint {path} tensors do not match the attached layers: "
                              + key_mismatch(sorted(expected - set(tensors))[:5], sorted(set(tensors) - expected)[:5]))
    # every layer must accept its tensors; on the first refusal, every layer is put back as it was
    originals = {name: _adapter_part(layer) for name, layer in attached_layers(model)}
    current = None
    try:
        for current, layer in attached_layers(model):
            part = {k[len(current) + 1:]: v for k, v in tensors.items() if k.startswith(current + ".")}
            _load_layer(layer, part)
    except Exception as exc:
        for name, layer in attached_layers(model):
            _load_layer(layer, originals[name])
        raise CheckpointError(f"checkpoint {path} does not fit layer {current}: {exc}") from exc
    return meta


def config_differences(meta: dict[str, Any], config: MoRAMConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (checkpoint's value, config's value)}`` for every field of ``config`` that defines the
    adapters (all but ``EXECUTION_ONLY``: how, not what) and differs from the one ``meta`` records."""
    theirs = {k: v for k, v in meta["config"].items() if k not in EXECUTION_ONLY}
    ours = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}
    return {k: (theirs.get(k), ours.get(k)) for k in sorted(theirs.keys() | ours.keys()) if theirs.get(k) != ours.get(k)}


def check_tasks_done(path: str | os.PathLike, meta: dict[str, Any], tasks_done: int | None) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint (``meta``, from ``path``) was written after task
    ``tasks_done`` (None: not checked): a file copied into another task's place is refused, not loaded."""
    if tasks_done is not None and meta["tasks_done"] != tasks_done:
        raise CheckpointError(f"checkpoint {path} holds the adapters after task {meta['tasks_done']!r}, not after "
                              f"task {tasks_done} (a file copied or renamed into this task's place?)")


def verify(path: str | os.PathLike, config: MoRAMConfig | None = None, method: str | None = None,
           tasks_done: int | None = None) -> dict[str, Any]:
    """Read every tensor of the checkpoint at ``path`` and check it against its recorded sha256 and for NaN
    or inf, without a model, and (given them) that it was written with ``config``, by ``method`` and after
    task ``tasks_done``; returns the metadata (:func:`read_metadata`). Raises :class:`CheckpointError`
    naming the file (and the tensor or the fields) otherwise: what :func:`load` would refuse for the file
    itself, found before any work (``--resume`` and ``--eval-only`` of every track, and ``text-cl-merge``,
    check every checkpoint they will read so)."""
    meta = read_metadata(path)
    if method is not None and meta["method"] != method:
        raise CheckpointError(f"checkpoint {path} was written by method {meta['method']!r}, not {method!r}")
    check_tasks_done(path, meta, tasks_done)
    diff = config_differences(meta, config) if config is not None else {}
    if diff:
        raise CheckpointError(f"checkpoint {path} was written with another configuration (checkpoint, this "
                              f"run): {diff}")
    tensors = _verified_tensors(path, meta)
    _check_layout(path, meta, {k: tuple(v.shape) for k, v in tensors.items()})
    return meta


EXACT_TASKS = 3  # expected_layout builds up to this many tasks; beyond, every shape grows linearly in the tasks


def expected_layout(meta: dict[str, Any], open_task: bool = False) -> dict[str, tuple[int, ...]]:
    """The adapter tensors a checkpoint with metadata ``meta`` holds, ``{full name: shape}``: each layer
    its ``layers`` entry describes, built by :func:`~moram_ref.torch.attach.make_adapter` for its method and
    config on the ``meta`` device (no memory is allocated) and taken through ``tasks_done`` tasks, then, with
    ``open_task``, into the next one (a checkpoint saved mid-task holds its current atoms). Every adapter's
    banks grow by a fixed number of rows per task, so past ``EXACT_TASKS`` tasks the shapes are extrapolated
    from the last two built (a forged ``tasks_done`` of 10⁶ costs nothing). ``ValueError``, ``TypeError``,
    ``KeyError`` or ``ArithmeticError`` when the metadata cannot describe such layers."""
    config = MoRAMConfig.from_dict(meta["config"])
    tasks = meta["tasks_done"]

    def state(dims: tuple[int, int], t: int) -> tuple[str, dict[str, tuple[int, ...]]]:
        layer = make_adapter(nn.Linear(*dims, device="meta"), config, meta["method"])
        for _ in range(t):
            layer.begin_task()
            layer.end_task()
        if open_task:
            layer.begin_task()
        return type(layer).__name__, _shapes(layer)

    built: dict[tuple[int, int], tuple[str, dict[str, tuple[int, ...]]]] = {}  # layers of equal width: built once
    layout = {}
    for name, desc in meta["layers"].items():
        dims = (desc["d_in"], desc["d_out"])
        if dims not in built:
            kind, shapes = state(dims, min(tasks, EXACT_TASKS))
            if tasks > EXACT_TASKS:  # linear growth, from the last two states built
                _, before = state(dims, EXACT_TASKS - 1)
                shapes = {k: tuple(b + (tasks - EXACT_TASKS) * (b - a) for a, b in zip(before[k], v))
                          for k, v in shapes.items()}
            built[dims] = (kind, shapes)
        kind, shapes = built[dims]
        if kind != desc["type"]:
            raise ValueError(f"layer {name} is recorded as {desc['type']!r}, but method {meta['method']!r} builds {kind!r}")
        layout.update({f"{name}.{k}": shape for k, shape in shapes.items()})
    return layout


def _shapes(layer: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in layer.state_dict().items() if not k.startswith("base_layer.")}


def _check_layout(path: str | os.PathLike, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """The file's tensors (``shapes``) are those its own metadata's layers have after ``tasks_done`` tasks
    (:func:`expected_layout`), or after them and inside the next: a file that lost a tensor together with its
    checksum, or holds one of another shape, is refused here, without a model, rather than when a run loads it."""
    try:
        layouts = [expected_layout(meta), expected_layout(meta, open_task=True)]
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, ArithmeticError) as exc:
        said = (str(exc).strip().splitlines() or [""])[0][:200]  # torch appends a C++ location on a second line
        raise CheckpointError(f"checkpoint {path}: its metadata does not describe layers this moram_ref can build "
                              f"({type(exc).__name__}: {said})") from exc
    if any(_required(set(lay)) <= set(shapes) <= set(lay) and all(shapes[k] == lay[k] for k in shapes)
           for lay in layouts):
        return
    layout = layouts[0]  # named against the state at the end of the task
    missing = sorted(_required(set(layout)) - set(shapes))
    extra = sorted(set(shapes) - set(layouts[0]) - set(layouts[1]))
    if missing or extra:
        raise CheckpointError(f"checkpoint {path} does not hold what its layers need after task {meta['tasks_done']}: "
                              + key_mismatch(missing[:5], extra[:5]))
    wrong = [f"{k} {shapes[k]} (expected {layout.get(k)})" for k in sorted(shapes) if shapes[k] != layout.get(k)]
    raise CheckpointError(f"checkpoint {path}: tensors of another shape than its layers have after task "
                          f"{meta['tasks_done']}: {', '.join(wrong[:3])}")


def _verified_tensors(path: str | os.PathLike, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({exc})") from exc
    _verify_tensors(path, tensors, meta["sha256"])
    return tensors


def _verify_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], digests: dict[str, str]) -> None:
    """Every tensor listed, each matching its sha256 and finite; else a CheckpointError naming it."""
    if set(digests) != set(tensors):
        raise CheckpointError(f"checkpoint {path}: tensors {sorted(set(tensors) ^ set(digests))[:5]} have no "
                              f"checksum or no data")
    for name, tensor in tensors.items():
        if tensor_digest(tensor) != digests[name]:
            raise CheckpointError(f"checkpoint {path} is damaged: tensor {name} does not match its sha256")
        if tensor.dtype not in DTYPES:
            raise CheckpointError(f"checkpoint {path}: tensor {name} is {tensor.dtype}; adapter tensors are "
                                  f"{', '.join(str(d).removeprefix('torch.') for d in DTYPES)}")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {path}: tensor {name} holds NaN or inf")


DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # what an adapter's banks and weights can be
OPTIONAL = ("lora_a", "lora_b", "router")  # the baselines' current tensors exist only during a task


def _required(keys: set[str]) -> set[str]:
    return {k for k in keys if k.rsplit(".", 1)[-1] not in OPTIONAL}


def _adapter_part(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.state_dict().items() if not k.startswith("base_layer.")}


def _load_layer(layer: nn.Module, part: dict[str, torch.Tensor]) -> None:
    base = {k: v for k, v in layer.state_dict().items() if k.startswith("base_layer.")}
    layer.load_state_dict({**base, **part}, strict=True)
