"""MTIL on a tiny open_clip model and generated torchvision-layout datasets (MNIST, DTD, EuroSAT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_data

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("torchvision")

from moram_ref.experiments.clip import backbone  # noqa: E402
from moram_ref.experiments.clip.train import ClipSettings, run_sequence  # noqa: E402
from moram_ref.experiments.clip.tvdata import load_mtil_domain, random_split_indices, read_classnames  # noqa: E402

KEYS = ["mnist", "dtd", "eurosat"]


@pytest.fixture(scope="module")
def tv_root(tmp_path_factory):
    from moram_ref.experiments.clip import synthetic

    root = tmp_path_factory.mktemp("tv")
    synthetic.make_torchvision_mnist(root)
    synthetic.make_torchvision_dtd(root)
    synthetic.make_torchvision_eurosat(root)
    synthetic.mark_synthetic(root, KEYS)  # as --make-synthetic leaves it: --verify compares no split sizes
    return root


def test_torchvision_layouts_and_the_80_20_rule(tv_root):
    m = load_mtil_domain(tv_root, "mnist")
    assert len(m.train.labels) == 12 and len(m.test.labels) == 6 and m.classnames[0] == "0 - zero"
    d = load_mtil_domain(tv_root, "dtd")
    assert d.classnames == ["banded", "dotted", "zigzagged"] and len(d.train.labels) == 12
    e = load_mtil_domain(tv_root, "eurosat")
    assert len(e.train.labels) == int(0.8 * 15) and len(e.test.labels) == 15 - int(0.8 * 15)
    tr, te = random_split_indices(15)
    assert sorted(tr.tolist() + te.tolist()) == list(range(15))
    # the same partition torch.utils.data.random_split makes
    sub = torch.utils.data.random_split(range(15), [12, 3], generator=torch.Generator().manual_seed(42))
    assert list(sub[0].indices) == tr.tolist() and list(sub[1].indices) == te.tolist()
    assert e.classnames == ["AnnualCrop", "Forest", "SeaLake"]


def test_class_names_from_a_file(tv_root, tmp_path):
    path = tmp_path / "names.json"
    path.write_text(json.dumps({"datasets": {"eurosat": {"classnames": {"zscl_mtil": ["annual crop land", "forest",
                                                                                     "sea or lake"]}}}}))
    names = read_classnames(path, "zscl_mtil")
    assert load_mtil_domain(tv_root, "eurosat", names["eurosat"]).classnames[2] == "sea or lake"
    with pytest.raises(ValueError, match="classnames-field"):
        read_classnames(path)


def _run(tv_root, out, **kw):
    model, _, tf, tok = backbone.tiny_clip()
    domains = [load_mtil_domain(tv_root, k) for k in KEYS]
    cfg = ClipSettings().moram.__class__(atoms_per_task=4, top_k=4, temperature=0.1, threshold=0.2)
    settings = ClipSettings(protocol="mtil", shots=None, iterations=3, batch=4, eval_batch=8, moram=cfg)
    return run_sequence(model, tok, tf, domains, settings, out, data_root=tv_root, log=lambda *_: None, **kw)


def test_mtil_full_shot_run_resume_and_eval_only(tv_root, tmp_path):
    full = _run(tv_root, tmp_path / "a")
    assert full.shape == (3, 3) and not np.isnan(full).any()
    again = _run(tv_root, tmp_path / "a", eval_only=True)
    np.testing.assert_array_equal(again, full)


def test_mtil_per_dataset_label_space_is_easier_than_the_union(tv_root):
    """Per-dataset scoring can only be right more often than scoring over every dataset's classes."""
    from moram_ref.experiments.clip.train import evaluate

    model, _, tf, tok = backbone.tiny_clip()
    domains = [load_mtil_domain(tv_root, k) for k in KEYS]
    own = evaluate(model, tok, tf, domains, ClipSettings(protocol="mtil"), "cpu", tv_root)
    union = evaluate(model, tok, tf, domains, ClipSettings(protocol="xtail"), "cpu", tv_root)
    assert (own >= union).all()


def test_cli_mtil(tv_root, tmp_path, capsys):
    from moram_ref.cli import main

    out = tmp_path / "cli"
    assert main(["clip", "--benchmark", "mtil", "--tiny", "--data-root", str(tv_root), "--datasets", *KEYS,
                 "--shots", "0", "--iterations", "2", "--batch", "4", "--out", str(out), "--methods", "moram",
                 "--atoms-per-task", "4", "--top-k", "4"]) == 0
    assert "MTIL" in capsys.readouterr().out
    assert main(["clip", "--benchmark", "mtil", "--verify", "--data-root", str(tv_root), "--datasets", *KEYS]) == 0


