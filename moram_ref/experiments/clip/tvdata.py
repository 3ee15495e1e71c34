"""MTIL's data, the ZSCL protocol: torchvision datasets under ``--data-root`` (never downloaded).

Official train/test splits, except Caltech101, EuroSAT and SUN397, which have none: for those the full
dataset is split 80/20 exactly as ``torch.utils.data.random_split(ds, [int(0.8 N), N − int(0.8 N)],
generator=torch.Generator().manual_seed(42))`` does (SUN397's file order is sorted first, so the split
is reproducible on any filesystem). Items are referred to as ``"tv:<dataset>:<split>:<index>"`` and
opened by :func:`open_item`, which builds each torchvision dataset once per process.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from moram_ref.experiments.clip.data import DECODED, Domain, Split, duplicate_prompts, size_problems, synthetic_keys
from moram_ref.experiments.clip.text import prompt_key, visible


def mtil_spec() -> dict:
    return json.loads(resources.files("moram_ref.experiments.clip").joinpath("mtil.json").read_text())


def _construct(key: str, root: str, split: str):
    from torchvision import datasets as D  # noqa: PLC0415

    train = split == "train"
    makers = {
        "aircraft": lambda: D.FGVCAircraft(root, split="train" if train else "test"),
        "caltech101": lambda: D.Caltech101(root),
        "cifar100": lambda: D.CIFAR100(root, train=train),
        "dtd": lambda: D.DTD(root, split="train" if train else "test", partition=1),
        "eurosat": lambda: D.EuroSAT(root),
        "flowers102": lambda: D.Flowers102(root, split="train" if train else "test"),
        "food101": lambda: D.Food101(root, split="train" if train else "test"),
        "mnist": lambda: D.MNIST(root, train=train),
        "oxford_pets": lambda: D.OxfordIIITPet(root, split="trainval" if train else "test"),
        "stanford_cars": lambda: D.StanfordCars(root, split="train" if train else "test"),
        "sun397": lambda: D.SUN397(root),
    }
    if key not in makers:
        raise ValueError(f"unknown MTIL dataset {key!r}; known: {sorted(makers)}")
    try:
        ds = makers[key]()
    except (RuntimeError, FileNotFoundError) as exc:
        said = re.sub(r"\s*You can use download=True to download it\.?", "", str(exc)).strip()  # we never do
        raise FileNotFoundError(f"torchvision {key} not found under {root} ({said or type(exc).__name__}): download "
                                "it with torchvision first; this project never downloads") from exc
    if key == "sun397":  # rglob order depends on the filesystem: sort for a reproducible split
        order = np.argsort([str(p) for p in ds._image_files], kind="stable")
        ds._image_files = [ds._image_files[i] for i in order]
        ds._labels = [ds._labels[i] for i in order]
    return ds


@lru_cache(maxsize=None)
def dataset(key: str, root: str, split: str):
    """The torchvision dataset for (key, split); the random-split datasets share one full object."""
    full = split if key not in mtil_spec()["random_split"] else "full"
    return _construct(key, root, "train" if full == "full" else split)


def labels_of(ds) -> np.ndarray:
    for attr in ("targets", "_labels", "y"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr))
    if hasattr(ds, "_samples"):  # StanfordCars
        return np.asarray([lbl for _, lbl in ds._samples])
    raise ValueError(f"cannot read labels of {type(ds).__name__}")


def classes_of(ds) -> list[str] | None:
    for attr in ("classes", "categories"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    return None


def random_split_indices(n: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """``random_split``'s partition of ``range(n)`` into int(0.8 n) / rest, with its seeded generator."""
    import torch  # noqa: PLC0415

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    cut = int(0.8 * n)
    return perm[:cut], perm[cut:]


def load_mtil_domain(data_root: str | Path, key: str, classnames: list[str] | None = None,
                     template: str | None = None, eval_templates: list[str] | None = None) -> Domain:
    root = str(data_root)
    spec = mtil_spec()
    if key in spec["random_split"]:
        full = dataset(key, root, "train")
        labels = labels_of(full)
        tr, te = random_split_indices(len(labels))
        train = Split([Path(f"tv:{key}:train:{i}") for i in tr], labels[tr])
        test = Split([Path(f"tv:{key}:train:{i}") for i in te], labels[te])
        names = classes_of(full)
    else:
        ds_tr, ds_te = dataset(key, root, "train"), dataset(key, root, "test")
        y_tr, y_te = labels_of(ds_tr), labels_of(ds_te)
        train = Split([Path(f"tv:{key}:train:{i}") for i in range(len(y_tr))], y_tr)
        test = Split([Path(f"tv:{key}:test:{i}") for i in range(len(y_te))], y_te)
        names = classes_of(ds_tr)
    if classnames is None:  # torchvision's folder-style names: underscores become spaces
        classnames = None if names is None else [n.replace("_", " ") for n in names]
    if not classnames:
        raise ValueError(f"torchvision's {key} has no class names: pass them with --classnames-json")
    check_labels(key, classnames, names, {"train": train.labels, "test": test.labels})
    template = template or (eval_templates[0] if eval_templates else spec["template"])
    return Domain(key, list(classnames), template, train, test, eval_templates)


