"""X-TAIL data from ``--data-root``: CoOp split files, Aircraft's official lists, torchvision MNIST;
few-shot subsets drawn once and stored as manifests; a verify report of what is on disk.

Few-shot rule (documented, reproducible whatever else consumes randomness): for dataset ``d``, shots
``K`` and seed ``s``, a ``numpy.random.default_rng([s, K, crc32(d)])`` permutes each class's training
items (classes in label order) and keeps the first ``K`` (all of them if fewer). The chosen indices are
written to ``<run>/manifests/<d>_<K>shot_seed<s>.json`` and read back on resume.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from moram_ref.experiments.clip.text import prompt_key, visible
from moram_ref.experiments.rundir import write_text


def xtail_spec() -> dict:
    return json.loads(resources.files("moram_ref.experiments.clip").joinpath("xtail.json").read_text())


@dataclass
class Split:
    paths: list[Path]  # image files, or "tv:<dataset>:<split>:<index>" items of torchvision datasets
    labels: np.ndarray  # (N,) int


@dataclass
class Domain:
    key: str
    classnames: list[str]
    template: str  # the training prompt (and the evaluation prompt without an ensemble)
    train: Split
    test: Split
    eval_templates: list[str] | None = None  # an ensemble: class features averaged over these (ZSCL's MTIL)

    @property
    def prompts(self) -> list[str]:
        return [self.template.format(c) for c in self.classnames]

    def eval_prompts(self) -> list[list[str]]:
        """Per class, the prompts whose normalised features are averaged at evaluation."""
        templates = self.eval_templates or [self.template]
        return [[tp.format(c) for tp in templates] for c in self.classnames]


def _coop(root: Path, spec: dict) -> tuple[list[str], Split, Split]:
    split_path = root / spec["split_file"]
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} missing ({spec['source']})")
    try:
        split = json.loads(split_path.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, a 5,000-digit number
        raise ValueError(f"{split_path} is not a JSON split file ({type(exc).__name__}: {exc})") from None
    image_root = root / spec["image_root"]
    names = coop_label_names(split, split_path)
    classnames = [names[i] + spec.get("classname_suffix", "") for i in range(len(names))]

    def make(entries):
        return Split([image_root / p for p, _, _ in entries], np.array([int(lbl) for _, lbl, _ in entries]))

    return classnames, make(split["train"]), make(split["test"])


def coop_label_names(split: dict, path: Path) -> dict[int, str]:
    """Label → class name from a CoOp split's train part (CoOp's rule), checked so that names and labels
    cannot drift apart: labels contiguous 0..C-1 in train, one name per label in every part, and no
    val/test label outside train's. ``ValueError`` naming the file and the labels otherwise."""
    if not isinstance(split, dict):
        raise ValueError(f"{path} holds a JSON {type(split).__name__}, not an object with 'train' and 'test' lists")
    for part in ("train", "test"):
        if not isinstance(split.get(part), list):
            raise ValueError(f"{path} has no {part!r} list")
    names: dict[int, str] = {}
    for part in ("train", "val", "test"):
        for entry in split.get(part, []):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], int)
                    and not isinstance(entry[1], bool) and isinstance(entry[2], str) and visible(entry[2])):
                raise ValueError(f"{path}: {part} entry {entry!r} is not [image_path, int label, class name] "
                                 "(the name a string with a visible character)")
            label, name = entry[1], entry[2]
            if part == "train":
                if names.setdefault(label, name) != name:
                    raise ValueError(f"{path}: label {label} has two class names, {names[label]!r} and {name!r}")
            elif label not in names:
                raise ValueError(f"{path}: {part} has label {label} ({name!r}), which no train entry has")
            elif names[label] != name:
                raise ValueError(f"{path}: label {label} is {names[label]!r} in train but {name!r} in {part}")
        if part == "train":
            top = max(names, default=-1)
            # the labels absent from 0..top, counted without listing them (a label of 10**10 must not fill memory)
            n_missing = top + 1 - sum(1 for k in names if k >= 0)
            missing = list(itertools.islice((i for i in range(top + 1) if i not in names), 10))
            negative = sorted(k for k in names if k < 0)
            if n_missing or negative or not names:
                why = "; ".join(w for w in (not names and "there are none",
                                            n_missing and f"missing {missing}{' ...' if n_missing > 10 else ''}"
                                            + (f" ({n_missing} in all, up to the label {top})" if n_missing > 10 else ""),
                                            negative and f"negative {negative[:10]}") if w)
                raise ValueError(f"{path}: train labels must be 0..C-1 with every label present; {why}")
    return names