SHARED = shared_data("clip", "datasets.json")


def test_mtil_orders_and_metrics_on_a_hand_made_matrix():
    from moram_ref import metrics
    from moram_ref.experiments.clip.tvdata import mtil_spec

    orders = mtil_spec()["orders"]
    assert len(orders["1"]) == len(orders["2"]) == 11 and set(orders["1"]) == set(orders["2"])
    assert "cifar10" not in orders["1"]  # CIFAR10 is never part of the sequence, so never counted
    a = np.full((11, 11), 50.0)
    a[np.triu_indices(11, 1)] = 40.0  # not learned yet
    a[-1] = 70.0
    s = metrics.summary(a / 100)
    assert s["transfer"] == pytest.approx(0.40) and s["last"] == pytest.approx(0.70)
    assert s["average"] == pytest.approx(np.mean(a / 100))


def test_prompt_ensemble_averages_normalised_features():
    from moram_ref.experiments.clip.data import Domain, Split
    from moram_ref.experiments.clip.train import text_classifier

    model, _, _, tok = backbone.tiny_clip()
    empty = Split([], np.array([], dtype=int))
    d = Domain("x", ["cat", "dog"], "a photo of a {}.", empty, empty, ["a photo of a {}.", "a sketch of a {}."])
    ens = text_classifier(model, tok, [d], "cpu", ensemble=True)
    with torch.no_grad():
        f = torch.nn.functional.normalize(model.encode_text(tok(["a photo of a cat.", "a sketch of a cat."])), dim=-1)
    torch.testing.assert_close(ens[0], torch.nn.functional.normalize(f.mean(0), dim=-1))


@pytest.mark.skipif(not SHARED.is_file(), reason=f"the shared data ({SHARED}) is not present; set MORAM_SHARED_DATA to the folder that holds clip/ and llm-cl-benchmark-500/")
def test_zscl_names_and_template_ensemble_from_a_datasets_json(tv_root):
    names = read_classnames(SHARED, "zscl_mtil")
    templates = read_classnames(SHARED, "zscl_mtil_ensemble", "templates")
    from moram_ref.experiments.clip.tvdata import mtil_spec

    assert set(mtil_spec()["orders"]["1"]) <= set(names) and len(templates["dtd"]) > 1
    assert len(names["cifar100"]) == 100 and len(names["sun397"]) == 397
    d = load_mtil_domain(tv_root, "mnist", names["mnist"], eval_templates=templates["mnist"])
    assert d.classnames == names["mnist"] and len(d.eval_prompts()[0]) == len(templates["mnist"])


@pytest.mark.real_weights
@pytest.mark.skipif(not __import__("os").environ.get("MORAM_CLIP_PRETRAINED"),
                    reason="set MORAM_CLIP_PRETRAINED=openai (weights cached) on a machine that has them")
def test_real_vit_b16_split_attention_keeps_the_function():
    import os

    import open_clip

    ref, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=os.environ["MORAM_CLIP_PRETRAINED"])
    model, _, _, tok = backbone.load_clip("ViT-B-16", os.environ["MORAM_CLIP_PRETRAINED"])
    img, txt = torch.randn(2, 3, 224, 224), tok(["a photo of a cat."])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), ref.eval().encode_image(img), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(txt), ref.encode_text(txt), rtol=1e-4, atol=1e-5)


def test_verify_checks_the_class_names_and_templates_the_run_would_use(tv_root, tmp_path, capsys):
    """``--verify`` used to load torchvision's own names whatever --classnames-json said, so a names file
    that did not fit the data passed the check and failed the run."""
    from moram_ref.cli import main

    names, templates = tmp_path / "names.json", tmp_path / "templates.json"
    verify = ["clip", "--benchmark", "mtil", "--verify", "--data-root", str(tv_root), "--datasets", "dtd"]
    names.write_text(json.dumps({"dtd": ["banded", "dotted"]}))  # dtd has 3 classes
    assert main(verify + ["--classnames-json", str(names)]) == 2
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "2 class names given" in out
    names.write_text(json.dumps({"dtd": ["banded", "dotted", "zig-zag"]}))
    templates.write_text(json.dumps({"dtd": ["a photo of {}.", "{} texture."]}))
    assert main(verify + ["--classnames-json", str(names), "--templates-json", str(templates)]) == 0
    assert "\"classes\": 3, \"prompts_per_class\": 2" in capsys.readouterr().out
    templates.write_text(json.dumps({"mnist": ["a photo of {}."]}))  # no list for dtd: refused, naming the flag
    assert main(verify + ["--templates-json", str(templates)]) == 2
    assert "--templates-json: " in capsys.readouterr().err


