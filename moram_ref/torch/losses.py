"""The CLIP continual-learning loss of spec §6 in PyTorch (mirror of moram_ref.numpy.losses).

Returns the loss tensor; gradients come from autograd (the NumPy mirror returns them explicitly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moram_ref.shapes import check_ndim, check_shape


def two_term_loss(
    image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor, n_masked: int, logit_scale: float
) -> torch.Tensor:
    """Spec §6's two-term loss — theory.md#eq-two-term-loss.

    image_emb (B, D), class_emb (n_seen, D) earlier classes first, labels (B,) in ``[n_masked, n_seen)``;
    ``logit_scale`` a float or a 0-d tensor (CLIP's ``logit_scale.exp()``, frozen).
    """
    check_ndim("image_emb", image_emb, 2)
    check_shape("class_emb", class_emb, (-1, image_emb.shape[1]))
    check_shape("labels", labels, (image_emb.shape[0],))
    n_seen = class_emb.shape[0]
    if not 0 <= n_masked < n_seen:
        raise ValueError(f"n_masked must lie in [0, n_seen={n_seen}), got {n_masked}")
    if int(labels.min()) < n_masked or int(labels.max()) >= n_seen:
        raise ValueError(f"labels must lie in [n_masked={n_masked}, n_seen={n_seen}), got {int(labels.min())}..{int(labels.max())}")
    logits = logit_scale * image_emb @ class_emb.T  # (B, n_seen)
    masked = torch.zeros(n_seen, dtype=torch.bool, device=logits.device)
    masked[:n_masked] = True
    loss_i2t = F.cross_entropy(logits.masked_fill(masked, float("-inf")), labels)
    target = F.one_hot(labels, n_seen).T.to(logits.dtype)  # (n_seen, B) unnormalised multi-hot rows
    logp_t = F.log_softmax(logits.T, dim=1)  # (n_seen, B)
    loss_t2i = -(target * logp_t).sum() / n_seen
    return loss_i2t + loss_t2i
