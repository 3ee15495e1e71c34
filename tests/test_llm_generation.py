"""MoRAM layers in Hugging Face generation: a static cache and a compiled forward give the same greedy
tokens as eager decoding; the throughput helper times every mode on the same prompts."""

from __future__ import annotations

import copy

import pytest
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.experiments.llm import backbones
from moram_ref.experiments.llm.generate import generate, generation_kwargs
from moram_ref.experiments.llm.throughput import generation_throughput, merge_random_lora
from moram_ref.torch import attach as A

CFG = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.03, threshold=0.2, scale=2.0)
PROMPTS = ["the quick", "the quick brown fox jumps over", "def f(x):", "lazy"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["the quick brown fox jumps over the lazy dog", "def f(x): return x + 1", "Answer: 0 1 2 3"] * 20
    return backbones.build_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def models(tokenizer):
    plain = backbones.tiny_model("llama", len(tokenizer), seed=0)
    moram = copy.deepcopy(plain)
    A.attach(moram, CFG, backbones.ATTENTION_TARGETS)
    gen = torch.Generator().manual_seed(0)
    for t in range(2):  # one frozen task and one current task: both blocks of the bank route
        A.begin_task(moram, gen)
        with torch.no_grad():
            for p in A.trainable_parameters(moram):
                if p.shape[-1] == CFG.atoms_per_task:  # the values
                    p.normal_(0.0, 3.0, generator=gen)
        if t == 0:
            A.end_task(moram)
    return plain, moram.eval()


@pytest.mark.slow  # inductor compiles the decoding step: ~15 s of CPU
def test_static_cache_and_compiled_forward_equal_eager(tokenizer, models):
    plain, moram = models
    eager = generate(moram, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    assert eager != generate(plain, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)  # MoRAM changes the output
    torch._dynamo.reset()
    assert generate(moram, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, mode="static") == eager
    assert generate(moram, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, mode="compiled") == eager


def test_compiled_mode_compiles_only_decoding_steps_over_a_static_cache(models):
    """CUDA graphs need the cache at fixed addresses: made by the eager prefill, marked static by transformers.
    A backend that records what it is asked to compile sees decoding steps (one new token per row) only."""
    _, moram = models
    compiled: list[list[tuple]] = []

    def record(gm, example_inputs):
        compiled.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dtype == torch.long])
        return gm.forward

    torch._dynamo.reset()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    extra = generation_kwargs(moram, "compiled", backend=record)
    assert extra["compile_config"].fullgraph and extra["cache_implementation"] == "static"
    with torch.no_grad():
        out = moram.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4,
                             do_sample=False, pad_token_id=0, return_dict_in_generate=True, **extra)
    assert compiled, "nothing was compiled"
    assert all((2, 1) in shapes and (2, 4) not in shapes for shapes in compiled), compiled  # never the prefill
    cache = out.past_key_values.layers[0]
    assert getattr(cache.keys, "_dynamo_static_input_type", None) is not None  # fixed address: CUDA graphs may replay
    assert generation_kwargs(moram, "static") == {"cache_implementation": "static", "disable_compile": True}
    assert generation_kwargs(moram, "eager") == {}


def test_throughput_helper_times_every_mode_on_the_same_tokens(tokenizer, models):
    plain, moram = models
    lora = copy.deepcopy(plain)
    assert merge_random_lora(lora, backbones.ATTENTION_TARGETS, rank=4) == 8
    ids = torch.randint(3, len(tokenizer), (2, 5), generator=torch.Generator().manual_seed(1))
    res = {name: generation_throughput(m, None, ids, 4, mode, repeat=1, backend="aot_eager")
           for name, m, mode in (("plain", plain, "eager"), ("lora", lora, "eager"),
                                 ("moram_eager", moram, "eager"), ("moram_compiled", moram, "compiled"))}
    for r in res.values():
        assert r["new_tokens"] == 8 and r["sequences"].shape == (2, 4) and r["new_tokens_per_s"] > 0
    assert torch.equal(res["moram_eager"]["sequences"], res["moram_compiled"]["sequences"])
    text = generation_throughput(moram, tokenizer, PROMPTS, 3, "static", repeat=1)
    assert text["prompts"] == 4 and text["new_tokens"] == 12


def test_generation_errors(tokenizer, models):
    _, moram = models
    with pytest.raises(ValueError, match="mode must be one of"):
        generate(moram, tokenizer, PROMPTS, mode="fast")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        generate(moram, tokenizer, PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        generation_kwargs(moram, "compiled", backend="nope")
    with pytest.raises(ValueError, match="compile_mode must be None or one of"):
        generation_kwargs(moram, "compiled", compile_mode="bogus")
    with pytest.raises(ValueError, match="with batch, length >= 1"):
        generation_throughput(moram, None, torch.ones(2, 0, dtype=torch.long), 2)
    moram.train()
    generation_throughput(moram, None, torch.tensor([[5, 6]]), 1, repeat=1)
    assert moram.training  # the caller's mode is restored
    moram.eval()
    with pytest.raises(ValueError, match="max_new_tokens"):
        generation_throughput(moram, tokenizer, PROMPTS, 0)
    with pytest.raises(ValueError, match="int64"):
        generation_throughput(moram, None, torch.ones(2, 3), 2)


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_non_finite_next_token_scores_stop_generation(tokenizer, models, mode):
    """Greedy decoding of NaN scores would pick a token from garbage and be scored as an answer: a logits
    processor notes any NaN/inf on the device and generation stops with NonFiniteError after the batch."""
    from moram_ref.shapes import NonFiniteError

    plain, _ = models
    model = copy.deepcopy(plain)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        if calls["n"] >= 3:
            output = output.clone()
            output[..., 7] = float("nan")  # one token's score
        return output

    model.lm_head.register_forward_hook(poison)  # the third decoding step's scores hold NaN
    with pytest.raises(NonFiniteError, match=r"next-token scores contain NaN or inf while generating answers"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, mode=mode)
    assert generate(plain, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, mode=mode)  # untouched: no alarm


def test_hidden_states_the_final_norm_cannot_normalise_are_refused(tokenizer, models):
    """Hidden states above √(float32 max) make the RMS norm's variance inf and its output zeros: the logits
    are finite but flat, which no NaN check sees. guard_final_norm refuses them before the norm."""
    from moram_ref.shapes import NonFiniteError

    plain, _ = models
    model = copy.deepcopy(plain)
    assert backbones.guard_final_norm(model)
    ids = torch.tensor([[5, 6, 7]])
    model(input_ids=ids)  # ordinary hidden states pass
    model.model.layers[-1].register_forward_hook(
        lambda module, inputs, output: (output[0] * 1e21, *output[1:]) if isinstance(output, tuple) else output * 1e21)
    with pytest.raises(NonFiniteError, match=r"hidden states entering the decoder's final norm .* above 1\.8e\+19"):
        model(input_ids=ids)
