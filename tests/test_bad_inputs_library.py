"""One table of bad inputs to the public library: the NumPy and torch layers side by side, the config,
attach, checkpoints, metrics, the memory functions, ROUGE/scoring (issue #10).

Every row must raise ``ValueError`` or ``TypeError`` (``RuntimeError`` only where the row is marked
as a lifecycle *state* error — calling in the wrong order, where no argument is at fault) with a
message matching the row's pattern, which names the argument and the value; rows with a ``state``
snapshot also require the object to be exactly as before the refused call (nothing half-applied).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from moram_ref import metrics  # noqa: E402
from moram_ref.config import MoRAMConfig, check_adam_hyperparameters  # noqa: E402
from moram_ref.experiments.llm import scoring  # noqa: E402
from moram_ref.numpy import memory as np_memory  # noqa: E402
from moram_ref.numpy.layer import MoRAMLinear as NpLayer  # noqa: E402
from moram_ref.torch import attach as A  # noqa: E402
from moram_ref.torch import checkpoint as C  # noqa: E402
from moram_ref.torch import memory as torch_memory  # noqa: E402
from moram_ref.torch.layer import MoRAMLinear as TorchLayer  # noqa: E402

ARG = (ValueError, TypeError)
STATE = (RuntimeError,)
CFG = MoRAMConfig(atoms_per_task=3, top_k=4, temperature=0.3, threshold=0.1)
D_IN, D_OUT = 6, 5


@dataclass
class Case:
    id: str
    match: str  # regex the message must contain: the argument and the value
    act: Callable[[Any], Any]  # the bad call, on the object ``make`` returns
    make: Callable[[], Any] = lambda: None
    state: Callable[[Any], Any] | None = None  # snapshot compared before and after
    exc: tuple = ARG


# --- builders: one NumPy layer and its torch twin (same numbers) -----------------------------------
def np_layer(tasks: int = 2, in_task: bool = True) -> NpLayer:
    rng = np.random.default_rng(0)
    layer = NpLayer(rng.standard_normal((D_OUT, D_IN)), rng.standard_normal(D_OUT), CFG)
    for t in range(tasks + int(in_task)):
        layer.begin_task(rng)
        layer.values[...] = rng.standard_normal(layer.values.shape)
        if t < tasks:
            layer.end_task()
    return layer


def torch_layer(tasks: int = 2, in_task: bool = True) -> TorchLayer:
    src = np_layer(tasks, in_task)
    base = nn.Linear(D_IN, D_OUT).double()
    layer = TorchLayer(base, CFG)
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in src.state_dict().items()})
    return layer


def snap(layer: Any) -> dict[str, np.ndarray | None]:
    out = {}
    if not hasattr(layer, "state_dict"):  # the NumPy baselines: every array they hold, by attribute path
        return arrays_in(vars(layer), "")
    for k, v in layer.state_dict().items():
        out[k] = None if v is None else (v.detach().numpy().copy() if torch.is_tensor(v) else v.copy())
    return out


def arrays_in(value: Any, path: str) -> dict[str, np.ndarray]:
    if isinstance(value, np.ndarray):
        return {path: value.copy()}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else []
    return {p: a for k, v in items for p, a in arrays_in(v, f"{path}.{k}").items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and a[k].shape == b[k].shape
                                             and np.array_equal(a[k], b[k], equal_nan=True)) for k in a)


def backend_x(backend: str, value: np.ndarray) -> Any:
    return value if backend == "numpy" else torch.from_numpy(value.copy())


def forward(layer: Any, x: Any) -> Any:
    return layer.forward(x)


def state_of(backend: str, layer: Any) -> dict:
    state = layer.state_dict()
    return {k: (None if v is None else v.copy()) for k, v in state.items()} if backend == "numpy" else \
        {k: v.clone() for k, v in state.items()}


def load(layer: Any, state: dict) -> Any:
    return layer.load_state_dict(state)


def edited(backend: str, edit: Callable[[dict, Any], None]) -> Callable[[Any], Any]:
    """The bad call: load the layer's own state after ``edit`` (given the state and the array module)."""
    def act(layer):
        state = state_of(backend, layer)
        edit(state, np if backend == "numpy" else torch)
        return load(layer, state)
    return act


