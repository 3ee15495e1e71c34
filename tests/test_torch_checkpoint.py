"""Checkpoints: round trip at several task counts; corrupt, truncated or mismatched files rejected."""

from __future__ import annotations

import json

import pytest
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.torch import attach as A
from moram_ref.torch import checkpoint as C
from test_torch_attach import CFG, tiny_model

TARGETS = ["q_proj", "v_proj", "fc"]


def trained(tasks, in_task=False, method="moram", seed=0):
    m = tiny_model()
    A.attach(m, CFG, TARGETS, method=method)
    g = torch.Generator().manual_seed(seed)
    for t in range(tasks + int(in_task)):
        A.begin_task(m, g)
        with torch.no_grad():
            for p in A.trainable_parameters(m):
                p.normal_(generator=g)
        if t < tasks:
            A.end_task(m)
    return m.eval()


@pytest.mark.parametrize("method", A.METHODS)
@pytest.mark.parametrize(("tasks", "in_task"), [(0, True), (1, False), (3, False), (3, True)])
def test_round_trip(tmp_path, method, tasks, in_task):
    m = trained(tasks, in_task, method)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    path = C.save(m, tmp_path / "ck.safetensors", CFG, tasks_done=tasks, method=method)
    fresh = tiny_model()
    A.attach(fresh, CFG, TARGETS, method=method)
    meta = C.load(fresh, path, CFG, method)
    assert meta["tasks_done"] == tasks
    assert torch.equal(fresh.eval()(x), m(x))


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    C.save(trained(1), path, CFG, tasks_done=1)
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(C, "save_file", crash)
    with pytest.raises(OSError):
        C.save(trained(2), path, CFG, tasks_done=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temporary left behind


def test_a_folder_the_file_system_refuses_is_an_os_error_naming_the_path(tmp_path, monkeypatch):
    """safetensors reports a refused write (a full disk, a read-only folder) as its own SafetensorError; the
    commands print an OSError as one line, so save raises one, naming the checkpoint, not the hidden temporary."""
    import errno
    import os

    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path '
                              '"/x/.tmpQ8h3BO"')

    monkeypatch.setattr(C, "save_file", full)
    path = tmp_path / "ck.safetensors"
    with pytest.raises(OSError) as refused:
        C.save(trained(1), path, CFG, tasks_done=1)
    assert refused.value.errno == errno.ENOSPC
    assert str(refused.value) == f"[Errno 28] could not write {path} ({os.strerror(errno.ENOSPC)})"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        with pytest.raises(OSError, match=f"could not write {folder / 'ck.safetensors'}"):
            C.save(trained(1), folder / "ck.safetensors", CFG, tasks_done=1)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_are_rejected_and_model_unchanged(tmp_path, damage):
    path = C.save(trained(2), tmp_path / "ck.safetensors", CFG, tasks_done=2)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage])
    target = trained(1, seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(C.CheckpointError):
        C.load(target, path, CFG)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_mismatches_give_clear_errors(tmp_path):
    path = C.save(trained(2), tmp_path / "ck.safetensors", CFG, tasks_done=2)
    other_arch = tiny_model()
    A.attach(other_arch, CFG, ["q_proj"])
    with pytest.raises(C.CheckpointError, match="another architecture"):
        C.load(other_arch, path)
    same = tiny_model()
    A.attach(same, CFG, TARGETS)
    with pytest.raises(C.CheckpointError, match="config differs"):
        C.load(same, path, MoRAMConfig(atoms_per_task=2, top_k=3, temperature=0.1))
    with pytest.raises(C.CheckpointError, match="method"):
        C.load(same, path, CFG, method="seq_lora")
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.load(same, tmp_path / "missing.safetensors")


def test_a_checkpoint_in_another_tasks_place_is_refused_and_the_model_unchanged(tmp_path):
    """A task-1 file copied over task 2's: load and verify, told the task it belongs in, refuse it by name."""
    path = C.save(trained(1), tmp_path / "task2.safetensors", CFG, tasks_done=1)
    model = trained(2)
    before = {k: v.clone() for k, v in C.adapter_state(model).items()}
    with pytest.raises(C.CheckpointError, match=r"task2\.safetensors holds the adapters after task 1, not after task 2"):
        C.load(model, path, CFG, "moram", tasks_done=2)
    assert all(torch.equal(before[k], v) for k, v in C.adapter_state(model).items())
    with pytest.raises(C.CheckpointError, match="not after task 2"):
        C.verify(path, CFG, "moram", tasks_done=2)
    with pytest.raises(C.CheckpointError, match="written by method 'moram', not 'seq_lora'"):
        C.verify(path, CFG, "seq_lora")
    assert C.verify(path, CFG, "moram", tasks_done=1)["tasks_done"] == 1


def test_routing_kernel_is_not_part_of_the_config_a_checkpoint_checks(tmp_path, monkeypatch):
    """routing_kernel chooses how, not what: a checkpoint loads under any value, and one written before the
    field existed loads too."""
    import dataclasses

    m = trained(1)
    path = C.save(m, tmp_path / "ck.safetensors", dataclasses.replace(CFG, routing_kernel="triton"), tasks_done=1)
    fresh = tiny_model()
    A.attach(fresh, CFG, TARGETS)
    C.load(fresh, path, dataclasses.replace(CFG, routing_kernel="torch"))
    with monkeypatch.context() as mp:  # a checkpoint from before the field existed
        to_dict = MoRAMConfig.to_dict
        mp.setattr(MoRAMConfig, "to_dict", lambda self: {k: v for k, v in to_dict(self).items() if k != "routing_kernel"})
        old = C.save(m, tmp_path / "old.safetensors", CFG, tasks_done=1)
    assert "routing_kernel" not in C.read_metadata(old)["config"]
    C.load(fresh, old, CFG)
    with pytest.raises(C.CheckpointError, match="config differs"):
        C.load(fresh, old, dataclasses.replace(CFG, temperature=0.5))


def test_newer_format_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    meta = {"format": C.FORMAT, "format_version": C.FORMAT_VERSION + 1}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"moram_ref": json.dumps(meta)})
    with pytest.raises(C.CheckpointError, match="newer"):
        C.read_metadata(path)


