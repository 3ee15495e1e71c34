"""Data errors that used to surface only as a bad accuracy (issue #10): CoOp split files whose labels
and names drift apart, Aircraft lists that disagree, MTIL names that do not fit the labels, and prompts
shared by two classes of the X-TAIL union label space."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("open_clip")  # names and prompts are compared as its tokenizer reads them (clip/text.py)

from moram_ref.experiments.clip.data import Domain, Split, duplicate_prompts, load_domain, verify, xtail_spec  # noqa: E402
from moram_ref.experiments.clip.synthetic import make_coop_dataset  # noqa: E402
from moram_ref.experiments.clip.tvdata import check_labels  # noqa: E402

from conftest import shared_data  # noqa: E402

SHARED = shared_data("clip", "datasets.json")


def split_file(root: Path, key: str) -> Path:
    return root / xtail_spec()["datasets"][key]["folder"] / xtail_spec()["datasets"][key]["split_file"]


def rewrite(path: Path, edit) -> None:
    split = json.loads(path.read_text())
    edit(split)
    path.write_text(json.dumps(split))


def test_a_train_part_without_one_label_is_refused(tmp_path):
    make_coop_dataset(tmp_path, "dtd", n_classes=4)
    path = split_file(tmp_path, "dtd")
    # label 2 has no train entry: CoOp's label→name map would shift "thing 3" onto index 2
    rewrite(path, lambda s: s.update(train=[e for e in s["train"] if e[1] != 2],
                                     test=[e for e in s["test"] if e[1] != 2]))
    with pytest.raises(ValueError, match=r"split_zhou_DescribableTextures.json: train labels .* present; missing \[2\]$"):
        load_domain(tmp_path, "dtd")
    rewrite(path, lambda s: s.update(train=[[p, -1 if y == 0 else y, n] for p, y, n in s["train"]], test=[]))
    with pytest.raises(ValueError, match=r"present; missing \[0, 2\]; negative \[-1\]$"):
        load_domain(tmp_path, "dtd")
    rewrite(path, lambda s: s.update(train=[]))
    with pytest.raises(ValueError, match=r"present; there are none$"):
        load_domain(tmp_path, "dtd")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["test"].append(["x.jpg", 7, "dtd thing 7"]), r"test has label 7 .*which no train entry has"),
    (lambda s: s["train"].append(["x.jpg", 0, "other"]), r"label 0 has two class names, 'dtd thing 0' and 'other'"),
    (lambda s: s["test"].__setitem__(0, ["x.jpg", 0, "renamed"]), r"label 0 is 'dtd thing 0' in train but 'renamed'"),
    (lambda s: s["train"].append(["x.jpg", "1", "dtd thing 1"]), r"train entry \['x.jpg', '1', 'dtd thing 1'\]"),
    (lambda s: s.pop("test"), r"has no 'test' list"),
])
def test_split_files_whose_names_and_labels_disagree_are_refused(tmp_path, edit, message):
    make_coop_dataset(tmp_path, "dtd", n_classes=3)
    rewrite(split_file(tmp_path, "dtd"), edit)
    with pytest.raises(ValueError, match=message):
        load_domain(tmp_path, "dtd")
    assert not verify(tmp_path, ["dtd"])["dtd"]["ok"]


def test_aircraft_variant_not_in_the_list_is_refused(tmp_path):
    root = tmp_path / xtail_spec()["datasets"]["aircraft"]["folder"]
    root.mkdir(parents=True)
    (root / "variants.txt").write_text("A320\n707-320\n")
    (root / "images_variant_train.txt").write_text("0001 A320\n0002 A330\n")
    (root / "images_variant_test.txt").write_text("0003 A320\n")
    with pytest.raises(ValueError, match=r"images_variant_train.txt: variants \['A330'\] are not in variants.txt"):
        load_domain(tmp_path, "aircraft")
    (root / "variants.txt").write_text("A320\nA320\n")
    with pytest.raises(ValueError, match=r"variants.txt lists \['A320'\] more than once"):
        load_domain(tmp_path, "aircraft")


def _domain(key: str, names: list[str], template: str = "a photo of a {}.") -> Domain:
    empty = Split([], np.zeros(0, int))
    return Domain(key, names, template, empty, empty)


def test_duplicate_prompts_across_the_union_and_within_a_domain():
    a = _domain("caltech101", ["pagoda", "cat"])
    b = _domain("sun397", ["abbey", "pagoda"])
    c = _domain("eurosat", ["pagoda"], "a centered satellite photo of {}.")  # another template: no clash
    assert duplicate_prompts([a, b, c]) == [
        {"prompts": ["a photo of a pagoda."], "classes": [["caltech101", 0, "pagoda"], ["sun397", 1, "pagoda"]]}]
    assert duplicate_prompts([a, b, c], union=False) == []  # MTIL scores each domain over its own classes
    assert duplicate_prompts([_domain("dtd", ["x", "y", "x"])], union=False)[0]["classes"] == [
        ["dtd", 0, "x"], ["dtd", 2, "x"]]
    # CLIP's tokenizer folds case and whitespace: "Pagoda" and "pagoda  " give one text feature
    folded = duplicate_prompts([_domain("caltech101", ["Pagoda"]), _domain("sun397", ["pagoda  "])])
    assert folded == [{"prompts": ["a photo of a Pagoda."],
                       "classes": [["caltech101", 0, "Pagoda"], ["sun397", 0, "pagoda  "]]}]


@pytest.mark.parametrize(("a", "b"), [("a photo of a Cat.", "a photo of a cat."), ("a  photo\tof a cat .", "a photo of a cat."),
                                      ("cats &amp; dogs", "cats & dogs"), ("caf\u00e9", "cafe\u0301"),
                                      ("x " * 80, "x " * 75 + "y")])
def test_prompt_key_is_what_the_clip_text_encoder_receives(a, b):
    """Case, spacing, HTML entities, Unicode normal form and text past the 77-token context: each gives
    equal keys, and equal keys are equal ``open_clip.tokenize`` rows (what the text encoder sees)."""
    open_clip = pytest.importorskip("open_clip")
    from moram_ref.experiments.clip.text import prompt_key

    assert prompt_key(a) == prompt_key(b) and prompt_key(a) != prompt_key("a dog")
    tok = open_clip.get_tokenizer("ViT-B-16")
    assert tok([a]).tolist() == tok([b]).tolist()


def test_an_invisible_class_name_is_refused(tmp_path):
    """A zero-width space passes ``str.strip``; as a class name it would prompt with nothing."""
    from moram_ref.experiments.clip.text import visible

    assert not visible("\u200b") and not visible(" \u00a0\t") and visible("\u200bx") and not visible("&nbsp;&#32;")
    make_coop_dataset(tmp_path, "dtd", n_classes=3)
    rewrite(split_file(tmp_path, "dtd"), lambda s: [e.__setitem__(2, "\u200b") for part in s.values()
                                                     for e in part if e[1] == 1])
    with pytest.raises(ValueError, match="a visible character"):
        load_domain(tmp_path, "dtd")


def test_verify_reports_prompts_shared_across_domains(tmp_path):
    for i, key in enumerate(["caltech101", "sun397"]):
        make_coop_dataset(tmp_path, key, n_classes=3, seed=i)
        rewrite(split_file(tmp_path, key), lambda s: [e.__setitem__(2, "pagoda") for part in s.values()
                                                      for e in part if e[1] == 1])
    union = verify(tmp_path, ["caltech101", "sun397"])["union"]
    assert union["classes"] == 6 and union["distinct_prompts"] == 5
    assert union["duplicate_prompts"] == [{"prompts": ["a photo of a pagoda."],
                                           "classes": [["caltech101", 1, "pagoda"], ["sun397", 1, "pagoda"]]}]


@pytest.mark.skipif(not SHARED.is_file(), reason=f"the shared CLIP facts ({SHARED}) are not present; set MORAM_SHARED_DATA to the folder that holds clip/ and llm-cl-benchmark-500/")
def test_the_real_xtail_union_has_exactly_the_pagoda_clash():
    facts = json.loads(SHARED.read_text())["datasets"]
    spec = xtail_spec()
    domains = [_domain(k, facts[k]["classnames"]["coop_xtail"], spec["datasets"][k]["template"]) for k in spec["order"]]
    dups = duplicate_prompts(domains)
    assert sum(len(d.classnames) for d in domains) == 1100
    assert [[c[0] for c in g["classes"]] for g in dups] == [["caltech101", "sun397"]]
    assert dups[0]["prompts"] == ["a photo of a pagoda."]


@pytest.mark.parametrize(("names", "dataset_names", "labels", "message"), [
    (["a", "b"], ["a", "b", "c"], {"train": np.array([0, 1])}, r"mnist: 2 class names given, the mnist data under --data-root has 3 classes \(as torchvision reads it\)"),
    (["a", "b", "c"], None, {"train": np.array([0, 1])}, r"mnist: 3 class names given, the labels on disk run 0..1"),
    (["a", "b"], ["a", "b"], {"train": np.array([0, 1]), "test": np.array([2])}, r"mnist: test labels \[2\] lie outside 0..1"),
    (["a", "b"], ["a", "b"], {"train": np.array([-1, 1])}, r"mnist: train labels \[-1\] lie outside"),
])
def test_mtil_names_that_do_not_fit_the_labels_are_refused(names, dataset_names, labels, message):
    with pytest.raises(ValueError, match=message):
        check_labels("mnist", names, dataset_names, labels)
    check_labels("mnist", ["a", "b"], ["a", "b"], {"train": np.array([0, 1, 1])})  # fits


def test_a_manifest_drawn_from_other_labels_is_refused(tmp_path):
    from moram_ref.experiments.clip.data import few_shot

    make_coop_dataset(tmp_path, "dtd", n_classes=3)
    first = few_shot(load_domain(tmp_path, "dtd"), 2, 0, tmp_path / "m")
    # same number of training items, listed in another order: the stored indices would pick other images
    rewrite(split_file(tmp_path, "dtd"), lambda s: s.update(train=s["train"][::-1]))
    with pytest.raises(ValueError, match=r"dtd_2shot_seed0\.json was drawn from training labels that differ"):
        few_shot(load_domain(tmp_path, "dtd"), 2, 0, tmp_path / "m")
    assert len(first) == 6


def test_a_manifest_edited_or_copied_from_another_draw_is_refused(tmp_path):
    """A resumed run reads its manifests back: one whose indices are not this draw's (edited, or copied from a
    run with another seed, shot count or dataset) would train on other images than the run it continues."""
    from moram_ref.experiments.clip.data import few_shot

    make_coop_dataset(tmp_path, "dtd", n_classes=3, n_train=8)
    domain = load_domain(tmp_path, "dtd")
    first = few_shot(domain, 2, 0, tmp_path / "m")
    other = few_shot(domain, 2, 7, tmp_path / "m")
    assert first.tolist() != other.tolist()
    path = tmp_path / "m" / "dtd_2shot_seed0.json"
    good = path.read_text()
    record = json.loads(good)
    edits = {"copied from seed 7": (tmp_path / "m" / "dtd_2shot_seed7.json").read_text(),
             "indices edited": json.dumps(dict(record, indices=sorted(set(record["indices"][:-1]) | {
                 next(i for i in range(8 * 3) if i not in record["indices"])}))),
             "seed field edited": json.dumps(dict(record, seed=7)),
             "dataset field edited": json.dumps(dict(record, dataset="eurosat")),
             "shots field edited": json.dumps(dict(record, shots=3))}
    for what, text in edits.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=r"dtd_2shot_seed0\.json holds another subset than the 2-shot draw of "
                                             r"dtd with seed 0 .*delete it to draw again"):
            few_shot(domain, 2, 0, tmp_path / "m")
    path.write_text(good)
    assert few_shot(domain, 2, 0, tmp_path / "m").tolist() == first.tolist()


def test_a_names_file_that_lacks_a_dataset_is_refused(tmp_path):
    from moram_ref.experiments.clip.tvdata import read_classnames

    path = tmp_path / "names.json"
    path.write_text(json.dumps({"datasets": {"mnist": {"classnames": {"zscl": ["0", "1"]}}, "dtd": {"classnames": {}}}}))
    assert read_classnames(path, "zscl", keys=["mnist"]) == {"mnist": ["0", "1"]}
    with pytest.raises(ValueError, match=r"names\.json has no classnames list under field 'zscl' for datasets \['dtd'\]"):
        read_classnames(path, "zscl", keys=["mnist", "dtd"])


@pytest.mark.parametrize("content, section, message", [
    ({"dtd": []}, "templates", "non-empty list"),
    ({"mnist": ["no placeholder"]}, "templates", "('no placeholder') has no '{}' for the class name"),
    ({"mnist": ["x", "x", "y"]}, "classnames", "repeat ['x']"),
    ({"mnist": [3, 4]}, "classnames", "each with a visible character (item 0: 3)"),
    ({"mnist": ["0", "\u200b"]}, "classnames", "each with a visible character (item 1: '\\u200b')"),
    ({"mnist": ["Cat", "cat ", "dog"]}, "classnames", "repeat ['Cat', 'cat ']"),
    ({"mnist": ["a photo of {}.", "A  photo of {}."]}, "templates", "repeat ['a photo of {}.', 'A  photo of {}.']"),
    ({"mnist": ["0", "1"], "eurosta": ["a"]}, "classnames", "list for 'eurosta', which is no MTIL dataset: did you mean 'eurosat'?"),
    ({"mnist": ["0", "&nbsp;"]}, "classnames", "each with a visible character (item 1: '&nbsp;')"),
    ({"mnist": ["a photo of {{}}."]}, "templates", "has no '{}' for the class name (a '{{}}' is a literal brace pair)"),
    ({"mnist": ["{} {x}"]}, "templates", "is not a format string with one '{}' for the class name (KeyError"),
    ({"mnist": ["{} {}"]}, "templates", "is not a format string with one '{}' for the class name (IndexError"),
    ({"mnist": ["{} {"]}, "templates", "(ValueError"),
    ({"mnist": ["A photo of a {}.", "a photo of a {} ."]}, "templates", "repeat ['A photo of a {}.', 'a photo of a {} .']"),
    ({"mnist": ["a photo of a {:.3}."]}, "templates", "changes the class name it puts in (a precision such as {:.3} cuts it"),
    ({"mnist": ["a photo of a {!r}."]}, "templates", "changes the class name it puts in"),
    ({"mnist": ["<end_of_text>a", "<end_of_text>b", "c"]}, "classnames", "repeat ['<end_of_text>a', '<end_of_text>b']"),
    ([["0", "1"]], "classnames", "holds a JSON list, not an object of lists per dataset"),
    ({"datasets": []}, "classnames", "'datasets' is a JSON list"),
    ({"datasets": {"mnist": {"classnames": ["0"]}}}, "classnames", "datasets.mnist.classnames is a JSON list"),
])
def test_class_name_and_template_files_are_refused_not_bent(tmp_path, content, section, message):
    """An empty template list used to fall back to the default template, a template without {} gave every
    class the same prompt, and repeated names made classes indistinguishable: each is now refused."""
    from moram_ref.experiments.clip.tvdata import read_classnames

    path = tmp_path / "lists.json"
    path.write_text(json.dumps(content))
    field = "f" if isinstance(content, dict) and "datasets" in content else None
    with pytest.raises(ValueError, match=re.escape(message)):
        read_classnames(path, field, section)


def test_a_field_for_a_plain_file_and_lists_of_other_datasets(tmp_path):
    """--classnames-field on a plain {dataset: [..]} file used to be ignored without a word; the lists of
    datasets the run does not use are not checked (a ZSCL file may carry more)."""
    from moram_ref.experiments.clip.tvdata import read_classnames

    path = tmp_path / "names.json"
    path.write_text(json.dumps({"mnist": ["0", "1"], "cifar10": [""]}))
    with pytest.raises(ValueError, match=r"plain \{dataset: \[\.\.\]\} file: --classnames-field 'zscl' applies"):
        read_classnames(path, "zscl", keys=["mnist"])
    assert read_classnames(path, keys=["mnist"])["mnist"] == ["0", "1"]
    with pytest.raises(ValueError, match="cifar10"):
        read_classnames(path)  # without keys, every list is checked


def test_a_dataset_without_test_images_is_refused_before_any_work(tmp_path, capsys):
    """An empty ``test`` list would end the run after training its task (a division by zero in the accuracy)."""
    from moram_ref.cli import main

    for key in ("caltech101", "dtd"):
        make_coop_dataset(tmp_path / "data", key, n_classes=3)
    rewrite(split_file(tmp_path / "data", "dtd"), lambda s: s.update(test=[]))
    code = main(["clip", "--tiny", "--data-root", str(tmp_path / "data"), "--datasets", "caltech101", "dtd",
                 "--shots", "2", "--iterations", "1", "--batch", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "dtd has no test images" in err
    assert not (tmp_path / "out").exists()


def test_verify_decodes_a_sample_of_the_images(tmp_path):
    """A truncated image is found by --verify (named, with PIL's reason), not only when training reaches it."""
    make_coop_dataset(tmp_path, "dtd", n_classes=3)
    assert verify(tmp_path, ["dtd"])["dtd"]["unreadable_files_sampled"] == 0
    image = sorted((tmp_path / xtail_spec()["datasets"]["dtd"]["folder"]).rglob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:50])
    entry = verify(tmp_path, ["dtd"])["dtd"]
    assert not entry["ok"] and entry["unreadable_files_sampled"] == 1 and entry["first_unreadable"][0].startswith(str(image))