# --- rows -----------------------------------------------------------------------------------------
def config_rows() -> list[Case]:
    bad = [("atoms_per_task", 0, r"atoms_per_task must be >= 1, got 0"),
           ("atoms_per_task", -2, r"atoms_per_task must be >= 1, got -2"),
           ("atoms_per_task", 2.0, r"atoms_per_task must be an int, got 2\.0"),
           ("atoms_per_task", True, r"atoms_per_task must be an int, got True"),
           ("atoms_per_task", "16", r"atoms_per_task must be an int, got '16'"),
           ("top_k", 0, r"top_k must be >= 1, got 0"),
           ("top_k", 1.5, r"top_k must be an int, got 1\.5"),
           ("temperature", 0.0, r"temperature must be ≥ 1e-06 \(τ > 0; .*got 0\.0"),
           ("temperature", -1.0, r"temperature must be ≥ 1e-06 .*got -1\.0"),
           ("temperature", 1e-45, r"temperature must be ≥ 1e-06 .*overflows.*got 1e-45"),
           ("temperature", math.nan, r"temperature must be finite, got nan"),
           ("temperature", math.inf, r"temperature must be finite, got inf"),
           ("temperature", "0.1", r"temperature must be a real number, got '0\.1'"),
           ("threshold", 1.5, r"threshold must lie in \[-1, 1\], got 1\.5"),
           ("threshold", math.nan, r"threshold must be finite, got nan"),
           ("threshold_mode", "train", r"threshold_mode must be one of .*got 'train'"),
           ("threshold_mode", None, r"threshold_mode must be one of .*got None"),
           ("min_active", 0, r"min_active must be >= 1, got 0"),
           ("scale", 0.0, r"scale must be non-zero, got 0\.0"),
           ("scale", math.inf, r"scale must be finite, got inf"),
           ("dropout", 1.0, r"dropout must lie in \[0, 1\), got 1\.0"),
           ("dropout", -0.1, r"dropout must lie in \[0, 1\), got -0\.1"),
           ("eps", 0.0, r"eps must be > 0, got 0\.0"),
           ("eps", np.float64("nan"), r"eps must be finite, got .*nan")]
    rows = [Case(f"config-{f}={v!r}", m, lambda _, f=f, v=v: MoRAMConfig(**{f: v})) for f, v, m in bad]
    rows += [
        Case("config-replace-bad", r"top_k must be >= 1, got -1", lambda _: dataclasses.replace(CFG, top_k=-1)),
        Case("config-from_dict-unknown", r"unknown MoRAMConfig field\(s\) \['tau'\]",
             lambda _: MoRAMConfig.from_dict({"tau": 0.1})),
        Case("config-from_dict-not-dict", r"data must be a dict of MoRAMConfig fields, got list",
             lambda _: MoRAMConfig.from_dict([("top_k", 2)])),
        Case("adam-lr", r"lr must be a finite number > 0, got 0", lambda _: check_adam_hyperparameters(0, (0.9, 0.99), 1e-8, 0.0)),
        Case("adam-lr-nan", r"lr must be a finite number > 0, got nan",
             lambda _: check_adam_hyperparameters(math.nan, (0.9, 0.99), 1e-8, 0.0)),
        Case("adam-betas-strings", r"betas must be two numbers in \[0, 1\), got 'ab'",
             lambda _: check_adam_hyperparameters(1e-3, "ab", 1e-8, 0.0)),
        Case("adam-betas-one", r"betas must be two numbers in \[0, 1\), got \(0\.9,\)",
             lambda _: check_adam_hyperparameters(1e-3, (0.9,), 1e-8, 0.0)),
        Case("adam-weight_decay-nan", r"weight_decay must be a finite number >= 0, got nan",
             lambda _: check_adam_hyperparameters(1e-3, (0.9, 0.99), 1e-8, math.nan)),
    ]
    return rows