def check_labels(key: str, classnames: list[str], dataset_names: list[str] | None,
                 labels: dict[str, np.ndarray]) -> None:
    """Class names and labels must line up exactly: as many names as the dataset has classes (its own
    list when it has one, else the largest label + 1), every label in ``0..C-1``. ``ValueError`` naming
    the dataset otherwise."""
    n = len(classnames)
    if dataset_names is not None and len(dataset_names) != n:
        raise ValueError(f"{key}: {n} class names given, the {key} data under --data-root has {len(dataset_names)} "
                         "classes (as torchvision reads it)")
    top = max(int(np.max(y)) for y in labels.values() if len(y)) + 1
    if dataset_names is None and top != n:
        raise ValueError(f"{key}: {n} class names given, the labels on disk run 0..{top - 1} ({top} classes)")
    for part, y in labels.items():
        bad = sorted({int(v) for v in np.asarray(y) if not 0 <= int(v) < n})
        if bad:
            raise ValueError(f"{key}: {part} labels {bad[:10]} lie outside 0..{n - 1} ({n} class names)")


def open_item(ref: str, data_root: str):
    """The PIL image behind ``"tv:<dataset>:<split>:<index>"``."""
    _, key, split, idx = ref.split(":")
    return dataset(key, data_root, split)[int(idx)][0]


