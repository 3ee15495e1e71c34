"""The GPU check's layer-by-layer comparison of a fused model with its eager twin (moram_ref/perf/layer_agreement).

Unit tests on a small stack of MoRAM layers (no triton needed: the "fused twin" is a copy, altered or not),
then the GPU check's CLIP and LLM sections with the real kernel (on a CPU under Triton's interpreter, in a
fresh process; with MORAM_TEST_DEVICE=cuda on the GPU), where a kernel returning zeros must fail the layer check (it passed the LLM loss check: the reason the layer check exists).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from moram_ref.config import MoRAMConfig
from moram_ref.perf import layer_agreement as LA
from moram_ref.torch import attach as A

ROOT = Path(__file__).resolve().parents[1]
CFG = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.1, threshold=0.2, dropout=0.1)


def _stack(dtype=torch.float32) -> nn.Module:
    """Three linear layers with MoRAM attached, two frozen tasks with non-zero values and an open one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 8)).to(dtype)
    A.attach(model, CFG, ["0", "2", "4"], method="moram", dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    A.begin_task(model, gen)
    for _ in range(2):
        with torch.no_grad():
            for _, layer in A.attached_layers(model):
                layer.values.copy_(0.3 * torch.randn(layer.values.shape, generator=gen))
        A.end_task(model)
        A.begin_task(model, gen)
    return model


def _check(model: nn.Module, twin: nn.Module, x: torch.Tensor) -> dict:
    ref = LA.eager_reference(model, lambda: model(x))
    return LA.checks_against(ref, twin)


def test_a_copy_agrees_exactly_in_both_modes_and_the_check_is_informative():
    model = _stack()
    x = torch.randn(32, 16)
    for name, rec in _check(model, copy.deepcopy(model), x).items():
        assert name in ("check_layers_agree_with_eager_train", "check_layers_agree_with_eager_eval")
        assert rec["ok"] and rec["median_relative_diff"] == 0.0 and rec["layers"] == 3, rec
        assert rec["informative"] and rec["median_bank_effect"] > 0.01 and rec["bound"] == LA.LAYER_BOUND
        assert name.endswith("_eval") or rec["backward"]["ok"]


def test_a_twin_without_its_frozen_bank_fails_with_relative_diff_one():
    model = _stack()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in A.attached_layers(twin):
            layer.frozen_values.zero_()  # what a kernel that drops the frozen block's coefficients does
    for rec in _check(model, twin, torch.randn(32, 16)).values():
        assert not rec["ok"], rec
        assert rec["median_relative_diff"] > 0.5 and rec["worst_layer"] in {"0", "2", "4"}


def test_a_small_perturbation_stays_within_the_bound_and_a_large_one_does_not():
    model = _stack()
    x = torch.randn(32, 16)
    for factor, ok in ((1.0002, True), (1.01, False)):  # float32: the bound is LAYER_BOUND = 2⁻¹⁰
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for _, layer in A.attached_layers(twin):
                layer.frozen_values.mul_(factor)
        recs = _check(model, twin, x)
        assert all(r["ok"] == ok for r in recs.values()), (factor, recs)


def test_the_capture_leaves_the_forward_unchanged_and_restores_the_mode():
    """A forward hook that returned its input would replace the layer's output (a bug this module once had)."""
    model = _stack()
    x = torch.randn(8, 16)
    with torch.no_grad():
        want = model.eval()(x)
        got = {}
        inputs = LA.layer_inputs(model, lambda: got.setdefault("y", model(x)))
    assert torch.equal(got["y"], want)
    assert set(inputs) == {"0", "2", "4"} and inputs["2"].shape == (8, 16) and inputs["4"].shape == (8, 24)
    model.train()
    LA.layer_outputs(model, inputs, training=False)
    assert all(layer.training for _, layer in A.attached_layers(model))


def test_training_mode_uses_the_same_dropout_draw_for_both_models():
    model = _stack()
    inputs = LA.layer_inputs(model.eval(), lambda: model(torch.randn(8, 16)))
    a = LA.layer_outputs(model, inputs, training=True, seed=3)
    b = LA.layer_outputs(copy.deepcopy(model), inputs, training=True, seed=3)
    c = LA.layer_outputs(model, inputs, training=True, seed=4)
    assert all(torch.equal(a[n].y, b[n].y) and torch.equal(a[n].grads["keys"], b[n].grads["keys"]) for n in a)
    assert any(not torch.equal(a[n].y, c[n].y) for n in a)  # the seed matters: dropout is on


def test_a_bank_that_adds_nothing_is_not_informative_and_divides_by_no_zero():
    model = _stack()
    strict = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.1, threshold=0.99, dropout=0.1)
    for _, layer in A.attached_layers(model):
        layer.config = strict  # evaluation: no response reaches δ = 0.99 of the norm, every atom gated off
    rec = _check(model, copy.deepcopy(model), torch.randn(32, 16))["check_layers_agree_with_eager_eval"]
    assert rec["median_bank_effect"] == 0.0 and rec["median_relative_diff"] == 0.0
    assert rec["ok"] and not rec["informative"] and math.isinf(rec["bound"])


