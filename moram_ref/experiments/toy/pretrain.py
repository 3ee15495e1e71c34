"""The "pretrained" base of the digits stream: a small MLP encoder trained once on plain digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moram_ref.numpy.optim import Adam


@dataclass
class BaseEncoder:
    """``z = W2 relu(W1 x + b1) + b2`` (frozen after pretraining); ``embed`` L2-normalises z."""

    w1: np.ndarray  # (H, 64)
    b1: np.ndarray  # (H,)
    w2: np.ndarray  # (E, H)
    b2: np.ndarray  # (E,)

    normalised: bool = True  # pre-LN: each linear layer sees its input standardised per sample

    def embed(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(layer_norm(x, self.normalised)[0] @ self.w1.T + self.b1, 0.0)
        z = layer_norm(h, self.normalised)[0] @ self.w2.T + self.b2
        return z / np.linalg.norm(z, axis=1, keepdims=True)


def layer_norm(x: np.ndarray, on: bool = True, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample standardisation without affine parameters: ``x̂ = (x − mean) / sqrt(var + eps)``.

    x: (N, D) -> (x̂ (N, D), σ (N, 1)); with ``on=False`` the identity (x, 1). What a transformer's adapted
    q/k/v/c_fc layers see (a pre-LN block), so key responses measure a direction, not the input's brightness.
    """
    if not on:
        return x, np.ones((len(x), 1))
    mu = x.mean(axis=1, keepdims=True)
    sigma = np.sqrt(x.var(axis=1, keepdims=True) + eps)
    return (x - mu) / sigma, sigma


def layer_norm_backward(grad: np.ndarray, x_hat: np.ndarray, sigma: np.ndarray, on: bool = True) -> np.ndarray:
    """Gradient of :func:`layer_norm` w.r.t. its input, given ``dL/dx̂`` (N, D) -> (N, D)."""
    if not on:
        return grad
    g_mean = grad.mean(axis=1, keepdims=True)
    gx_mean = (grad * x_hat).mean(axis=1, keepdims=True)
    return (grad - g_mean - x_hat * gx_mean) / sigma


def pretrain_encoder(x: np.ndarray, y: np.ndarray, settings, rng: np.random.Generator) -> BaseEncoder:
    """Train encoder + a throw-away 10-way linear head with softmax cross-entropy (Adam, full batch)."""
    h, e = settings.hidden, settings.embed
    p = {
        "w1": rng.standard_normal((h, 64)) / 8.0, "b1": np.zeros(h),
        "w2": rng.standard_normal((e, h)) / np.sqrt(h), "b2": np.zeros(e),
        "head": rng.standard_normal((10, e)) / np.sqrt(e),
    }
    opt = Adam(lr=3e-3, weight_decay=1e-4)
    onehot = np.eye(10)[y]
    xn = layer_norm(x, settings.layer_norm)[0]
    for _ in range(settings.pretrain_steps):
        a1 = xn @ p["w1"].T + p["b1"]
        h1 = np.maximum(a1, 0.0)
        hn, sig = layer_norm(h1, settings.layer_norm)
        z = hn @ p["w2"].T + p["b2"]
        logits = z @ p["head"].T
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        g_logits = (prob - onehot) / len(x)
        g_z = g_logits @ p["head"]
        g_h1 = layer_norm_backward(g_z @ p["w2"], hn, sig, settings.layer_norm) * (a1 > 0)
        grads = {"head": g_logits.T @ z, "w2": g_z.T @ hn, "b2": g_z.sum(0), "w1": g_h1.T @ xn, "b1": g_h1.sum(0)}
        opt.step(p, grads)
    return BaseEncoder(p["w1"], p["b1"], p["w2"], p["b2"], settings.layer_norm)