def layer_rows(backend: str) -> list[Case]:
    """The same bad inputs to the NumPy layer and to the torch layer."""
    mk = (lambda: np_layer()) if backend == "numpy" else (lambda: torch_layer())
    x = lambda v: backend_x(backend, v)  # noqa: E731
    b = backend
    rows = [
        Case(f"{b}-forward-last-dim", r"x must have shape \(\.\.\., 6\), got shape \(3, 7\)",
             lambda L: forward(L, x(np.zeros((3, 7)))), mk, snap),
        Case(f"{b}-forward-0d", r"x must have shape \(\.\.\., 6\), got shape \(\)",
             lambda L: forward(L, x(np.array(1.0))), mk, snap),
        Case(f"{b}-forward-int", r"x must be .*float.*got .*int64",
             lambda L: forward(L, x(np.zeros((3, 6), dtype=np.int64))), mk, snap),
        Case(f"{b}-forward-nan", r"x contains NaN or inf \(1 entries\)",
             lambda L: forward(L, x(np.where(np.eye(3, 6) > 0, np.nan, 0.0)[:1])), mk, snap),
        Case(f"{b}-forward-inf", r"x contains NaN or inf \(2 entries\)",
             lambda L: forward(L, x(np.array([[np.inf, -np.inf, 0, 0, 0, 0]]))), mk, snap),
        Case(f"{b}-forward-list", r"x must be an? (numpy\.ndarray|torch\.Tensor), got list",
             lambda L: forward(L, [[0.0] * 6]), mk, snap),
        Case(f"{b}-forward-other-backend", r"x must be an? (numpy\.ndarray|torch\.Tensor), got (Tensor|ndarray)",
             lambda L: forward(L, torch.zeros(2, 6, dtype=torch.float64) if b == "numpy" else np.zeros((2, 6))),
             mk, snap),
        Case(f"{b}-begin-task-wrong-generator",
             r"(rng must be a numpy\.random\.Generator, got torch\.Generator|generator must be a torch\.Generator "
             r"or None, got numpy\.random\.Generator)",
             lambda L: L.begin_task(torch.Generator() if b == "numpy" else np.random.default_rng(0)),
             lambda: (np_layer if b == "numpy" else torch_layer)(in_task=False), snap),
        Case(f"{b}-begin-task-int", r"(rng|generator) must be .*, got int",
             lambda L: L.begin_task(42), lambda: (np_layer if b == "numpy" else torch_layer)(in_task=False), snap),
        Case(f"{b}-begin-task-twice", r"begin_task\(\) called while a task is in progress",
             lambda L: L.begin_task(np.random.default_rng(0) if b == "numpy" else None), mk, snap, STATE),
        Case(f"{b}-end-task-without-task", r"end_task\(\) called with no task in progress",
             lambda L: L.end_task(), lambda: (np_layer if b == "numpy" else torch_layer)(in_task=False), snap, STATE),
        # state dicts
        Case(f"{b}-state-key-missing", r"state keys mismatch: missing \['values'\]$",
             edited(b, lambda s, xp: s.pop("values")), mk, snap),
        Case(f"{b}-state-empty", r"state keys mismatch: missing \[.*'base_layer\.weight'.*'frozen_keys'.*'values'\]$",
             edited(b, lambda s, xp: s.clear()), mk, snap),
        Case(f"{b}-state-key-unexpected", r"state keys mismatch: unexpected \['extra'\]$",
             edited(b, lambda s, xp: s.update(extra=s["keys"])), mk, snap),
        Case(f"{b}-state-frozen_values-shape", r"frozen_values must have shape \(5, 6\), got shape \(5, 5\)",
             edited(b, lambda s, xp: s.update(frozen_values=s["frozen_values"][:, :-1])), mk, snap),
        Case(f"{b}-state-keys-rows", r"keys must have 0 or atoms_per_task=3 rows, got \(2, 6\)",
             edited(b, lambda s, xp: s.update(keys=s["keys"][:-1], values=s["values"][:, :-1])), mk, snap),
        Case(f"{b}-state-values-shape", r"values must have shape \(5, 3\), got shape \(4, 3\)",
             edited(b, lambda s, xp: s.update(values=s["values"][:-1])), mk, snap),
        Case(f"{b}-state-frozen_keys-width", r"frozen_keys must have shape \(any, 6\), got shape \(6, 5\)",
             edited(b, lambda s, xp: s.update(frozen_keys=s["frozen_keys"][:, :-1])), mk, snap),
        Case(f"{b}-state-other-layer-shape", r"base_layer\.weight must have shape \(5, 6\), got shape \(5, 7\)",
             lambda L: load(L, state_of(b, NpLayer(np.zeros((5, 7)), np.zeros(5), CFG)) if b == "numpy" else
                            TorchLayer(nn.Linear(7, 5).double(), CFG).state_dict()), mk, snap),
        Case(f"{b}-state-missing-key", r"missing \['frozen_keys'\]",
             edited(b, lambda s, xp: s.pop("frozen_keys")), mk, snap),
        Case(f"{b}-state-unexpected-key", r"unexpected \['extra'\]",
             edited(b, lambda s, xp: s.update(extra=s["keys"])), mk, snap),
        Case(f"{b}-state-nan-bank", r"frozen_values contains NaN or inf \(1 entries\)",
             edited(b, lambda s, xp: s["frozen_values"].__setitem__((0, 0), float("nan"))), mk, snap),
        Case(f"{b}-state-bias-missing", r"base_layer\.bias is missing in the state, this layer has a bias",
             edited(b, lambda s, xp: s.update({"base_layer.bias": None}) if xp is np else s.pop("base_layer.bias")),
             mk, snap),
        Case(f"{b}-state-bias-shape", r"base_layer\.bias must have shape \(5,\), got shape \(4,\)",
             edited(b, lambda s, xp: s.update({"base_layer.bias": s["base_layer.bias"][:-1]})), mk, snap),
    ]
    if backend == "numpy":
        rows += [
            Case("numpy-ctor-weight-1d", r"weight must have 2 dimensions, got shape \(4,\)",
                 lambda _: NpLayer(np.zeros(4), None, CFG)),
            Case("numpy-ctor-weight-int", r"weight must be float32 or float64, got dtype int64",
                 lambda _: NpLayer(np.zeros((4, 3), dtype=np.int64), None, CFG)),
            Case("numpy-ctor-weight-nan", r"weight contains NaN or inf",
                 lambda _: NpLayer(np.full((4, 3), np.nan), None, CFG)),
            Case("numpy-ctor-bias-shape", r"bias must have shape \(4,\), got shape \(3,\)",
                 lambda _: NpLayer(np.zeros((4, 3)), np.zeros(3), CFG)),
            Case("numpy-ctor-config", r"config must be a MoRAMConfig, got dict",
                 lambda _: NpLayer(np.zeros((4, 3)), None, {"top_k": 2})),
            Case("numpy-forward-dtype", r"x dtype float32 differs from the layer's dtype float64",
                 lambda L: forward(L, np.zeros((2, 6), np.float32)), mk, snap),
            Case("numpy-forward-training-flag", r"training must be a bool, got 1",
                 lambda L: L.forward(np.zeros((2, 6)), training=1), mk, snap),
            Case("numpy-state-dtype", r"state arrays must all have this layer's dtype float64, got \['float32', "
                 r"'float64'\]", edited(b, lambda s, xp: s.update(values=s["values"].astype(np.float32))), mk, snap),
            Case("numpy-state-not-dict", r"state must be a dict, got list", lambda L: L.load_state_dict([]), mk, snap),
        ]
    else:
        rows += [
            Case("torch-ctor-base", r"base must be a torch\.nn\.Linear, got Conv1d",
                 lambda _: TorchLayer(nn.Conv1d(3, 4, 1), CFG)),
            Case("torch-ctor-config", r"config must be a MoRAMConfig, got dict",
                 lambda _: TorchLayer(nn.Linear(3, 4), {"top_k": 2})),
            Case("torch-ctor-dtype", r"dtype must be a floating-point torch\.dtype or None, got torch\.int64",
                 lambda _: TorchLayer(nn.Linear(3, 4), CFG, dtype=torch.int64)),
            Case("torch-ctor-dtype-str", r"dtype must be a floating-point torch\.dtype or None, got 'float32'",
                 lambda _: TorchLayer(nn.Linear(3, 4), CFG, dtype="float32")),
            Case("torch-ctor-weight-nan", r"base\.weight contains NaN or inf \(12 entries\)",
                 lambda _: TorchLayer(nn.Linear(3, 4).requires_grad_(False).apply(
                     lambda m: m.weight.fill_(math.nan) if isinstance(m, nn.Linear) else None), CFG)),
        ]
    return rows


