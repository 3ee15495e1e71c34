"""Small synthetic image domains in the CoOp layout, for tests, tutorials and CPU smoke runs.

Each class has its own mean colour (so the task is learnable) plus noise; the folder, image root and
split file follow the X-TAIL spec of the named dataset, so the real loaders read them unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moram_ref.experiments.clip.data import xtail_spec


def make_coop_dataset(root: str | Path, key: str, n_classes: int = 3, n_train: int = 5, n_test: int = 2,
                      size: int = 24, seed: int = 0, gray: bool = False) -> Path:
    """Write ``n_classes`` × (``n_train`` + ``n_test``) images and a CoOp split file for dataset ``key``."""
    from PIL import Image  # noqa: PLC0415

    spec = xtail_spec()["datasets"][key]
    if spec["loader"] != "coop":
        raise ValueError(f"{key} is not stored in the CoOp layout (loader {spec['loader']!r})")
    folder = Path(root) / spec["folder"]
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for c in range(n_classes):
        colour = rng.integers(0, 200, 3)
        for part, count in (("train", n_train), ("test", n_test)):
            for i in range(count):
                rel = f"class{c}/{part}_{i}.jpg"
                path = folder / spec["image_root"] / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = colour + rng.integers(0, 50, (size, size, 3))
                img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                (img.convert("L") if gray else img).save(path)
                split[part].append([rel, c, f"{key} thing {c}"])
    (folder / spec["split_file"]).write_text(json.dumps(split))
    return folder