def test_bf16_outputs_widen_the_bound_by_their_rounding():
    model = _stack(torch.bfloat16)
    rec = _check(model, copy.deepcopy(model), torch.randn(32, 16, dtype=torch.bfloat16))
    for r in rec.values():
        e = r["median_bank_effect"]
        assert r["ok"] and r["bound"] == pytest.approx(max(LA.LAYER_BOUND, 2 * 2.0**-8 * (1 + e) / e))
    assert rec["check_layers_agree_with_eager_train"]["backward"]["atoms"]["bound"] == 8 * 2.0**-8
    assert "backward" not in rec["check_layers_agree_with_eager_eval"]  # no backward in evaluation mode


def test_a_wrong_backward_fails_though_the_forward_agrees():
    model = _stack()
    x = torch.randn(32, 16)
    for part in ("keys", "x"):
        twin = copy.deepcopy(model)
        for _, layer in A.attached_layers(twin):  # every layer: a wrong kernel is wrong in all of them
            if part == "keys":  # the current task's keys get twice their gradient
                layer.keys.register_hook(lambda g: 2 * g)
            else:  # the layer's input gets 1.5 times its gradient
                layer.register_full_backward_hook(lambda _m, grad_in, _out: (grad_in[0] * 1.5,))
        rec = _check(model, twin, x)["check_layers_agree_with_eager_train"]
        assert rec["median_relative_diff"] == 0.0, rec  # the forward is the same
        back = rec["backward"]
        assert not rec["ok"] and not back["ok"], rec
        assert not back["atoms" if part == "keys" else "x"]["ok"] and back["x" if part == "keys" else "atoms"]["ok"]
    rec = _check(model, copy.deepcopy(model), x)["check_layers_agree_with_eager_train"]
    assert rec["backward"]["ok"] and rec["backward"]["atoms"]["median_relative_diff"] == 0.0


def test_nan_and_mismatched_layers_are_failures_not_exceptions():
    model = _stack()
    ref = LA.eager_reference(model, lambda: model(torch.randn(8, 16)))
    twin = LA.layer_outputs(model, ref["inputs"], training=False)
    twin["2"] = dataclasses.replace(twin["2"], y=torch.full_like(twin["2"].y, float("nan")))
    rec = LA.layer_agreement(ref["outputs"]["eval"], twin)
    assert not rec["ok"] and rec["worst_layer"] == "2"
    del twin["2"]
    rec = LA.layer_agreement(ref["outputs"]["eval"], twin)
    assert not rec["ok"] and not rec["informative"] and "layers differ" in rec["error"]
    with pytest.raises(ValueError, match="no attached MoRAM layer"):
        LA.layer_inputs(nn.Linear(2, 2), lambda: None)
    with pytest.raises(ValueError, match="did not reach 3 MoRAM layer"):
        LA.layer_inputs(model, lambda: None)


ZEROS = """
import torch
from moram_ref.torch import routing_triton

fused_forward = routing_triton.gated_responses


def zeros(*args, **kwargs):  # a kernel that routes and then returns no coefficients
    out = fused_forward(*args, **kwargs)
    return (torch.zeros_like(out[0]), torch.zeros_like(out[1]), *out[2:])


routing_triton.gated_responses = zeros
"""


def _fused_checks(tmp_path, device: str, sections: list[str], patch: str = "") -> dict:
    """The GPU check's ``sections`` (--quick) in a fresh process — on a CPU with ``TRITON_INTERPRET=1``,
    which must be set before triton is first imported — after ``patch``; each section's ``moram_fused``."""
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    pytest.importorskip("triton", reason="triton does not import (CPU-only torch build)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    argv = ["--quick", "--device", device, "--out", str(tmp_path), "--sections", *sections]
    code = f"{patch}\nfrom moram_ref import gpu_check\ngpu_check.main({argv!r})\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    return {s: report[s]["methods"]["moram_fused"] for s in sections}


def test_the_gpu_checks_whole_model_steps_compare_the_fused_kernel_layer_by_layer(tmp_path, device):
    for section, fused in _fused_checks(tmp_path, device, ["clip", "llm_train"]).items():
        assert fused["ok"], (section, fused)
        for mode in ("train", "eval"):
            rec = fused[f"check_layers_agree_with_eager_{mode}"]
            assert rec["ok"] and rec["informative"] and rec["layers"] >= 8, (section, mode, rec)
        # step 0 (through the frozen bank) agrees far inside the loss check's 3 % bound
        assert fused["check_losses_agree_with_eager"]["relative_diff"][0] < 1e-4, (section, fused)


def test_a_kernel_returning_zeros_fails_the_layer_check_where_the_llm_loss_check_cannot_see_it(tmp_path, device):
    fused = _fused_checks(tmp_path, device, ["llm_train"], patch=ZEROS)["llm_train"]
    assert not fused["ok"]
    assert fused["check_losses_agree_with_eager"]["ok"]  # the loss barely moves on a random Llama...
    assert not fused["check_losses_agree_with_eager"]["informative"]  # ...and says so
    for mode in ("train", "eval"):  # the layers do not
        rec = fused[f"check_layers_agree_with_eager_{mode}"]
        assert not rec["ok"] and rec["median_relative_diff"] == pytest.approx(1.0), rec