def baseline_rows() -> list[Case]:
    """The baselines (LoRA, MoE-LoRA; O-LoRA in torch only) refuse what the MoRAM layers refuse."""
    from moram_ref.numpy import baselines as npb
    from moram_ref.torch import baselines as tb
    from moram_ref.torch.olora import OLoRALinear

    rows = []
    makers = {"numpy": {n: (lambda n=n: getattr(npb, n)(np.zeros((D_OUT, D_IN)), None, 2)) for n in
                        ("LoRALinear", "MoELoRALinear")},
              "torch": {n: (lambda c=c: c(nn.Linear(D_IN, D_OUT).double(), 2)) for n, c in
                        (("LoRALinear", tb.LoRALinear), ("MoELoRALinear", tb.MoELoRALinear),
                         ("OLoRALinear", OLoRALinear))}}
    for b, classes in makers.items():
        x = lambda v, b=b: backend_x(b, v)  # noqa: E731
        gen = torch.Generator().manual_seed(0) if b == "numpy" else np.random.default_rng(0)
        ok_gen = (lambda: np.random.default_rng(0)) if b == "numpy" else (lambda: torch.Generator().manual_seed(0))
        for name, mk in classes.items():
            def in_task(mk=mk, ok_gen=ok_gen):
                layer = mk()
                layer.begin_task(ok_gen())
                return layer
            rows += [
                Case(f"{b}-{name}-forward-nan", r"x contains NaN or inf \(1 entries\)",
                     lambda L, x=x: L.forward(x(np.array([[np.nan, 0, 0, 0, 0, 0]]))), in_task, snap),
                Case(f"{b}-{name}-forward-last-dim", r"x must have shape \(\.\.\., 6\), got shape \(2, 4\)",
                     lambda L, x=x: L.forward(x(np.zeros((2, 4)))), in_task, snap),
                Case(f"{b}-{name}-begin-task-wrong-generator",
                     r"(rng must be a numpy\.random\.Generator, got torch\.Generator|generator must be a "
                     r"torch\.Generator or None, got numpy\.random\.Generator)", lambda L, gen=gen: L.begin_task(gen), mk, snap),
                Case(f"{b}-{name}-rank", r"rank must be an int >= 1, got 0",
                     lambda _, b=b, name=name: (getattr(npb, name)(np.zeros((D_OUT, D_IN)), None, 0) if b == "numpy"
                                                else getattr(tb, name, OLoRALinear)(nn.Linear(D_IN, D_OUT), 0))),
            ]
    return rows


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    block = nn.ModuleDict({"q_proj": nn.Linear(4, 4), "v_proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    return nn.Sequential(nn.ModuleDict({"attn": block}), nn.Linear(4, 2)).double()


def model_snap(model: nn.Module) -> tuple:
    return ([type(m).__name__ for m in model.modules()],
            {k: v.detach().clone().numpy() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()])


def model_same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[2] == b[2] and a[1].keys() == b[1].keys() and all(
        np.array_equal(a[1][k], b[1][k]) for k in a[1])


def attached(tasks: int = 1) -> nn.Module:
    m = tiny_model()
    A.attach(m, CFG, ["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(0)
    for _ in range(tasks):
        A.begin_task(m, g)
        with torch.no_grad():
            for p in A.trainable_parameters(m):
                p.normal_(generator=g)
        A.end_task(m)
    return m


def attach_rows() -> list[Case]:
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2)

    def attach_case(id_, targets, match, make=tiny_model, **kw):
        return Case(f"attach-{id_}", match, lambda m: A.attach(m, kw.pop("config", CFG), targets, **kw), make,
                    model_snap)

    return [
        attach_case("unknown-name", ["q_prj"],
                    r"target_modules \['q_prj'\] match no nn\.Linear in the model \('q_prj': did you mean 'q_proj'"),
        attach_case("unknown-name-far", ["zzz"], r"\('zzz': no name close to it\); some names: \["),
        attach_case("regex-no-match", "nothing.*", r"target_modules regex 'nothing\.\*' matches no nn\.Linear"),
        attach_case("bad-regex", "(", r"target_modules '\(' is not a valid regular expression"),
        attach_case("empty-list", [], r"target_modules is empty"),
        attach_case("not-str", [1], r"target_modules must be a regex str or a sequence of str, got \[1\]"),
        attach_case("none", None, r"target_modules must be a regex str or a sequence of str, got None"),
        attach_case("non-linear", ["norm"], r"selects 0\.attn\.norm \(LayerNorm\), which is not an nn\.Linear"),
        attach_case("twice-same-module", ["q_proj", "attn.q_proj"],
                    r"module 0\.attn\.q_proj is selected by two target_modules entries, 'q_proj' and 'attn\.q_proj'"),
        attach_case("repeated-entry", ["q_proj", "q_proj"], r"target_modules lists \['q_proj'\] more than once"),
        attach_case("mha-out_proj", ["out_proj"], r"attn\.out_proj, the output projection of an "
                    r"nn\.MultiheadAttention.*replace_attention", make=lambda: WithMHA().double()),
        attach_case("method", ["q_proj"], r"method must be one of .*got 'lora'", method="lora"),
        attach_case("config", ["q_proj"], r"config must be a MoRAMConfig, got dict", config={"top_k": 2}),
        attach_case("config-baseline", ["q_proj"], r"config must be a MoRAMConfig, got dict", config={"top_k": 2},
                    method="seq_lora"),
        attach_case("dtype", ["q_proj"], r"dtype must be a floating-point torch\.dtype or None, got torch\.int32",
                    dtype=torch.int32),
        Case("attach-not-a-module", r"model must be a torch\.nn\.Module, got dict",
             lambda _: A.attach({}, CFG, ["q_proj"])),
        Case("attach-twice", r"model already has attached layers", lambda m: A.attach(m, CFG, ["q_proj"]),
             attached, model_snap, STATE),
        Case("attach-begin-task-numpy-generator", r"generator must be a torch\.Generator or None, got numpy\.random\.Generator",
             lambda m: A.begin_task(m, np.random.default_rng(0)), attached, model_snap),
        Case("attach-begin-task-numpy-generator-seq_lora",
             r"generator must be a torch\.Generator or None, got numpy\.random\.Generator",
             lambda m: A.begin_task(m, np.random.default_rng(0)),
             lambda: (lambda m: (A.attach(m, CFG, ["q_proj"], method="seq_lora"), m)[1])(tiny_model()), model_snap),
        Case("attach-begin-task-no-layers", r"no attached layers", lambda m: A.begin_task(m), tiny_model,
             model_snap, STATE),
        Case("attach-end-task-no-task", r"end_task\(\) called with no task in progress",
             lambda m: A.end_task(m), attached, model_snap, STATE),
    ]


def checkpoint_rows(tmp: Any) -> list[Case]:
    def saved(name: str = "ck.safetensors", tasks: int = 2):
        return C.save(attached(tasks), tmp / name, CFG, tasks_done=tasks)

    def damaged():
        path = saved("damaged.safetensors")
        data = bytearray(path.read_bytes())
        data[-8:] = b"\x7f" * 8
        path.write_bytes(bytes(data))
        return path

    def truncated():
        path = saved("truncated.safetensors")
        path.write_bytes(path.read_bytes()[:100])
        return path

    def foreign():
        path = tmp / "foreign.safetensors"
        save_file({"x": torch.zeros(2)}, str(path))
        return path

    def load_case(id_, path_fn, match, **kw):
        return Case(f"checkpoint-load-{id_}", match, lambda m: C.load(m, path_fn(), **kw), lambda: attached(1),
                    model_snap)

    def other_arch():
        m = tiny_model()
        A.attach(m, CFG, ["q_proj"])
        return m

    return [
        load_case("missing", lambda: tmp / "none.safetensors", r"checkpoint \S+none\.safetensors does not exist"),
        load_case("damaged", damaged, r"damaged\.safetensors is damaged: tensor \S+ does not match its sha256"),
        load_case("truncated", truncated, r"truncated\.safetensors is not a readable safetensors file"),
        load_case("foreign", foreign, r"foreign\.safetensors has no moram_ref metadata"),
        load_case("config", saved, r"checkpoint \S+\.safetensors config differs.*'top_k': \(4, 2\)",
                  config=dataclasses.replace(CFG, top_k=2)),
        load_case("method", saved, r"checkpoint \S+\.safetensors method 'moram' differs from this model's 'seq_lora'",
                  method="seq_lora"),
        Case("checkpoint-load-architecture", r"another architecture: layers missing from it \[\], not in this "
             r"model \['0\.attn\.v_proj'\]", lambda m: C.load(m, saved()), other_arch, model_snap),
        Case("checkpoint-save-nan", r"refusing to save \S+: tensor 0\.attn\.q_proj\.frozen_values holds NaN",
             lambda m: (m[0]["attn"]["q_proj"].frozen_values.fill_(math.nan),
                        C.save(m, tmp / "nan.safetensors", CFG, tasks_done=1)), attached),
        Case("checkpoint-save-no-layers", r"model has no attached layers; nothing to save",
             lambda m: C.save(m, tmp / "x.safetensors", CFG, tasks_done=0), tiny_model),
        Case("checkpoint-save-tasks_done", r"tasks_done must be an int >= 0, got -1",
             lambda m: C.save(m, tmp / "x.safetensors", CFG, tasks_done=-1), attached),
        Case("checkpoint-save-tasks_done-str", r"tasks_done must be an int >= 0, got '2'",
             lambda m: C.save(m, tmp / "x.safetensors", CFG, tasks_done="2"), attached),
        Case("checkpoint-save-config", r"config must be a MoRAMConfig, got dict",
             lambda m: C.save(m, tmp / "x.safetensors", {"top_k": 2}, tasks_done=1), attached),
        Case("checkpoint-save-method", r"method must be one of .*got 'lora'",
             lambda m: C.save(m, tmp / "x.safetensors", CFG, tasks_done=1, method="lora"), attached),
        Case("checkpoint-save-extra", r"extra must be a JSON-serialisable dict, got .*ndarray",
             lambda m: C.save(m, tmp / "x.safetensors", CFG, tasks_done=1, extra={"a": np.zeros(2)}), attached),
    ]


def metrics_rows() -> list[Case]:
    sq = np.array([[50.0, 10.0], [40.0, 60.0]])
    rows = []
    for name in ("transfer", "average", "last", "bwt", "bwt_clipped", "summary"):
        fn = getattr(metrics, name)
        rows += [
            Case(f"metrics-{name}-not-square", r"accuracy matrix must be a non-empty square .*got shape \(2, 3\)",
                 lambda _, fn=fn: fn(np.zeros((2, 3)))),
            Case(f"metrics-{name}-inf", r"accuracy matrix has non-finite entries \[inf\] at \[\(1, 1\)\]",
                 lambda _, fn=fn: fn(np.where(np.eye(2) > 0, [[1.0, 0], [0, np.inf]], sq))),
        ]
    rows += [
        Case("metrics-empty", r"accuracy matrix must be a non-empty square .*got shape \(0, 0\)",
             lambda _: metrics.last(np.zeros((0, 0)))),
        Case("metrics-strings", r"accuracy matrix must hold numbers, got .*'a'",
             lambda _: metrics.average([["a", "b"], ["c", "d"]])),
        Case("metrics-missing-last", r"accuracy matrix has missing \(NaN\) entries needed for Last",
             lambda _: metrics.last(np.array([[1.0, np.nan], [np.nan, np.nan]]))),
        Case("metrics-mass-zero", r"mass must lie in \(0, 1\], got 0", lambda _: metrics.atoms_for_mass(np.ones(3), 0)),
        Case("metrics-mass-nan", r"mass must lie in \(0, 1\], got nan",
             lambda _: metrics.atoms_for_mass(np.ones(3), math.nan)),
        Case("metrics-w-negative", r"w must be non-negative .*got shape \(3,\)",
             lambda _: metrics.atoms_for_mass(np.array([0.5, -0.1, 0.2]))),
        Case("metrics-w-nan", r"w contains NaN or inf \(1 entries\)",
             lambda _: metrics.atoms_for_mass(np.array([0.5, np.nan, 0.2]))),
        Case("metrics-ci-2d", r"values must be a non-empty 1-D array, got shape \(2, 2\)",
             lambda _: metrics.confidence_interval(np.ones((2, 2)))),
        Case("metrics-ci-level", r"level must lie in \(0, 1\), got 1", lambda _: metrics.confidence_interval([1, 2], 1)),
        Case("metrics-ci-nan", r"values contains NaN or inf \(1 entries\)",
             lambda _: metrics.confidence_interval([1.0, math.nan])),
    ]
    return rows


def memory_rows() -> list[Case]:
    rows = []
    for b, mem in (("numpy", np_memory), ("torch", torch_memory)):
        x = lambda v, b=b: backend_x(b, v)  # noqa: E731
        rows += [
            Case(f"{b}-memory-pairs", r"keys and vals must hold the same number of pairs, got \(3, 4\) and \(2, 4\)",
                 lambda _, mem=mem, x=x: mem.write_outer(x(np.zeros((3, 4))), x(np.zeros((2, 4))))),
            Case(f"{b}-memory-read", r"queries must have shape \(\.\.\., 4\), got \(?.*3\)",
                 lambda _, mem=mem, x=x: mem.read(x(np.zeros((2, 4))), x(np.zeros((5, 3))))),
            Case(f"{b}-memory-rank", r"rank must lie in \[1, 2\], got 0",
                 lambda _, mem=mem, x=x: mem.to_atoms(x(np.eye(2)), 0)),
            Case(f"{b}-memory-predicted", r"n_pairs and d_in must be >= 1, got 0, 4",
                 lambda _, mem=mem: mem.predicted_crosstalk(0, 4)),
        ]
    return rows


def scoring_rows() -> list[Case]:
    return [
        Case("scoring-lengths", r"predictions and targets differ in length: 2 vs 1",
             lambda _: scoring.rouge_l(["a", "b"], ["a"])),
        Case("scoring-empty", r"no samples to score", lambda _: scoring.accuracy([], [])),
        Case("scoring-numglue-mode", r"numglue_mode must be 'numeric' or 'accuracy', got 'exact'",
             lambda _: scoring.score_task("NumGLUE-cm", ["1"], ["1"], numglue_mode="exact")),
        Case("scoring-sari-sources", r"task 20Minuten is scored with SARI, which needs the sources",
             lambda _: scoring.score_task("20Minuten", ["a"], ["a"])),
        Case("scoring-not-strings", r"predictions must be a sequence of str, got .*None",
             lambda _: scoring.rouge_l([None], ["a"])),
    ]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-inputs")


def all_rows(tmp: Any) -> list[Case]:
    return (config_rows() + layer_rows("numpy") + layer_rows("torch") + baseline_rows() + attach_rows()
            + checkpoint_rows(tmp)
            + metrics_rows() + memory_rows() + scoring_rows())


ROW_IDS = [c.id for c in all_rows(None)]


def test_the_table_is_large_and_ids_unique():
    assert len(ROW_IDS) >= 80 and len(set(ROW_IDS)) == len(ROW_IDS)


def test_numpy_and_torch_layers_refuse_the_same_inputs():
    strip = lambda ids, b: {i.removeprefix(b + "-") for i in ids if i.startswith(b + "-") and "memory" not in i}  # noqa: E731
    common = strip(ROW_IDS, "numpy") & strip(ROW_IDS, "torch")
    assert len(common) >= 20


@pytest.mark.parametrize("row_id", ROW_IDS)
def test_bad_input_is_refused_clearly(tmp, row_id):
    case = next(c for c in all_rows(tmp) if c.id == row_id)
    obj = case.make()
    before = case.state(obj) if case.state else None
    with pytest.raises(case.exc, match=case.match):
        case.act(obj)
    if case.state:
        after = case.state(obj)
        assert (model_same(before, after) if isinstance(before, tuple) else same(before, after)), "half-applied"