def _aircraft(root: Path, spec: dict) -> tuple[list[str], Split, Split]:
    variants = root / "variants.txt"
    if not variants.is_file():
        raise FileNotFoundError(f"{variants} missing ({spec['source']})")
    classnames = [ln.strip() for ln in variants.read_text().splitlines() if ln.strip()]
    invisible = [i + 1 for i, c in enumerate(classnames) if not visible(c)]
    if invisible:
        raise ValueError(f"{variants}: names {invisible[:10]} (counting non-blank lines) show no visible character")
    repeated = sorted({c for c in classnames if classnames.count(c) > 1})
    if repeated:
        raise ValueError(f"{variants} lists {repeated} more than once")
    label_of = {c: i for i, c in enumerate(classnames)}

    def make(split: str) -> Split:
        path = root / f"images_variant_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing ({spec['source']})")
        rows = [ln.strip().split(" ", 1) for ln in path.read_text().splitlines() if ln.strip()]
        unknown = sorted({v for *_, v in rows if v not in label_of} | {r[0] for r in rows if len(r) != 2})
        if unknown:
            raise ValueError(f"{path}: variants {unknown[:5]} are not in {variants.name} (or a line lacks one)")
        return Split([root / spec["image_root"] / f"{i}.jpg" for i, _ in rows],
                     np.array([label_of[v] for _, v in rows]))

    return classnames, make("train"), make("test")


def _mnist(root: Path, spec: dict) -> tuple[list[str], Split, Split]:
    from moram_ref.experiments.clip.tvdata import dataset, labels_of  # noqa: PLC0415

    splits = {}
    for name in ("train", "test"):
        try:
            ds = dataset("mnist", str(root), name)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"MNIST not found under {root}/MNIST/raw ({spec['source']}): {exc}") from exc
        labels = labels_of(ds)
        splits[name] = Split([Path(f"tv:mnist:{name}:{i}") for i in range(len(labels))], labels.copy())
    classnames = [spec["classname_format"].format(c) for c in ds.classes]
    return classnames, splits["train"], splits["test"]


LOADERS = {"coop": _coop, "aircraft": _aircraft, "mnist": _mnist}


def load_domain(data_root: str | Path, key: str, spec: dict | None = None) -> Domain:
    spec = spec or xtail_spec()["datasets"][key]
    root = Path(data_root) / spec["folder"]
    classnames, train, test = LOADERS[spec["loader"]](root, spec)
    return Domain(key, classnames, spec["template"], train, test)


def manifest_path(key: str, shots: int, seed: int, manifest_dir: Path) -> Path:
    """Where :func:`few_shot` keeps dataset ``key``'s ``shots``-shot subset for ``seed``."""
    return Path(manifest_dir) / f"{key}_{shots}shot_seed{seed}.json"


def few_shot(domain: Domain, shots: int, seed: int, manifest_dir: Path) -> np.ndarray:
    """Indices into ``domain.train`` of the K-shot subset: ``shots`` images of each class, drawn by a generator
    seeded by ``(seed, shots, dataset)``, recorded in a manifest (written on the first call, checked on every
    later one). ``ValueError`` naming the manifest where it cannot be read, was drawn from other training data,
    or holds another subset than this draw (edited, or copied from another dataset, shot count or seed): a
    resumed run would otherwise train on other images than the run it continues."""
    path = manifest_path(domain.key, shots, seed, manifest_dir)
    digest = hashlib.sha256(np.asarray(domain.train.labels, dtype=np.int64).tobytes()).hexdigest()
    rng = np.random.default_rng([seed, shots, zlib.crc32(domain.key.encode())])
    chosen = []
    for c in range(len(domain.classnames)):
        members = np.flatnonzero(domain.train.labels == c)
        chosen.extend(rng.permutation(members)[:shots].tolist())
    indices = np.array(sorted(chosen))
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("n_train"), int) \
                    or not isinstance(data.get("indices"), list):
                raise ValueError("not an object with n_train and indices")
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < data["n_train"]
                       for i in data["indices"]):
                raise ValueError(f"indices outside 0..{data['n_train'] - 1}")
            if not data["indices"] or len(set(data["indices"])) != len(data["indices"]):
                raise ValueError("indices empty or repeated (a draw takes each image once)")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ValueError(f"manifest {path} cannot be read ({type(exc).__name__}: {exc}); delete it to draw "
                             "the few-shot subset again") from None
        if data["n_train"] != len(domain.train.labels):
            raise ValueError(f"manifest {path} was drawn from {data['n_train']} training items, "
                             f"the data on disk has {len(domain.train.labels)}")
        if data.get("labels_sha256", digest) != digest:  # same count, other labels or order: other images
            raise ValueError(f"manifest {path} was drawn from training labels that differ from the data on disk "
                             f"(same count, other labels or order); delete it to draw again")
        recorded = {k: data[k] for k in ("dataset", "shots", "seed") if k in data}
        if recorded != {k: v for k, v in (("dataset", domain.key), ("shots", shots), ("seed", seed)) if k in data} \
                or data["indices"] != indices.tolist():
            raise ValueError(f"manifest {path} holds another subset than the {shots}-shot draw of {domain.key} with "
                             f"seed {seed} (recorded {recorded or 'no settings'}; edited, or copied from another "
                             "run?); delete it to draw again")
        return indices
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"dataset": domain.key, "shots": shots, "seed": seed,  # atomic: a kill leaves none
                                "n_train": len(domain.train.labels), "labels_sha256": digest,
                                "indices": indices.tolist()}))
    return indices


