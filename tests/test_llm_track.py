"""The LLM track on tiny random decoders and the benchmark data (the real data in ../shared when present,
else generated TRACE-shaped tasks): masks, tokenizer, generation, complete runs, resume after a crash,
two processes equal to one (also when a process's share of a batch is empty), progress lines."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ddp_spawn import spawn  # noqa: E402

from conftest import TEST_DEVICE  # noqa: E402
from moram_ref.config import MoRAMConfig  # noqa: E402
from moram_ref.experiments.llm import backbones, data  # noqa: E402
from moram_ref.experiments.llm.generate import generate  # noqa: E402
from moram_ref.experiments.llm.train import Dist, LLMSettings, run_sequence  # noqa: E402

DATA = shared_data("llm-cl-benchmark-500")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data ({DATA}) is not present; set MORAM_SHARED_DATA to the folder that holds clip/ and llm-cl-benchmark-500/")
TRACE_NAMES = ("C-STANCE", "FOMC", "ScienceQA", "Py150", "20Minuten")


@pytest.fixture(scope="module")
def trace_root(tmp_path_factory):
    """The real benchmark data when present, else generated tasks in its layout (the tests never skip)."""
    if DATA.is_dir():
        return DATA
    return data.write_trace_shaped(tmp_path_factory.mktemp("trace"), TRACE_NAMES, n_train=8, n_test=4)
CFG = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.03, threshold=0.2, scale=2.0, dropout=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["the quick brown fox jumps over the lazy dog", "Answer: positive negative neutral 0 1 2 3",
             "def f(x): return x + 1"] * 20
    return backbones.build_tokenizer(texts, vocab_size=300)


def test_tokenizer_is_local_and_round_trips(tokenizer):
    ids = tokenizer("the lazy fox")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the lazy fox"


def test_the_tokenizer_of_a_run_folder_is_written_whole_and_a_damaged_one_named(tmp_path):
    """The tiny model's tokenizer goes into the run folder through a hidden sibling and a rename (nothing
    half-written after a kill); one that no longer loads is a one-line error saying how to get it back."""
    from types import SimpleNamespace

    from moram_ref.experiments.cliargs import UsageError
    from moram_ref.experiments.llm.run import build

    texts = ["the quick brown fox jumps over the lazy dog", "Answer: positive negative"] * 10
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{")  # what an in-place write, killed, could leave
    backbones.build_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tokenizer")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]  # no hidden folder left behind
    args = SimpleNamespace(bf16=False, device="cpu", model=None, tiny="llama", gradient_checkpointing=False)
    _, tok = build(args, [], tmp_path, seed=0)
    assert tok.decode(tok("the lazy fox")["input_ids"], skip_special_tokens=True) == "the lazy fox"
    path = tmp_path / "tokenizer" / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UsageError, match=r"tokenizer holds a tokenizer that does not load \(JSONDecodeError.*remove that"):
        build(args, [], tmp_path, seed=0)
    path.write_text('{"version": "1.0"}')  # valid JSON, not a tokenizer
    with pytest.raises(UsageError, match="tokenizer holds a tokenizer that does not load"):
        build(args, [], tmp_path, seed=0)
    mask = os.umask(0o022)
    try:  # the folder gets the umask's mode, as the run folder's others (mkdtemp alone gives 0700)
        backbones.build_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "again")
    finally:
        os.umask(mask)
    assert (tmp_path / "again").stat().st_mode & 0o777 == 0o755


def test_answer_only_loss_mask_and_truncation_report(tokenizer):
    rows = [{"prompt": "the quick brown fox", "answer": "positive"},
            {"prompt": "the quick brown fox " * 30, "answer": "negative " * 20}]
    enc = data.encode_examples(tokenizer, rows, max_prompt=16, max_answer=5)
    p_len = len(tokenizer("the quick brown fox")["input_ids"])
    a_ids = tokenizer("positive", add_special_tokens=False)["input_ids"]
    assert enc.labels[0] == [-100] * p_len + a_ids + [tokenizer.eos_token_id]
    assert enc.input_ids[0][p_len:] == a_ids + [tokenizer.eos_token_id]
    assert enc.truncated == {"prompt": 1, "answer": 1}
    assert len(enc.input_ids[1]) == 16 + 5 + 1 and enc.input_ids[1][0] == tokenizer.bos_token_id


@pytest.mark.parametrize("family", backbones.FAMILIES)
def test_batched_generation_equals_one_by_one(tokenizer, family):
    model = backbones.tiny_model(family, len(tokenizer), seed=0, dtype=torch.float64).to(TEST_DEVICE)
    prompts = ["the quick", "the quick brown fox jumps over", "def f(x):", "Answer: 0 1 2 3 positive", "lazy"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    single = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_missing_split_is_a_clear_error(tmp_path):
    (tmp_path / "T").mkdir()
    (tmp_path / "T" / "test.json").write_text("[]")
    with pytest.raises(data.MissingSplitError, match="train.json"):
        data.load_sequence(tmp_path, ["T"])


def _tiny_run(tmp_path, sequence, method="moram", names=None, root=DATA, cfg=CFG, **overrides):
    tasks, skipped = data.load_sequence(root, names or sequence, skip_missing=True, max_train=8, max_test=4)
    tok_dir = tmp_path / "tok"
    texts = [r["prompt"] + " " + r["answer"] for t in tasks for r in t.train]
    if (tok_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        tok = backbones.build_tokenizer(texts, vocab_size=400, out_dir=tok_dir)
    model = backbones.tiny_model("llama", len(tok), seed=0, dtype=torch.float64).to(TEST_DEVICE)
    settings = LLMSettings(**{**dict(method=method, epochs=1, batch=8, micro_batch=2, max_prompt=96, max_answer=16,
                                     max_new_tokens=6, eval_batch=4, moram=cfg), **overrides})
    return tasks, model, tok, settings


@pytest.mark.parametrize("method", ["moram", "olora", "seq_lora", "dense_moram", "zero_shot"])
def test_trace_shaped_run_gives_a_full_matrix(tmp_path, trace_root, method):
    names = ["C-STANCE", "Py150", "20Minuten"]
    tasks, model, tok, settings = _tiny_run(tmp_path, None, method, names, trace_root)
    matrix = run_sequence(model, tok, tasks, settings, tmp_path / "run", log=lambda *_: None)
    assert matrix.shape == (3, 3)
    assert not np.isnan(matrix[np.tril_indices(3)]).any() and np.isnan(matrix[np.triu_indices(3, 1)]).all()
    assert (tmp_path / "run" / "predictions" / "after_task3" / "Py150.json").is_file()
    if method != "zero_shot":
        assert (tmp_path / "run" / "checkpoints" / "task3.safetensors").is_file()


@needs_data
def test_olora_standard_sequence_run(tmp_path):
    tasks, model, tok, settings = _tiny_run(tmp_path, "olora-1", "moram")
    matrix = run_sequence(model, tok, tasks, settings, tmp_path / "run", log=lambda *_: None)
    assert matrix.shape == (4, 4) and not np.isnan(matrix[-1]).any()


def test_resume_after_a_crash_reproduces_the_matrix(tmp_path, trace_root, monkeypatch):
    from moram_ref.experiments.llm import train as T

    names = ["C-STANCE", "FOMC", "ScienceQA"]
    tasks, model, tok, settings = _tiny_run(tmp_path, None, "moram", names, trace_root)
    full = run_sequence(model, tok, tasks, settings, tmp_path / "full", log=lambda *_: None)

    real = T.train_task

    def crash_on_third(model, tokenizer, task, t, *args, **kwargs):
        if t == 2:
            raise RuntimeError("simulated crash")
        return real(model, tokenizer, task, t, *args, **kwargs)

    tasks, model, tok, settings = _tiny_run(tmp_path, None, "moram", names, trace_root)
    monkeypatch.setattr(T, "train_task", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated"):
        run_sequence(model, tok, tasks, settings, tmp_path / "crashed", log=lambda *_: None)
    monkeypatch.setattr(T, "train_task", real)
    assert json.loads((tmp_path / "crashed" / "progress.json").read_text())["tasks_done"] == 2
    tasks, model, tok, settings = _tiny_run(tmp_path, None, "moram", names, trace_root)  # a fresh process
    resumed = run_sequence(model, tok, tasks, settings, tmp_path / "crashed", resume=True, log=lambda *_: None)
    np.testing.assert_array_equal(resumed, full)
    tasks, model, tok, settings = _tiny_run(tmp_path, None, "moram", names, trace_root)
    again = run_sequence(model, tok, tasks, settings, tmp_path / "crashed", eval_only=True, log=lambda *_: None)
    np.testing.assert_array_equal(again, full)


def _ddp_worker(rank, world, init_file, tmp, result_file, root, fsdp, overrides):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tasks, model, tok, settings = _tiny_run(Path(tmp), None, "moram", ["C-STANCE", "FOMC"], Path(root),
                                                fsdp=fsdp, **overrides)
        matrix = run_sequence(model, tok, tasks, settings, Path(tmp) / ("fsdp" if fsdp else "ddp"),
                              dist=Dist(rank, world))
        if rank == 0:
            from moram_ref.torch.checkpoint import adapter_state

            torch.save({"matrix": torch.from_numpy(matrix), "state": adapter_state(model)}, result_file)
        torch.distributed.barrier()  # nobody tears the group down while another process still works
        (Path(tmp) / f"done{rank}").touch()  # the work is over: see ddp_spawn.spawn(done=…)
    finally:
        torch.distributed.destroy_process_group()


# (batch, micro-batch, samples per task): even shares; and 5 samples in batches of 4, micro-batches of 3 —
# the second batch holds one sample, so one of the two processes gets an empty share
SHARES = {"even": dict(batch=8, micro_batch=2, n=8), "empty_share": dict(batch=4, micro_batch=3, n=5)}


@pytest.mark.slow
@pytest.mark.cpu_only  # gloo on CPU processes, float64
@pytest.mark.parametrize("shares", sorted(SHARES))
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_reproduce_one(tmp_path, trace_root, fsdp, shares):
    """The paper's dropout 0.1 included: micro-batch m's dropout masks depend on m, not on the process."""
    sizes = SHARES[shares]
    root = data.write_trace_shaped(tmp_path / "data", ("C-STANCE", "FOMC"), n_train=sizes["n"], n_test=3) \
        if shares == "empty_share" else trace_root
    overrides = dict(batch=sizes["batch"], micro_batch=sizes["micro_batch"])
    cfg = replace(CFG, dropout=0.1)
    tasks, model, tok, settings = _tiny_run(tmp_path, None, "moram", ["C-STANCE", "FOMC"], root, cfg, **overrides)
    assert all(len(t.train) == sizes["n"] for t in tasks)
    single = run_sequence(model, tok, tasks, settings, tmp_path / "one")
    from moram_ref.torch.checkpoint import adapter_state

    single_state = adapter_state(model)
    result = tmp_path / "ddp.pt"
    spawn(_ddp_worker, (2, str(tmp_path / "init"), str(tmp_path), str(result), str(root), fsdp,
                        dict(overrides, cfg=cfg)), done=tmp_path)
    got = torch.load(result)  # written by this test, tensors only
    np.testing.assert_array_equal(got["matrix"].numpy(), single)
    for k, v in single_state.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-12, atol=1e-14, msg=k)


def test_cli_prints_progress_lines(tmp_path, capsys):
    import re

    from moram_ref.cli import main

    root = data.write_trace_shaped(tmp_path / "data", ("C-STANCE", "FOMC"), n_train=6, n_test=2)
    assert main(["llm", "--data-root", str(root), "--out", str(tmp_path / "out"), "--tiny", "llama", "--skip-missing",
                 "--epochs", "1", "--batch", "4", "--micro-batch", "2", "--max-new-tokens", "2",
                 "--atoms-per-task", "2", "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    for t, name in enumerate(("C-STANCE", "FOMC"), 1):  # 6 samples in batches of 4: 2 steps per task
        assert re.search(rf"^moram task {t}/2 \({name}\) step 2/2 loss \d+\.\d{{4}}$", printed, re.M), printed
        assert f"after task {t}/2 ({name})" in printed
    assert (tmp_path / "out" / "scores.png").is_file()  # the score matrices, one panel per method
    # report renders the run's summary.json again, as Markdown, with the same OP and BWT as the printed table
    op, bwt = re.search(r"^MoRAM\s+(-?\d+\.\d)\s+(-?\d+\.\d)\s", printed, re.M).groups()  # one decimal, as report
    assert main(["report", "--table", "llm", str(tmp_path / "out" / "summary.json")]) == 0
    table = capsys.readouterr().out
    assert f"| MoRAM | {op} | {bwt} | " in table and "| after \\ on | C-STANCE | FOMC |" in table
    assert "a tiny random llama decoder" in table and "Seed 1234." in table


@pytest.mark.real_weights
@pytest.mark.skipif(not os.environ.get("MORAM_LLM_PATH"), reason="set MORAM_LLM_PATH to a local causal-LM folder")
def test_real_model_attaches_and_generates():
    model, tok = backbones.load_pretrained(os.environ["MORAM_LLM_PATH"])
    from moram_ref.torch import attach as A

    A.attach(model, CFG, backbones.ATTENTION_TARGETS)
    assert generate(model, tok, ["Hello"], max_new_tokens=4)


def test_bf16_on_a_cpu_is_said_not_silent():
    from types import SimpleNamespace

    from moram_ref.experiments.llm.run import cpu_bf16_note

    assert "several times slower than in float32" in cpu_bf16_note(SimpleNamespace(bf16=True, device="cpu"))
    assert cpu_bf16_note(SimpleNamespace(bf16=False, device="cpu")) is None
    assert cpu_bf16_note(SimpleNamespace(bf16=True, device="cuda:0")) is None


def test_make_synthetic_gives_a_run_without_the_benchmark(tmp_path, capsys):
    """``llm --make-synthetic DIR`` writes the 8 TRACE tasks (marked, so writing them again is allowed) and a
    tiny run on them completes: the README's CPU pipeline check for users without the data."""
    from moram_ref.cli import main

    for _ in range(2):  # the second time over its own marked output
        assert main(["llm", "--make-synthetic", str(tmp_path / "syn")]) == 0
    root = tmp_path / "syn" / "trace"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(data.SEQUENCES["trace"])
    assert len(json.loads((root / "FOMC" / "train.json").read_text())) == data.SYNTHETIC_TRAIN
    assert main(["llm", "--tiny", "llama", "--data-root", str(root), "--out", str(tmp_path / "out"), "--max-train", "4",
                 "--max-test", "2", "--epochs", "1", "--batch", "4", "--micro-batch", "4", "--max-new-tokens", "2",
                 "--atoms-per-task", "2", "--top-k", "2"]) == 0
    assert "after task 8/8 (20Minuten)" in capsys.readouterr().out
