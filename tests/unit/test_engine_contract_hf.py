"""The rollout-engine contract against the Hugging Face engine on CPU (tiny random model)."""

from __future__ import annotations

import pytest
import torch

from rollout.engine import SamplingParams
from rollout.hf_engine import HFEngine
from tests import engine_contract as contract


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir, dtype="float32", batch_size=4)


@pytest.mark.parametrize("check", [contract.check_shapes_and_order, contract.check_logprobs_match_scoring,
                                   contract.check_seeded_determinism, contract.check_greedy_is_argmax,
                                   contract.check_max_tokens_truncates], ids=lambda f: f.__name__)
def test_contract(engine, check):
    check(engine, engine.tokenizer)


def test_weight_update_changes_outputs(engine):
    named = [(n, p.detach().clone()) for n, p in engine.model.named_parameters()]
    contract.check_weight_update_changes_outputs(engine, engine.tokenizer, named)


def test_unknown_weight_name_is_an_error(engine):
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        engine.load_weights([("nope", torch.zeros(1))])


def test_gpu_weight_transports_are_refused_with_the_fix(engine):
    assert engine.tensor_parallel_size == 1  # one rank if it ever joined an NCCL group
    calls = [lambda: engine.init_weight_group("127.0.0.1", 1, 1, 2), lambda: engine.receive_broadcast([]),
             lambda: engine.load_ipc_bucket({"nbytes": 0, "tensors": []}, {})]
    for call in calls:
        with pytest.raises(NotImplementedError, match="only through the object store.*weight_transport=object_store"):
            call()


def test_stop_string_ends_the_response(engine):
    tok = engine.tokenizer
    prompts = contract.prompts_of(tok)
    free = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=3))
    # pick a character the free run produced, then ask to stop at it
    text = tok.decode(free[0].response_ids)
    stop = next(ch for ch in text if ch.isalnum())
    outs = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=3, stop=[stop]))
    for o in outs:
        decoded = tok.decode(o.response_ids)
        if o.finish_reason == "stop" and o.response_ids[-1] != tok.eos_token_id:
            assert decoded.endswith(stop) or stop in decoded[-8:]
            assert stop not in tok.decode(o.response_ids[:-1])
    assert any(o.finish_reason == "stop" for o in outs)


@pytest.fixture(scope="module")
def hostile_engine(tiny_model_dir, tmp_path_factory):
    """The tiny model with a generation_config.json that turns on every sampling default a checkpoint can
    ship (Qwen2.5-Instruct ships a repetition penalty): none of it may act, since the behaviour logprobs
    must be those of the distribution the engine really samples from."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path_factory.mktemp("hostile") / "model"
    shutil.copytree(tiny_model_dir, path)
    tok_ids = GenerationConfig.from_pretrained(tiny_model_dir).to_diff_dict()
    GenerationConfig(**{k: v for k, v in tok_ids.items() if k.endswith("token_id")}, do_sample=True,
                     temperature=0.2, top_k=3, top_p=0.5, min_p=0.3, repetition_penalty=3.0,
                     no_repeat_ngram_size=1).save_pretrained(path)
    return HFEngine(str(path), dtype="float32", batch_size=4)


def _raw_logprobs(engine, prompt: list[int], response: list[int]) -> torch.Tensor:
    """(len(response), V) log-softmax of the raw logits at each response position (teacher forcing)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) + len(response) - 1]
    return torch.log_softmax(logits.float(), -1)


def test_checkpoint_generation_defaults_do_not_act_on_greedy(hostile_engine):
    prompts = contract.prompts_of(hostile_engine.tokenizer)
    for o in hostile_engine.generate(prompts, SamplingParams(n=1, max_new_tokens=8, greedy=True)):
        raw = _raw_logprobs(hostile_engine, prompts[o.prompt_index], o.response_ids)
        assert raw.argmax(-1).tolist() == o.response_ids  # no repetition penalty, no n-gram ban


def test_checkpoint_generation_defaults_do_not_act_on_sampling(hostile_engine):
    contract.check_logprobs_match_scoring(hostile_engine, hostile_engine.tokenizer, temperature=1.0)
    prompts = contract.prompts_of(hostile_engine.tokenizer)
    outs = hostile_engine.generate(prompts, SamplingParams(n=4, max_new_tokens=8, temperature=1.0, seed=0))
    ranks = []
    for o in outs:
        raw = _raw_logprobs(hostile_engine, prompts[o.prompt_index], o.response_ids)
        ranks += (raw > raw.gather(-1, torch.tensor(o.response_ids)[:, None])).sum(-1).tolist()
    # the random model's next-token distribution is nearly flat over ~70 tokens: with top_k=3 / top_p=0.5 /
    # min_p=0.3 in force every sampled token would rank 0-2; untruncated, most rank far lower
    assert max(ranks) >= 10 and sum(r >= 3 for r in ranks) > len(ranks) // 2