def test_no_pickle_anywhere():
    import inspect

    src = inspect.getsource(C)
    assert "torch.load" not in src and "pickle" not in src.replace("Nothing is ever loaded with pickle", "")


def test_damaged_tensor_bytes_with_intact_header_are_refused(tmp_path):
    """Bytes overwritten in the data section (header still valid): named, refused, model unchanged."""
    path = C.save(trained(2), tmp_path / "ck.safetensors", CFG, tasks_done=2)
    data = bytearray(path.read_bytes())
    data[-16:] = b"\xff" * 16  # NaN bit patterns in the last tensor's bytes
    path.write_bytes(bytes(data))
    C.read_metadata(path)  # the header still reads
    target = trained(1, seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(C.CheckpointError, match=r"damaged: tensor \S+ does not match its sha256"):
        C.load(target, path, CFG)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_verify_reads_every_tensor_without_a_model(tmp_path):
    """verify() finds what load() would refuse in the file itself (damaged bytes under a valid header)."""
    path = C.save(trained(2), tmp_path / "ck.safetensors", CFG, tasks_done=2)
    assert C.verify(path)["tasks_done"] == 2
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(255 - b for b in data[-16:])  # flip the last tensor's bytes; the header still reads
    path.write_bytes(bytes(data))
    C.read_metadata(path)
    with pytest.raises(C.CheckpointError, match=r"ck\.safetensors is damaged: tensor \S+ does not match its sha256"):
        C.verify(path)


def test_non_finite_banks_are_neither_saved_nor_loaded(tmp_path):
    from safetensors.torch import save_file

    m = trained(1)
    layer = next(layer for _, layer in A.moram_layers(m))
    layer.frozen_values[0, 0] = float("nan")
    with pytest.raises(C.CheckpointError, match="frozen_values holds NaN or inf"):
        C.save(m, tmp_path / "nan.safetensors", CFG, tasks_done=1)
    assert not (tmp_path / "nan.safetensors").exists()
    # a file with a NaN whose checksum is right (written by another tool) is refused on load too
    good = C.save(trained(1), tmp_path / "ck.safetensors", CFG, tasks_done=1)
    meta = C.read_metadata(good)
    tensors = {k: v.detach().clone().contiguous() for k, v in C.adapter_state(m).items()}
    meta["sha256"] = {k: C.tensor_digest(v) for k, v in tensors.items()}
    save_file(tensors, str(tmp_path / "forged.safetensors"), metadata={"moram_ref": json.dumps(meta)})
    target = trained(1, seed=3)
    with pytest.raises(C.CheckpointError, match="holds NaN or inf"):
        C.load(target, tmp_path / "forged.safetensors", CFG)


def test_format_1_without_checksums_is_refused(tmp_path):
    path = C.save(trained(1), tmp_path / "ck.safetensors", CFG, tasks_done=1)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["moram_ref"])
    meta["format_version"] = 1
    del meta["sha256"]
    save_file(tensors, str(path), metadata={"moram_ref": json.dumps(meta)})
    with pytest.raises(C.CheckpointError, match="format version 1, written before tensor checksums"):
        C.read_metadata(path)


