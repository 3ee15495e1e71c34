"""The CLIP continual-learning loss of spec §6, in NumPy, with its gradient.

image→text: cross-entropy of ``λ e_b · c_j`` over all classes seen so far, with the classes of earlier
tasks masked to −∞ (only the current classes compete). text→image: logits ``λ C Eᵀ`` (classes × batch),
each class row's target the *unnormalised* multi-hot indicator of the batch items with that label,
loss ``−Σ_b target[c, b] log softmax_b(logits[c])`` averaged over all class rows (rows of classes absent
from the batch contribute 0). ``λ`` is the (frozen) logit scale; E and C are L2-normalised features.
"""

from __future__ import annotations

import numpy as np

from moram_ref.shapes import check_ndim, check_shape


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z_max = np.max(z, axis=axis, keepdims=True)
    return z - z_max - np.log(np.sum(np.exp(z - z_max), axis=axis, keepdims=True))


def two_term_loss(
    image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray, n_masked: int, logit_scale: float
) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of spec §6's two-term loss — theory.md#eq-two-term-loss.

    image_emb E (B, D), class_emb C (n_seen, D) (earlier classes first), labels (B,) in
    ``[n_masked, n_seen)``. Returns ``(loss, {"image": ∂L/∂E, "class": ∂L/∂C})``.
    """
    check_ndim("image_emb", image_emb, 2)
    check_shape("class_emb", class_emb, (-1, image_emb.shape[1]))
    check_shape("labels", labels, (image_emb.shape[0],))
    n_seen, batch = class_emb.shape[0], image_emb.shape[0]
    if not 0 <= n_masked < n_seen:
        raise ValueError(f"n_masked must lie in [0, n_seen={n_seen}), got {n_masked}")
    if labels.min() < n_masked or labels.max() >= n_seen:
        raise ValueError(f"labels must lie in [n_masked={n_masked}, n_seen={n_seen}), got {labels.min()}..{labels.max()}")
    onehot = np.zeros((batch, n_seen))
    onehot[np.arange(batch), labels] = 1.0  # (B, n_seen)
    # image → text, earlier classes masked
    logits = logit_scale * image_emb @ class_emb.T  # (B, n_seen)
    logits[:, :n_masked] = -np.inf
    logp = _log_softmax(logits, axis=1)  # (B, n_seen)
    loss_i2t = -np.mean(logp[np.arange(batch), labels])
    g_logits = (np.exp(logp) - onehot) / batch  # (B, n_seen); masked columns have exp(-inf) = 0
    # text → image, multi-hot targets, mean over class rows
    target = onehot.T  # (n_seen, B)
    logp_t = _log_softmax(logit_scale * class_emb @ image_emb.T, axis=1)  # (n_seen, B)
    loss_t2i = -np.sum(target * logp_t) / n_seen
    g_logits_t = (target.sum(axis=1, keepdims=True) * np.exp(logp_t) - target) / n_seen  # (n_seen, B)
    grad_image = logit_scale * (g_logits @ class_emb + g_logits_t.T @ class_emb)  # (B, D)
    grad_class = logit_scale * (g_logits.T @ image_emb + g_logits_t @ image_emb)  # (n_seen, D)
    return float(loss_i2t + loss_t2i), {"image": grad_image, "class": grad_class}
