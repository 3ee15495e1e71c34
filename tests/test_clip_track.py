"""The CLIP track on a tiny random open_clip model and generated image folders in CoOp format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("torchvision")

from moram_ref.experiments.clip import backbone  # noqa: E402
from moram_ref.experiments.clip.data import few_shot, load_domain, verify  # noqa: E402
from moram_ref.experiments.clip.synthetic import make_coop_dataset  # noqa: E402
from moram_ref.experiments.clip import synthetic  # noqa: E402
from moram_ref.experiments.clip.train import ClipSettings, evaluate, run_sequence  # noqa: E402
from moram_ref.torch import attach as A  # noqa: E402
from conftest import TEST_DEVICE  # noqa: E402

KEYS = ["caltech101", "dtd", "eurosat"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipdata")
    for i, key in enumerate(KEYS):
        make_coop_dataset(root, key, seed=i, gray=key == "dtd")
    return root


def test_split_attention_keeps_open_clip_outputs():
    torch.manual_seed(0)
    cfg = dict(embed_dim=32, vision_cfg={"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
               text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2})
    model = open_clip.CLIP(**cfg).double().eval()
    img, txt = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randint(0, 49408, (3, 16))
    with torch.no_grad():
        ref = model.encode_image(img), model.encode_text(txt)
    assert len(backbone.prepare(model)) == 4
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.encode_text(txt), ref[1], rtol=1e-12, atol=1e-12)


def test_targets_per_encoder_and_kind():
    model, *_ = backbone.tiny_clip()
    both = A.match_targets(model, backbone.target_regex())
    assert len(both) == 2 * 2 * 6  # 2 towers × 2 blocks × (q, k, v, out, c_fc, c_proj)
    img_attn = A.match_targets(model, backbone.target_regex(["image"], ["attention"]))
    assert len(img_attn) == 8 and all(n.startswith("visual.") and ".attn." in n for n in img_attn)
    with pytest.raises(ValueError, match="encoders"):
        backbone.target_regex(["audio"])


def test_attach_leaves_outputs_unchanged_and_only_atoms_train():
    model, _, tf, tok = backbone.tiny_clip()
    img = torch.randn(2, 3, 32, 32)
    # attach freezes the model, and torch picks other (1-ulp different) kernels for frozen LayerNorm
    # parameters; the reference is therefore taken from the frozen model
    model.requires_grad_(False)
    with torch.no_grad():
        before = model.encode_image(img)
    A.attach(model, ClipSettings().moram, backbone.target_regex())
    with torch.no_grad():
        assert torch.equal(model.encode_image(img), before)
    A.begin_task(model, torch.Generator().manual_seed(0))
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in A.trainable_parameters(model)}
    assert not model.logit_scale.requires_grad


def test_loaders_manifests_and_verify(data_root, tmp_path):
    d = load_domain(data_root, "eurosat")
    assert d.classnames[0] == "eurosat thing 0 satellite location"  # MoRAM's EuroSAT rewrite
    assert d.prompts[0] == "a centered satellite photo of the eurosat thing 0 satellite location."
    a = few_shot(d, 2, 42, tmp_path / "m1")
    b = few_shot(d, 2, 42, tmp_path / "m2")
    assert np.array_equal(a, b) and len(a) == 6
    assert np.array_equal(few_shot(d, 2, 42, tmp_path / "m1"), a)  # read back from the manifest
    assert not np.array_equal(few_shot(d, 2, 7, tmp_path / "m3"), a) or len(a) == len(d.train.labels)
    report = verify(data_root, KEYS + ["food101"])
    assert not report["food101"]["ok"] and "split_zhou_Food101.json" in report["food101"]["error"]
    assert report["dtd"]["found"] == {"train": 15, "test": 6} and report["dtd"]["missing_files_sampled"] == 0


def _run(data_root, out, method="moram", **kw):
    model, _, tf, tok = backbone.tiny_clip(seed=0)
    domains = [load_domain(data_root, k) for k in KEYS]
    settings = ClipSettings(method=method, shots=3, iterations=4, batch=4, eval_batch=5,
                            moram=ClipSettings().moram.__class__(atoms_per_task=4, top_k=4, temperature=0.1,
                                                                 threshold=0.2))
    return run_sequence(model.to(TEST_DEVICE), tok, tf, domains, settings, out, TEST_DEVICE, data_root=data_root,
                        log=lambda *_: None, **kw), model


@pytest.mark.parametrize("method", ["moram", "seq_lora", "moe_lora", "dense_moram", "zero_shot"])
def test_xtail_end_to_end_full_matrix(data_root, tmp_path, method):
    matrix, _ = _run(data_root, tmp_path / method, method)
    assert matrix.shape == (3, 3) and not np.isnan(matrix).any()
    assert ((0 <= matrix) & (matrix <= 100)).all()


def test_resume_and_eval_only_reproduce_the_matrix(data_root, tmp_path, monkeypatch):
    from moram_ref.experiments.clip import train as T

    full, _ = _run(data_root, tmp_path / "full")
    real = T.train_task

    def crash(model, tok, tf, domains, t, *args, **kwargs):
        if t == 2:
            raise RuntimeError("simulated crash")
        return real(model, tok, tf, domains, t, *args, **kwargs)

    monkeypatch.setattr(T, "train_task", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        _run(data_root, tmp_path / "crash")
    monkeypatch.setattr(T, "train_task", real)
    resumed, _ = _run(data_root, tmp_path / "crash", resume=True)
    np.testing.assert_array_equal(resumed, full)
    again, _ = _run(data_root, tmp_path / "crash", eval_only=True)
    np.testing.assert_array_equal(again, full)


def test_logits_do_not_depend_on_eval_batch_size(data_root, tmp_path):
    _, model = _run(data_root, tmp_path / "b")
    model.cpu()  # batch-size independence is a property of the float32 CPU path
    domains = [load_domain(data_root, k) for k in KEYS]
    tf = backbone.tiny_clip()[2]
    tok = backbone.tiny_clip()[3]
    a = evaluate(model, tok, tf, domains, ClipSettings(eval_batch=1), "cpu", data_root)
    b = evaluate(model, tok, tf, domains, ClipSettings(eval_batch=64), "cpu", data_root)
    np.testing.assert_array_equal(a, b)


def test_non_finite_class_scores_stop_the_evaluation(data_root, monkeypatch):
    """Overflow after the last adapted layer reaches no adapter's input check: the scores are checked before
    the argmax, which would otherwise count NaN rows as predictions of class 0."""
    from moram_ref.experiments.clip import train as T
    from moram_ref.shapes import NonFiniteError

    model, _, transform, tokenizer = backbone.tiny_clip()
    real = T._features

    def overflowed(model, images=None, tokens=None):
        out = real(model, images=images, tokens=tokens)
        return out if images is None else torch.where(torch.arange(len(out))[:, None] == 1, float("inf"), out)

    monkeypatch.setattr(T, "_features", overflowed)
    domains = [load_domain(data_root, k) for k in KEYS[:1]]
    with pytest.raises(NonFiniteError, match=r"the class scores of 1 of 4 test images of caltech101 contain NaN"):
        evaluate(model, tokenizer, transform, domains, ClipSettings(eval_batch=4), "cpu", data_root)


def test_cli_runs_and_prints_the_table(data_root, tmp_path, capsys):
    from moram_ref.cli import main

    out = tmp_path / "cli"
    assert main(["clip", "--tiny", "--data-root", str(data_root), "--out", str(out), "--datasets", *KEYS,
                 "--shots", "2", "--iterations", "2", "--batch", "4", "--methods", "moram", "zero_shot",
                 "--atoms-per-task", "4", "--top-k", "4"]) == 0
    printed = capsys.readouterr().out
    # a progress line at the end of every task, naming the method, task, step and loss
    for t, key in enumerate(KEYS, 1):
        assert re.search(rf"^moram task {t}/3 \({key}\) step 2/2 loss \d+\.\d{{4}}$", printed, re.M), printed
    assert "Transfer" in printed and (out / "moram" / "matrix.csv").is_file() and (out / "accuracy.png").is_file()
    assert (out / "activation_moram.png").is_file() and (out / "atoms_for_99_mass_moram.png").is_file()
    # report renders the run's summary.json again, as Markdown, with the numbers the run printed
    row = re.search(r"^MoRAM\s+(\S+)\s+(\S+)\s+(\S+)$", printed, re.M).groups()
    assert main(["report", "--table", "clip", str(out / "summary.json")]) == 0
    table = capsys.readouterr().out
    assert f"| MoRAM | {' | '.join(row)} | " in table and "| zero-shot CLIP | " in table, (row, table)
    assert f"X-TAIL ({', '.join(KEYS)}), a tiny random CLIP, 2-shot, 2 iterations of batch 4 per task" in table
    progress = json.loads((out / "moram" / "progress.json").read_text())
    assert len(progress["n99"]) == 3 and set(progress["maps"]) == {"after_task_1", "after_task_2", "after_task_3"}
    capsys.readouterr()
    # the synthetic sets are far smaller than the real ones: --verify reports each and exits non-zero
    assert main(["clip", "--verify", "--data-root", str(data_root), "--datasets", *KEYS]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("PROBLEM") == 3 and captured.err.count("\n") == 1 and "--verify" in captured.err
    assert "caltech101     PROBLEM (train: " in captured.out and " expected; test: " in captured.out  # says why
    synthetic.mark_synthetic(data_root, KEYS)  # what --make-synthetic leaves: sizes not compared, files still checked
    assert main(["clip", "--verify", "--data-root", str(data_root), "--datasets", *KEYS]) == 0
    assert "not compared (synthetic data)" in capsys.readouterr().out
    (data_root / synthetic.SYNTHETIC_MARKER).unlink()

    # a damaged method folder is named in one line before any work, and nothing in it changes
    argv = ["clip", "--tiny", "--data-root", str(data_root), "--datasets", *KEYS, "--shots", "2", "--iterations",
            "2", "--batch", "4", "--methods", "moram", "zero_shot", "--atoms-per-task", "4", "--top-k", "4"]
    ckpts = out / "moram" / "checkpoints"
    damaged = {"task1 in task2's place": (ckpts / "task2.safetensors", (ckpts / "task1.safetensors").read_bytes(),
                                          "task2.safetensors holds the adapters after task 1, not after task 2"),
               "progress not an object": (out / "moram" / "progress.json", b"[1, 2, 3]", "must hold a JSON object")}
    for what, (path, content, message) in damaged.items():
        original = path.read_bytes()
        path.write_bytes(content)
        for flag in ("--resume", "--eval-only"):
            snapshot = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
            assert main([*argv, "--out", str(out), flag]) == 2, (what, flag)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err, (what, flag, err)
            assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == snapshot, (what, flag)
        path.write_bytes(original)

    # a fresh re-run with the same settings starts from scratch: the earlier run's outputs go first, all at once
    # (an interrupted re-run would otherwise leave the old summary and later checkpoints beside new progress)
    from moram_ref.experiments.clip import train as clip_train

    seen = {}

    def interrupted(*args, **kwargs):
        seen["left"] = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        raise KeyboardInterrupt

    real = clip_train.run_sequence
    clip_train.run_sequence = interrupted
    try:
        assert main([*argv, "--out", str(out)]) == 130
    finally:
        clip_train.run_sequence = real
    printed = capsys.readouterr().out
    assert f"a fresh run into {out}: removed the earlier run's accuracy.png, activation_moram.png, " \
           "atoms_for_99_mass_moram.png, moram, summary.json, zero_shot" in printed, printed
    assert seen["left"] == [".lock", "config.json", "moram"], seen  # the method's folder made anew, empty


def test_aircraft_loader_reads_the_official_lists(tmp_path):
    from PIL import Image

    root = tmp_path / "fgvc_aircraft"
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("707-320\nA320\nF/A-18\n")
    rows = {"train": [("0001", "A320"), ("0002", "F/A-18"), ("0003", "707-320")], "test": [("0004", "A320")]}
    for split, items in rows.items():
        (root / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in items))
        for i, _ in items:
            Image.new("RGB", (8, 8)).save(root / "images" / f"{i}.jpg")
    d = load_domain(tmp_path, "aircraft")
    assert d.classnames == ["707-320", "A320", "F/A-18"] and list(d.train.labels) == [1, 2, 0]
    assert d.prompts[2] == "a photo of a F/A-18, a type of aircraft."
    assert verify(tmp_path, ["aircraft"])["aircraft"]["found"] == {"train": 3, "test": 1}


def test_mnist_loader_reads_torchvision_files(tmp_path):
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
    d = load_domain(tmp_path, "mnist")
    assert len(d.train.labels) == 6 and len(d.test.labels) == 3
    # MoRAM's X-TAIL code rewrites the class to 'number: "<class>"' and also uses the template
    # 'a photo of the number: "{}".' — the doubled prefix is the authors' prompt, reproduced as is
    assert d.classnames[0] == 'number: "0 - zero"' and d.prompts[1] == 'a photo of the number: "number: "1 - one"".'
    from moram_ref.experiments.clip.train import ImageList

    img, label = ImageList(d.test.paths, d.test.labels, backbone.tiny_clip()[2], tmp_path)[2]
    assert img.shape == (3, 32, 32) and label == 2  # grayscale converted to RGB


def _ddp_worker(rank, world_size, init_file, data_root, out, result, batch):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        matrix, model = _run_double(data_root, out, batch)
        if rank == 0:
            from moram_ref.torch.checkpoint import adapter_state

            torch.save({"matrix": torch.from_numpy(matrix), "state": adapter_state(model)}, result)
        torch.distributed.barrier()
        (Path(result).parent / f"done{rank}").touch()  # the work is over: see ddp_spawn.spawn(done=…)
    finally:
        torch.distributed.destroy_process_group()


def _run_double(data_root, out, batch=4):
    model, _, tf, tok = backbone.tiny_clip(seed=0)
    model = model.double()
    domains = [load_domain(data_root, k) for k in KEYS[:2]]
    cfg = ClipSettings().moram.__class__(atoms_per_task=4, top_k=4, temperature=0.1, threshold=0.2)
    settings = ClipSettings(shots=3, iterations=3, batch=batch, eval_batch=3, moram=cfg)
    return run_sequence(model, tok, tf, domains, settings, out, data_root=data_root), model


@pytest.mark.slow
@pytest.mark.cpu_only  # gloo on CPU processes, float64
@pytest.mark.parametrize("batch", [4, 3, 1], ids=["shares_2_2", "shares_2_1", "shares_1_0"])
def test_two_processes_reproduce_one(data_root, tmp_path, batch):
    """Each process encodes its share of the batch; unequal and empty shares must work (the all-gather
    needs equal shapes from every process)."""
    from ddp_spawn import spawn

    single, model = _run_double(data_root, tmp_path / "one", batch)
    from moram_ref.torch.checkpoint import adapter_state

    state = adapter_state(model)
    result = tmp_path / "two.pt"
    spawn(_ddp_worker, (2, str(tmp_path / "init"), data_root, tmp_path / "two", result, batch), done=tmp_path)
    got = torch.load(result)  # written by this test, tensors only
    np.testing.assert_array_equal(got["matrix"].numpy(), single)
    for k, v in state.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-9, atol=1e-11, msg=k)