def duplicate_prompts(domains: list[Domain], union: bool = True) -> list[dict]:
    """Classes whose evaluation prompts are identical as CLIP's tokenizer reads them (:func:`text.prompt_key`:
    case, whitespace and HTML entities folded, the 77-token context), so their text features are identical and no image
    can be classified into the later one (argmax takes the first). ``union``: across all domains (the
    X-TAIL label space); else within each domain (MTIL). One entry per shared prompt set:
    ``{"prompts": [...], "classes": [[domain, label, classname], ...]}``."""
    groups: dict[tuple, list] = {}
    for d in domains:
        for label, (name, prompts) in enumerate(zip(d.classnames, d.eval_prompts())):
            scope = () if union else (d.key,)
            key = (*scope, *(prompt_key(p) for p in prompts))
            groups.setdefault(key, {"prompts": prompts, "classes": []})["classes"].append([d.key, label, name])
    return [g for g in groups.values() if len(g["classes"]) > 1]  # "prompts": the first class's, as written


DECODED = 200  # images per dataset that --verify decodes whole (an evenly spaced sample of those it checks exist)
SYNTHETIC_MARKER = "moram_ref_synthetic.json"  # written by --make-synthetic at each data root it makes
SYNTHETIC_BY = "moram-ref clip --make-synthetic"  # the marker's "made_by"


def synthetic_keys(data_root: str | Path) -> frozenset[str]:
    """The datasets that ``moram-ref clip --make-synthetic`` wrote under ``data_root``, as its marker file
    (:data:`SYNTHETIC_MARKER`) lists them: their split sizes are their own, not a release's, so ``--verify``
    does not compare them. Empty when there is no marker, or it is not the one that command writes."""
    try:
        marker = json.loads((Path(data_root) / SYNTHETIC_MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return frozenset()
    if not (isinstance(marker, dict) and marker.get("made_by") == SYNTHETIC_BY and isinstance(marker.get("datasets"), list)):
        return frozenset()
    return frozenset(k for k in marker["datasets"] if isinstance(k, str))


def size_problems(found: dict[str, int], expected: dict[str, int] | None) -> list[str]:
    """Why ``found`` images per split differ from the release's ``expected`` (None: not compared), one
    phrase per split: ``["train: 24 found, 4128 expected"]``."""
    return [f"{k}: {n} found, {expected[k]} expected" for k, n in found.items()
            if expected is not None and k in expected and n != expected[k]]


def _unreadable(paths: list[Path]) -> list[str]:
    """Those of ``paths`` that PIL cannot decode whole (truncated, not an image), each with PIL's reason."""
    from PIL import Image  # noqa: PLC0415

    bad = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken files
            bad.append(f"{p} ({exc})")
    return bad


def verify(data_root: str | Path, keys: list[str] | None = None) -> dict[str, dict]:
    """Per dataset: what is on disk against what is expected, and where it comes from; and under
    ``"union"``: the classes of the loaded datasets whose prompts coincide (kept, see
    docs/experiments.md), with the number of classes and distinct prompts."""
    spec = xtail_spec()
    synthetic = synthetic_keys(data_root)
    report = {}
    loaded = []
    for key in keys or spec["order"]:
        s = spec["datasets"][key]
        expected = None if key in synthetic else s["expected"]
        entry: dict = {"source": s["source"], "expected": expected if expected else "not compared (synthetic data)"}
        try:
            d = load_domain(data_root, key, s)
            loaded.append(d)
            found = {"train": len(d.train.labels), "test": len(d.test.labels)}
            sampled = [p for p in d.train.paths[:2000] + d.test.paths[:2000] if not str(p).startswith("tv:")]
            missing = [str(p) for p in sampled if not p.is_file()]
            decoded = [p for p in sampled if p.is_file()][:: max(1, len(sampled) // DECODED)]
            unreadable = _unreadable(decoded)
            problems = size_problems(found, expected) + [
                f"{n} of {total} {what}" for n, total, what in
                ((len(missing), len(sampled), "sampled files missing"),
                 (len(unreadable), len(decoded), "decoded files unreadable")) if n]
            entry.update(found=found, classes=len(d.classnames), missing_files_sampled=len(missing),
                         first_missing=missing[:3], unreadable_files_sampled=len(unreadable),
                         first_unreadable=unreadable[:3], ok=not problems)
            if problems:
                entry["problems"] = problems
        except (FileNotFoundError, ValueError, KeyError) as exc:
            entry.update(ok=False, error=str(exc))
        report[key] = entry
    dups = duplicate_prompts(loaded)
    n_classes = sum(len(d.classnames) for d in loaded)
    report["union"] = {"ok": True, "datasets": [d.key for d in loaded],
                       "left_out": [k for k, e in report.items() if not e["ok"] and "error" in e], "classes": n_classes,
                       "distinct_prompts": n_classes - sum(len(g["classes"]) - 1 for g in dups),
                       "duplicate_prompts": dups}
    if dups:
        report["union"]["note"] = ("classes sharing a prompt get identical text features: the later one is never "
                                   "predicted; kept as in the paper for comparability (docs/experiments.md)")
    return report