@pytest.mark.parametrize(("content", "message"), [
    ("{", r"split_zhou_DescribableTextures\.json is not a JSON split file \(JSONDecodeError"),
    ("[1]", r"split_zhou_DescribableTextures\.json holds a JSON list, not an object with 'train' and 'test'"),
    (None, r"train labels must be 0\.\.C-1 .*; missing \[3, 4, 5, 6, 7, 8, 9, 10, 11, 12\] \.\.\. "
           r"\(9999999999 in all, up to the label 10000000002\)$"),
    ("blank", r"train entry \['x\.jpg', 0, ' '\] is not \[image_path, int label, class name\] \(the name a string with a visible character"),
])
def test_a_split_file_that_is_not_one_is_named(tmp_path, content, message):
    """Not JSON, not an object, a label far beyond the others (named without listing ten billion labels), a
    blank class name: one error naming the file, in a run and in --verify (whose error names the file too)."""
    make_coop_dataset(tmp_path, "dtd", n_classes=3)
    path = split_file(tmp_path, "dtd")
    if content is None:
        rewrite(path, lambda s: s["train"].append(["x.jpg", 10**10 + 2, "far"]))
    elif content == "blank":
        rewrite(path, lambda s: s["train"].insert(0, ["x.jpg", 0, " "]))
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_domain(tmp_path, "dtd")
    report = verify(tmp_path, ["dtd"])
    assert not report["dtd"]["ok"] and re.search(message, report["dtd"]["error"])
    assert report["union"]["left_out"] == ["dtd"] and report["union"]["classes"] == 0