def _chi2_bound(df: int, z: float = 4.75) -> float:
    """Wilson–Hilferty upper quantile of χ²(df) at the normal quantile z (4.75: one false alarm in ~10⁶ runs)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * c ** 0.5) ** 3


@pytest.mark.parametrize("top_p", [1.0, 0.7])
@pytest.mark.parametrize("vocab,block", [(40, 256), (40, 8), (45, 8)], ids=["one-block", "blocks", "padded"])
def test_sampler_draws_the_truncated_softmax(top_p, vocab, block):
    """The decode loop's two-level inverse-CDF draw (one block, several, and a last block padded with zeros):
    token frequencies over many draws fit softmax(z) restricted to the nucleus (χ² goodness of fit at a
    one-in-a-million false-alarm level), and no token outside it is drawn."""
    from rollout.hf_engine import _sample, nucleus

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, vocab, generator=g)  # top-p 0.7 keeps 12-15 tokens of these
    draws = 40_000
    with torch.random.fork_rng():
        torch.manual_seed(1)
        tokens = torch.cat([_sample(logits.expand(1000, -1), top_p, block) for _ in range(draws // 1000)])
    kept = nucleus(torch.softmax(logits, -1), top_p)[0]
    expected = kept / kept.sum() * draws
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert len(counts) == vocab
    assert counts[kept == 0].sum() == 0
    cells = expected >= 5  # χ² needs ≥ 5 expected per cell; the rest pooled into one cell
    stat = ((counts[cells] - expected[cells]) ** 2 / expected[cells]).sum()
    if (rest := expected[~cells & (kept > 0)].sum()) > 0:
        stat += (counts[~cells & (kept > 0)].sum() - rest) ** 2 / rest
    df = int(cells.sum()) + (1 if rest > 0 else 0) - 1
    assert stat < _chi2_bound(df), (float(stat), df)


def test_sampler_never_draws_a_zero_probability_token():
    """One token of probability 1 per row, at the vocabulary's first and last entries and inside a middle
    block, with zero-mass blocks on either side: the draw is that token every time."""
    from rollout.hf_engine import _sample

    logits = torch.full((3, 45), -1e4)
    logits[0, 0] = logits[1, 44] = logits[2, 17] = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(200):
            assert _sample(logits, 1.0, 8).tolist() == [0, 44, 17]


def test_nucleus_keeps_what_transformers_top_p_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    from rollout.hf_engine import nucleus

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 300, generator=g) * 3.0
    for top_p in (0.05, 0.5, 0.9, 0.999):
        theirs = TopPLogitsWarper(top_p)(None, logits.clone()) > -float("inf")
        ours = nucleus(torch.softmax(logits, -1), top_p) > 0
        assert torch.equal(ours, theirs), top_p


def test_rows_that_end_early_leave_the_batch_exactly(tiny_model_dir):
    """With a frequent token made an end token, rows finish at different steps and leave the batch: each
    response stops at its first end token, and every logprob still equals teacher-forced scoring."""
    engine = HFEngine(tiny_model_dir, dtype="float32", batch_size=6)
    prompts = contract.prompts_of(engine.tokenizer)
    free = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=8, seed=4))
    counts = torch.bincount(torch.tensor([t for o in free for t in o.response_ids]))
    engine.eos_ids = [int(counts.argmax())]
    outs = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=8, seed=4))
    lengths = {len(o.response_ids) for o in outs}
    assert len(lengths) > 1 and any(o.finish_reason == "stop" for o in outs)
    for o in outs:
        ends = [i for i, t in enumerate(o.response_ids) if t in engine.eos_ids]
        assert ends == ([len(o.response_ids) - 1] if o.finish_reason == "stop" else [])
    scored = engine.score([prompts[o.prompt_index] for o in outs], [o.response_ids for o in outs], 1.0)
    for o, s in zip(outs, scored):
        assert torch.allclose(torch.tensor(o.logprobs), torch.tensor(s), atol=1e-4)


def test_bf16_autocast_engine_matches_the_trainer_within_bf16_rounding(tiny_model_dir):
    """model.dtype=bfloat16 on a CPU: the engine samples with its body under bf16 autocast (fp32 weights and
    head), and the trainer's PolicyModule, under the same precision, scores those tokens within bf16 rounding,
    while both differ from fp32 by more than fp32 noise (autocast is really on). Error model: each side
    rounds the body's activations to bf16 (unit roundoff u = 2^-8) in a different order (incremental decode
    vs one full pass), so a logit z moves by a few u·|z| through the model's two layers; the log-softmax
    gap is at most twice the largest logit error: tol = 2 · 4u · max|z|."""
    from transformers import AutoModelForCausalLM

    from rl.batch import collate
    from rl.policy import PolicyModule
    from rl.precision import resolve
    from rl.types import Sample

    engine = HFEngine(tiny_model_dir, dtype="bfloat16", device="cpu")
    assert engine.precision.autocast and engine.precision.compute == torch.bfloat16
    prompts = contract.prompts_of(engine.tokenizer)
    outs = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=8, seed=1))
    samples = [Sample(i, o.prompt_index, prompts[o.prompt_index], o.response_ids, o.logprobs, o.finish_reason, 0)
               for i, o in enumerate(outs)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    mb = collate(samples, list(range(len(samples))), engine.pad_id, [True] * len(samples))
    with torch.no_grad():
        bf16 = PolicyModule(model, resolve("bfloat16", "cpu")).eval()(mb, mode="logprobs", temperature=1.0)
        fp32 = PolicyModule(model, resolve("float32", "cpu")).eval()(mb, mode="logprobs", temperature=1.0)
        max_logit = float(model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits.abs().max())
    sampled = torch.tensor([lp for o in outs for lp in o.logprobs])
    tol = 2 * 4 * 2.0 ** -8 * max_logit
    assert float((bf16 - sampled).abs().max()) <= tol
    assert float((fp32 - sampled).abs().max()) > 1e-5  # fp32 noise is ~1e-6: the engine did run in bf16