def test_verify_compares_sizes_and_decodes_a_sample(tv_root, tmp_path, capsys):
    """Without the --make-synthetic marker the sizes are compared with mtil.json's; a broken image is named."""
    import shutil

    from moram_ref.cli import main
    from moram_ref.experiments.clip import synthetic
    from moram_ref.experiments.clip.data import SYNTHETIC_MARKER

    root = tmp_path / "tv"
    shutil.copytree(tv_root, root)
    (root / SYNTHETIC_MARKER).unlink()
    assert main(["clip", "--benchmark", "mtil", "--verify", "--data-root", str(root), "--datasets", "dtd"]) == 2
    assert "dtd            PROBLEM (train: 12 found, 1880 expected; test: 6 found, 1880 expected)" in capsys.readouterr().out
    (root / SYNTHETIC_MARKER).write_text("{}")  # not the marker --make-synthetic writes: sizes still compared
    assert main(["clip", "--benchmark", "mtil", "--verify", "--data-root", str(root), "--datasets", "dtd"]) == 2
    assert "dtd            PROBLEM (train: 12 found" in capsys.readouterr().out
    synthetic.mark_synthetic(root, ["dtd"])
    broken = sorted((root / "dtd").rglob("*.jpg"))[0]
    broken.write_bytes(b"not an image")
    assert main(["clip", "--benchmark", "mtil", "--verify", "--data-root", str(root), "--datasets", "dtd"]) == 2
    out = capsys.readouterr().out
    assert "PROBLEM (1 of " in out and "sampled images unreadable" in out and broken.name in out


def test_a_resume_with_an_edited_names_file_is_refused(tv_root, tmp_path, capsys):
    """config.json records the names file's sha256: a resume whose file was edited would rename classes; one
    whose file was moved (same content) continues."""
    from moram_ref.cli import main

    names = tmp_path / "names.json"
    names.write_text(json.dumps({"dtd": ["banded", "dotted", "zigzagged"]}))
    argv = ["clip", "--benchmark", "mtil", "--tiny", "--data-root", str(tv_root), "--datasets", "dtd", "--shots", "0",
            "--iterations", "1", "--batch", "4", "--methods", "moram", "--atoms-per-task", "2", "--top-k", "2",
            "--classnames-json", str(names), "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    names.write_text(json.dumps({"dtd": ["banded", "dotted", "zigzagged"]}, indent=4))  # re-indented: the same
    assert main(argv + ["--resume"]) == 0
    moved = names.rename(tmp_path / "moved.json")  # the same content elsewhere: the digest decides, not the path
    at = argv.index("--classnames-json") + 1
    assert main(argv[:at] + [str(moved)] + argv[at + 1:] + ["--resume"]) == 0
    moved.rename(names)
    names.write_text(json.dumps({"dtd": ["banded", "dotted", "zig-zag"]}))
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    assert "--classnames-json (the file's sha256): recorded " in capsys.readouterr().err
    config = tmp_path / "run" / "config.json"  # a run recorded before the digest was kept: compared without it
    record = json.loads(config.read_text())
    del record["settings"]["classnames_json_sha256"]
    config.write_text(json.dumps(record))
    assert main(argv + ["--resume"]) == 0


@pytest.mark.skipif(not SHARED.is_file(), reason=f"the shared CLIP facts ({SHARED}) are not present; set MORAM_SHARED_DATA to the folder that holds clip/ and llm-cl-benchmark-500/")
def test_mtil_expected_sizes_are_zscls():
    """What --verify compares with (mtil.json) equals the ZSCL split sizes recorded in the shared facts."""
    from moram_ref.experiments.clip.tvdata import mtil_spec

    facts = json.loads(SHARED.read_text())["datasets"]
    expected = mtil_spec()["expected"]
    assert set(expected) == set(mtil_spec()["orders"]["1"])
    for key, sizes in expected.items():
        zscl = facts[key]["counts"]["zscl_mtil"]
        assert sizes == {"train": zscl["train"], "test": zscl["test"]}, key