def test_a_damaged_manifest_is_named_and_can_be_drawn_again(tmp_path):
    from moram_ref.experiments.clip.data import few_shot

    make_coop_dataset(tmp_path, "dtd", n_classes=3)
    first = few_shot(load_domain(tmp_path, "dtd"), 2, 0, tmp_path / "m")
    path = tmp_path / "m" / "dtd_2shot_seed0.json"
    for damage in ('{"n_train": 9, "indi', '{"n_train": 9, "indices": [0, 99]}', "[]", '{"n_train": 9, "indices": []}',
                   '{"n_train": 9, "indices": [5, 5, 5]}'):
        path.write_text(damage)
        with pytest.raises(ValueError, match=r"manifest .*dtd_2shot_seed0\.json cannot be read .*delete it"):
            few_shot(load_domain(tmp_path, "dtd"), 2, 0, tmp_path / "m")
    path.unlink()
    assert few_shot(load_domain(tmp_path, "dtd"), 2, 0, tmp_path / "m").tolist() == first.tolist()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["dtd_2shot_seed0.json"]  # no temporary file left


def test_a_padded_template_is_a_template():
    from moram_ref.experiments.clip.tvdata import template_problem

    assert template_problem("a photo of a {:>60}.") is None and template_problem("{0} texture") is None
