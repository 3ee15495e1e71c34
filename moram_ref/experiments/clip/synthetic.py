"""Small synthetic image domains for tests, tutorials and CPU smoke runs, in the real on-disk layouts:
CoOp's (X-TAIL) and torchvision's (MTIL: MNIST, DTD, EuroSAT), so the real loaders read them unchanged.

Each class has its own mean colour (so the task is learnable) plus noise. ``moram-ref clip
--make-synthetic DIR`` writes ``DIR/xtail`` (caltech101, dtd, eurosat) and ``DIR/mtil`` (mnist, dtd, eurosat).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moram_ref.experiments import rundir
from moram_ref.experiments.clip.data import SYNTHETIC_BY, SYNTHETIC_MARKER, xtail_spec


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


def _image(path: Path, colour: np.ndarray, rng: np.random.Generator, size: int = 20) -> None:
    from PIL import Image  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((colour + rng.integers(0, 40, (size, size, 3))).clip(0, 255).astype(np.uint8)).save(path)


def make_torchvision_mnist(root: str | Path, n_train: int = 12, n_test: int = 6, n_classes: int = 3) -> None:
    """``root/MNIST/raw/*-ubyte`` in the IDX format torchvision reads; labels cycle over ``n_classes``."""
    import struct  # noqa: PLC0415

    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        images = (labels[:, None, None] * 80 + rng.integers(0, 30, (n, 28, 28))).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def make_torchvision_dtd(root: str | Path, classes=("banded", "dotted", "zigzagged"), n=(4, 2, 1)) -> None:
    """``root/dtd/dtd/{images,labels}`` with partition-1 train/test/val lists."""
    base = Path(root) / "dtd" / "dtd"
    rng = np.random.default_rng(1)
    for split, count in zip(("train", "test", "val"), n):
        lines = []
        for c, cls in enumerate(classes):
            for i in range(count):
                name = f"{cls}_{split}_{i}.jpg"
                _image(base / "images" / cls / name, np.array([60 * c, 40, 200 - 60 * c]), rng)
                lines.append(f"{cls}/{name}")
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def make_torchvision_eurosat(root: str | Path, classes=("AnnualCrop", "Forest", "SeaLake"), per_class: int = 5) -> None:
    """``root/eurosat/2750/<class>/*.jpg`` (an ImageFolder)."""
    rng = np.random.default_rng(2)
    for c, cls in enumerate(classes):
        for i in range(per_class):
            _image(Path(root) / "eurosat" / "2750" / cls / f"{cls}_{i}.jpg", np.array([40, 70 * c, 90]), rng)


def make_all(directory: str | Path) -> dict[str, Path]:
    """Both layouts under ``directory``: ``xtail/`` and ``mtil/``; returns the two data roots."""
    directory = Path(directory)
    layouts = (("xtail", ["caltech101", "dtd", "eurosat"]), ("mtil", ["mnist", "dtd", "eurosat"]))
    for layout, keys in layouts:  # first, marked unfinished: a run stopped half-way leaves folders that are
        (directory / layout).mkdir(parents=True, exist_ok=True)  # ours (written again) and refused until then
        mark_synthetic(directory / layout, keys, complete=False)
    for i, key in enumerate(("caltech101", "dtd", "eurosat")):
        make_coop_dataset(directory / "xtail", key, n_train=8, n_test=4, seed=i)
    make_torchvision_mnist(directory / "mtil")
    make_torchvision_dtd(directory / "mtil")
    make_torchvision_eurosat(directory / "mtil")
    for layout, keys in layouts:
        mark_synthetic(directory / layout, keys)
    return {"xtail": directory / "xtail", "mtil": directory / "mtil"}


def mark_synthetic(root: str | Path, keys: list[str], complete: bool = True) -> None:
    """Mark ``root`` as generated data (:data:`~moram_ref.experiments.clip.data.SYNTHETIC_MARKER`): ``--verify``
    then checks its files but does not compare its split sizes with the releases'. ``complete=False`` (written
    before the data): the runs and ``--verify`` refuse the folder until the writing finished."""
    rundir.write_json(Path(root) / SYNTHETIC_MARKER,  # whole or not at all, also on a full disk
                      {"made_by": SYNTHETIC_BY, "datasets": keys, "complete": complete,
                       "note": "random images: a pipeline check, not a benchmark"})