def read_classnames(path: str | Path, field: str | None = None, section: str = "classnames",
                    keys: list[str] | None = None) -> dict[str, list[str]]:
    """Lists per dataset from a JSON file: ``{key: [..]}``, or a ``{"datasets": {key: {section: {field: [..]}}}}``
    document (``section`` "classnames" or "templates") with ``field`` naming the list to use (and only there).

    The lists of ``keys`` (every dataset's when None) are checked: non-empty, each item a string with a visible
    character as CLIP reads it, no two items that CLIP's tokenizer reads alike (for templates: once a class
    name is put in), every template a format string with exactly one ``{}``. With ``keys``, each of those
    datasets must have a list (a dataset left out would silently keep torchvision's names/template), and a key
    one typo away from a dataset's is refused. ``ValueError`` naming the file, the dataset and the item."""
    data = json.loads(Path(path).read_text())
    flag = f"--{section}-field"
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of lists per dataset")
    if "datasets" in data:
        if field is None:
            raise ValueError(f"{path} holds several lists per dataset: name one with {flag}")
        if not isinstance(data["datasets"], dict):
            raise ValueError(f"{path}: 'datasets' is a JSON {type(data['datasets']).__name__}, not an object "
                             "{dataset: {classnames: {field: [..]}, templates: {field: [..]}}}")
        found = {}
        for key, entry in data["datasets"].items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: datasets.{key} is a JSON {type(entry).__name__}, not an object "
                                 f"{{classnames: {{field: [..]}}, templates: {{field: [..]}}}}")
            lists = entry.get(section)
            if lists is not None and not isinstance(lists, dict):
                raise ValueError(f"{path}: datasets.{key}.{section} is a JSON {type(lists).__name__}, not an object "
                                 f"{{field: [..]}}")
            if isinstance(lists, dict) and isinstance(lists.get(field), list):
                found[key] = lists[field]
    else:
        if field is not None:
            raise ValueError(f"{path} is a plain {{dataset: [..]}} file: {flag} {field!r} applies to a "
                             "datasets.json-style file only (drop it)")
        found = {k: v for k, v in data.items() if isinstance(v, list)}
    for key in (k for k in (keys if keys is not None else found) if k in found):
        _check_list(path, section, key, found[key])
    # CIFAR10 is in ZSCL's lists (its zero-shot reference) though never in an MTIL order
    known = {k for order in mtil_spec()["orders"].values() for k in order} | {"cifar10"}
    for key in sorted(set(found) - known):  # a key one typo away from a dataset's: its list would go unused
        close = difflib.get_close_matches(key, sorted(known - set(found)), n=1, cutoff=0.8)
        if close:
            raise ValueError(f"{path} has a {section} list for {key!r}, which is no MTIL dataset: did you mean "
                             f"{close[0]!r}?")
    missing = [k for k in keys or [] if k not in found]
    if missing:
        where = f"{section} list under field {field!r}" if field else f"{section} list"
        raise ValueError(f"{path} has no {where} for datasets {missing}")
    return found


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a prompt template with exactly one positional ``{}`` for the class name
    (None when it is): ``"{} {}"``, ``"{x}"``, ``"{{}}"`` (a literal brace pair) and an unbalanced brace are not."""
    probe_a, probe_b = "\x00" + "A" * 64 + "\x00", "\x00" + "B" * 64 + "\x00"  # longer than any precision cuts
    try:
        a, b = template.format(probe_a), template.format(probe_b)
    except (IndexError, KeyError, ValueError, AttributeError, TypeError) as exc:
        return f"is not a format string with one '{{}}' for the class name ({type(exc).__name__}: {exc})"
    if a == b:
        return "has no '{}' for the class name (a '{{}}' is a literal brace pair)"
    if a.count(probe_a) != 1:
        return "changes the class name it puts in (a precision such as {:.3} cuts it, a conversion such as {!r} quotes it)"
    return None


def _check_list(path: str | Path, section: str, key: str, items: list) -> None:
    """One dataset's list from :func:`read_classnames`'s file (see there); ``ValueError`` naming the item."""
    bad = next(((i, v) for i, v in enumerate(items) if not (isinstance(v, str) and visible(v))), None)
    if not items or bad:
        raise ValueError(f"{path}: {section} of {key!r} must be a non-empty list of strings, each with a visible "
                         "character" + (f" (item {bad[0]}: {bad[1]!r})" if bad else ""))
    if section == "templates":
        for i, v in enumerate(items):
            why = template_problem(v)
            if why:
                raise ValueError(f"{path}: template {i} of {key!r} ({v!r}) {why}")
        folded = [prompt_key(v.format("pagoda")) for v in items]  # two templates giving one prompt
    else:
        folded = [prompt_key(v) for v in items]  # what CLIP's tokenizer tells apart (case, spaces folded)
    counts = Counter(folded)
    if len(counts) != len(folded):
        same = list(dict.fromkeys(v for v, f in zip(items, folded) if counts[f] > 1))
        raise ValueError(f"{path}: {section} of {key!r} repeat {same[:10]} (CLIP's tokenizer folds case, "
                         "whitespace and HTML entities and reads up to an <end_of_text>, so these give the same "
                         "text feature)")


def _undecodable(refs: list[str], data_root: str) -> list[str]:
    """Those of the ``"tv:…"`` references whose image torchvision cannot load, each with the reason."""
    bad = []
    for ref in refs:
        try:
            open_item(ref, data_root).load()
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken files
            bad.append(f"{ref} ({exc})")
    return bad


def verify(data_root: str | Path, keys: list[str], names: dict[str, list[str]] | None = None,
           ensembles: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """``--verify`` for MTIL, per dataset: loaded as the run loads it (with ``names`` and ``ensembles`` from
    ``--classnames-json`` / ``--templates-json``), its images per split against ``mtil.json``'s
    ``expected`` (not compared on ``--make-synthetic`` data), an evenly spaced sample of ``DECODED`` images
    decoded whole, and classes that share a prompt within the dataset (MTIL scores each dataset over its
    own classes). Each entry: ``ok``, ``found``, ``expected``, ``classes``, ``prompts_per_class``,
    ``problems`` (why not ok) or ``error`` (could not load)."""
    spec = mtil_spec()
    synthetic = synthetic_keys(data_root)
    names, ensembles = names or {}, ensembles or {}
    report = {}
    for key in keys:
        expected = None if key in synthetic else spec["expected"][key]
        entry: dict = {"expected": expected if expected else "not compared (synthetic data)"}
        try:
            d = load_mtil_domain(data_root, key, names.get(key), eval_templates=ensembles.get(key))
            found = {"train": len(d.train.labels), "test": len(d.test.labels)}
            refs = [str(p) for p in d.train.paths] + [str(p) for p in d.test.paths]
            sample = refs[:: max(1, len(refs) // DECODED)][:DECODED]
            unreadable = _undecodable(sample, str(data_root))
            problems = size_problems(found, expected) + (
                [f"{len(unreadable)} of {len(sample)} sampled images unreadable"] if unreadable else [])
            entry.update(found=found, classes=len(d.classnames), prompts_per_class=len(d.eval_prompts()[0]),
                         unreadable_files_sampled=len(unreadable), first_unreadable=unreadable[:3], ok=not problems)
            if problems:
                entry["problems"] = problems
            dups = duplicate_prompts([d], union=False)
            if dups:
                entry.update(duplicate_prompts=dups, note="classes sharing a prompt get identical text features: the "
                             "later one is never predicted")
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            entry.update(ok=False, error=str(exc))
        report[key] = entry
    return report