def test_every_checkpoint_read_goes_through_checkpoint_load():
    """CLIP, LLM and O-LoRA runs load per-task checkpoints only via checkpoint.load (verified)."""
    from pathlib import Path

    root = Path(C.__file__).resolve().parents[1]
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "checkpoint.py"
               and any(s in p.read_text() for s in ("safe_open", "load_file", "torch.load", "safetensors.torch"))]
    assert readers == []


def test_a_checkpoint_is_as_readable_as_the_runs_other_files(tmp_path):
    """Permissions from the umask, as the JSON files of a run folder (safetensors alone would give 0600)."""
    import os

    mask = os.umask(0o022)
    try:
        path = C.save(trained(1), tmp_path / "ck.safetensors", CFG, tasks_done=1)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def _forge(path, out, edit):
    """Rewrite checkpoint ``path`` as ``out`` with ``edit(tensors, meta)`` applied and every checksum redone:
    a file whose checksums all agree, so only the layout check can tell."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["moram_ref"])
    edit(tensors, meta)
    meta["sha256"] = {k: C.tensor_digest(v) for k, v in tensors.items()}
    save_file(tensors, str(out), metadata={"moram_ref": json.dumps(meta)})
    return out


@pytest.mark.parametrize("method", A.METHODS)
@pytest.mark.parametrize("tasks", [1, 3])
def test_every_saved_checkpoint_has_the_layout_its_metadata_implies(tmp_path, method, tasks):
    """expected_layout rebuilds the layers on the meta device: it must agree with real saves, mid-task too."""
    for in_task in (False, True):
        path = C.save(trained(tasks, in_task, method), tmp_path / f"ck{in_task}.safetensors", CFG, tasks, method)
        assert C.verify(path, CFG, method, tasks)["tasks_done"] == tasks


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t, m: t.pop("0.q_proj.frozen_keys"), r"does not hold what its layers need after task 2: missing \[.0.q_proj.frozen_keys.\]"),
    (lambda t, m: t.update(extra=torch.zeros(2)), r"unexpected \['extra'\]"),
    (lambda t, m: t.update({"0.fc.frozen_keys": t["0.fc.frozen_keys"][:3].clone()}),
     r"tensors of another shape than its layers have after task 2: 0.fc.frozen_keys \(3, \d+\) \(expected \(4, \d+\)\)"),
    (lambda t, m: m.update(tasks_done=3), r"missing|another shape"),
    (lambda t, m: m["layers"]["0.fc"].update(d_in="wide"), r"metadata describes layer '0.fc' as .*expected \{type, d_in, d_out\}"),
    (lambda t, m: m["layers"]["0.fc"].update(d_in=0), r"describes layer '0.fc' as .*widths from 1 to 2147483647"),
    (lambda t, m: m["layers"]["0.fc"].update(d_out=10**30), r"describes layer '0.fc'"),
    (lambda t, m: m.update(tasks_done=10**6), r"another shape than its layers have after task 1000000"),
    (lambda t, m: m.update(tasks_done=True), r"metadata has tasks_done True: expected a number of tasks"),
    (lambda t, m: m.update(tasks_done=-1), r"metadata has tasks_done -1"),
    (lambda t, m: m.update(layers={}), r"metadata has layers \{\}: expected an object describing at least one"),
    (lambda t, m: m.update(extra="seed"), r"metadata has extra 'seed': expected an object"),
    (lambda t, m: m["config"].update(temperature=10**400), r"does not describe layers this moram_ref can build \(OverflowError"),
    (lambda t, m: m["config"].update(atoms_per_task=10**30), r"does not describe layers this moram_ref can build \(\w+: [^\n]*$"),
    (lambda t, m: t.update({"0.fc.frozen_keys": t["0.fc.frozen_keys"].to(torch.int32)}),
     r"tensor 0.fc.frozen_keys is torch.int32; adapter tensors are float32, float64, bfloat16, float16"),
    (lambda t, m: t.update({"0.fc.frozen_keys": t["0.fc.frozen_keys"].to(torch.float8_e4m3fn)}),
     r"tensor 0.fc.frozen_keys is torch.float8_e4m3fn"),
    (lambda t, m: m["layers"].update({f"x{i}": {"type": "MoRAMLinear", "d_in": i + 1, "d_out": 1} for i in range(300)}),
     r"describes layers of 30\d different \(d_in, d_out\) shapes: more than the 256"),
    (lambda t, m: m["layers"]["0.fc"].update(type="LoRALinear"), r"method 'moram' builds 'MoRAMLinear'"),
])
def test_a_forged_checkpoint_is_refused_without_a_model(tmp_path, edit, message):
    """A tensor dropped together with its checksum (or one of another shape) used to pass verify() and the
    --resume/--eval-only checks, and was found only when a run loaded it, after other work."""
    path = C.save(trained(2), tmp_path / "ck.safetensors", CFG, tasks_done=2)
    forged = _forge(path, tmp_path / "forged.safetensors", edit)
    with pytest.raises(C.CheckpointError, match=message):
        C.verify(forged)


@pytest.mark.parametrize("sha256", [["0.fc.keys"], None])
def test_checksums_that_are_not_an_object_are_named(tmp_path, sha256):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = C.save(trained(1), tmp_path / "ck.safetensors", CFG, tasks_done=1)
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["moram_ref"])
    meta["sha256"] = sha256
    save_file(tensors, str(path), metadata={"moram_ref": json.dumps(meta)})
    with pytest.raises(C.CheckpointError, match=r"metadata has sha256 .*expected an object \{tensor name: hex digest\}"):
        C.verify(path)


@pytest.mark.parametrize("method", A.METHODS)
@pytest.mark.parametrize("open_task", [False, True])
def test_the_extrapolated_layout_equals_the_built_one(monkeypatch, method, open_task):
    """Past EXACT_TASKS the shapes are extrapolated linearly: equal to building every task."""
    layers = {"a": {"type": type(A.make_adapter(torch.nn.Linear(5, 3), CFG, method)).__name__, "d_in": 5, "d_out": 3}}
    for tasks in (4, 7):
        meta = {"config": CFG.to_dict(), "method": method, "tasks_done": tasks, "layers": layers}
        fast = C.expected_layout(meta, open_task)
        monkeypatch.setattr(C, "EXACT_TASKS", 100)
        assert C.expected_layout(meta, open_task) == fast
        monkeypatch.undo()


def test_a_checkpoint_that_cannot_be_opened_says_why(tmp_path, monkeypatch):
    """safetensors reports a refused open (no read permission) as "No such file or directory"; the file
    system's own reason is given instead."""
    import builtins
    import errno
    import os

    path = C.save(trained(1), tmp_path / "ck.safetensors", CFG, tasks_done=1)
    real = builtins.open

    def refused(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refused)
    with pytest.raises(C.CheckpointError, match=r"ck\.safetensors cannot be opened \(Permission denied\)"):
        C.read_metadata(path)
