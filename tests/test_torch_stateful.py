"""A hypothesis state machine drives a NumPy layer and a torch layer through the lifecycle with the
same rules (begin_task, training steps, end_task, recall) and checks after every step that the two agree
and that frozen atoms never change."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from moram_ref.config import MoRAMConfig
from moram_ref.numpy.layer import MoRAMLinear as NpLayer
from moram_ref.numpy.optim import Adam as NpAdam
from moram_ref.torch.layer import MoRAMLinear as TorchLayer
from moram_ref.torch.optim import Adam as TorchAdam

D_IN, D_OUT = 5, 4


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.cfg = MoRAMConfig(atoms_per_task=2, top_k=3, temperature=0.5, threshold=0.1, scale=2.0, min_active=2)
        w, b = self.rng.standard_normal((D_OUT, D_IN)), self.rng.standard_normal(D_OUT)
        self.np_layer = NpLayer(w, b, self.cfg)
        base = torch.nn.Linear(D_IN, D_OUT).double()
        with torch.no_grad():
            base.weight.copy_(torch.from_numpy(w))
            base.bias.copy_(torch.from_numpy(b))
        self.t_layer = TorchLayer(base, self.cfg)
        self.np_opt, self.t_opt = NpAdam(lr=0.05), TorchAdam(lr=0.05)
        self.np_frozen = (np.zeros((0, D_IN)), np.zeros((D_OUT, 0)))
        self.t_frozen = (torch.zeros(0, D_IN, dtype=torch.float64), torch.zeros(D_OUT, 0, dtype=torch.float64))

    @precondition(lambda self: not self.np_layer.in_task)
    @rule(seed=st.integers(0, 2**16))
    def begin_task(self, seed):
        # distinct keys per task (a repeated seed would duplicate keys: exact ties that float rounding in
        # the two backends' block-wise products may break differently; ties have their own tests)
        self.np_layer.begin_task(np.random.default_rng([seed, self.np_layer.n_atoms]))
        self.t_layer.begin_task()
        with torch.no_grad():
            self.t_layer.keys.copy_(torch.from_numpy(self.np_layer.keys))  # parameters made once, in NumPy
        self.np_opt.reset()
        self.t_opt.reset()

    @precondition(lambda self: self.np_layer.in_task)
    @rule(seed=st.integers(0, 2**16), n=st.integers(1, 6))
    def train_step(self, seed, n):
        r = np.random.default_rng(seed)
        x, target = r.standard_normal((n, D_IN)), r.standard_normal((n, D_OUT))
        y, cache = self.np_layer.forward(x, training=True)
        grads = self.np_layer.backward((y - target) / n, cache)
        self.np_opt.step(self.np_layer.current_parameters(), {k: v for k, v in grads.items() if k != "x"})
        self.t_layer.train()
        for p in self.t_layer.current_parameters().values():
            p.grad = None
        y_t = self.t_layer(torch.from_numpy(x))
        (0.5 * ((y_t - torch.from_numpy(target)) ** 2).sum() / n).backward()
        params = self.t_layer.current_parameters()
        self.t_opt.step(params, {k: p.grad for k, p in params.items()})

    @precondition(lambda self: self.np_layer.in_task)
    @rule()
    def end_task(self):
        self.np_layer.end_task()
        self.t_layer.end_task()
        self.np_frozen = (self.np_layer.frozen_keys.copy(), self.np_layer.frozen_values.copy())
        self.t_frozen = (self.t_layer.frozen_keys.clone(), self.t_layer.frozen_values.clone())

    @rule(seed=st.integers(0, 2**16), training=st.booleans())
    def recall(self, seed, training):
        x = np.random.default_rng(seed).standard_normal((3, 2, D_IN))
        y_np, _ = self.np_layer.forward(x, training=training)
        self.t_layer.train(training)
        y_t = self.t_layer(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(y_t, y_np, rtol=1e-7, atol=1e-9)

    @invariant()
    def layers_agree(self):
        for name in ("frozen_keys", "frozen_values", "keys", "values"):
            a = getattr(self.np_layer, name)
            b = getattr(self.t_layer, name).detach().numpy()
            np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9, err_msg=name)

    @invariant()
    def frozen_atoms_never_change(self):
        """Bit for bit, each backend against its own snapshot taken at the last end_task()."""
        fk, fv = self.np_frozen
        assert np.array_equal(self.np_layer.frozen_keys, fk) and np.array_equal(self.np_layer.frozen_values, fv)
        tk, tv = self.t_frozen
        assert torch.equal(self.t_layer.frozen_keys, tk) and torch.equal(self.t_layer.frozen_values, tv)


Lifecycle.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
TestLifecycle = Lifecycle.TestCase
