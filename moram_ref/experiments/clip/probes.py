"""What MoRAM's atoms do inside CLIP (spec §8): activation maps over image tokens, atoms for 99 % mass."""

from __future__ import annotations

import numpy as np
import torch

from moram_ref import metrics
from moram_ref.experiments.clip.data import Domain
from moram_ref.torch import attach as A


def map_layer(model) -> str | None:
    """The image encoder's attention k-projection of the middle block (the layer of the paper's Fig. 3)."""
    names = [n for n, _ in A.moram_layers(model) if n.startswith("visual.") and n.endswith("attn.k_proj")]
    return names[len(names) // 2] if names else None


@torch.no_grad()
def probe(model, transform, domains: list[Domain], per_domain: int = 4, device="cpu", data_root=None) -> dict:
    """Per MoRAM layer the mean atoms-for-99 % over image tokens of a few test images per domain, and the
    final weights (tokens × atoms) at :func:`map_layer` for the first test image of each domain."""
    from moram_ref.experiments.clip.train import ImageList  # noqa: PLC0415

    model.eval()
    A.set_recording(model, True)
    try:
        n99: dict[str, list[float]] = {}
        maps = {}
        target = map_layer(model)
        for d in domains:
            k = min(per_domain, len(d.test.paths))
            images = torch.stack([ImageList(d.test.paths, d.test.labels, transform, data_root)[i][0] for i in range(k)])
            model.encode_image(images.to(device=device, dtype=next(model.parameters()).dtype))
            for name, layer in A.moram_layers(model):
                if name.startswith("visual.") and layer.last_weights is not None:
                    n99.setdefault(name, []).append(float(metrics.atoms_for_mass(layer.last_weights.cpu().numpy()).mean()))
            if target is not None:
                w = dict(A.moram_layers(model))[target].last_weights  # (L, B, R) or (B, L, R)
                w = w.cpu().numpy()
                maps[d.key] = w[:, 0] if w.shape[1] == k and w.shape[0] != k else w[0]
        return {"n99": {n: float(np.mean(v)) for n, v in n99.items()}, "maps": maps, "map_layer": target}
    finally:
        A.set_recording(model, False)
