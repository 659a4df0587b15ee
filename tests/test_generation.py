"""Our decode loop against transformers' `.generate` and against itself (cache, seeds, stops)."""

from __future__ import annotations

import pytest
import torch

from builders import PAD, tiny_llama
from solver_ppo.models.chatglm import ChatGLMConfig, ChatGLMForCausalLM
from solver_ppo.models.config import SamplingConfig
from solver_ppo.models.generation import (
    filter_logits, generate, head_on_columns, left_pad, positions_from_mask, sample_categorical,
)

PROMPTS = [[5, 9, 14, 3, 22, 7, 8], [11, 4], [30, 31, 32, 33]]  # different lengths -> left padding




def tiny_chatglm(seed: int = 0) -> ChatGLMForCausalLM:
    torch.manual_seed(seed)
    cfg = ChatGLMConfig(
        num_layers=2, padded_vocab_size=61, hidden_size=32, ffn_hidden_size=48, kv_channels=8,
        num_attention_heads=4, multi_query_group_num=2, seq_length=128, pad_token_id=PAD, eos_token_id=2,
    )
    model = ChatGLMForCausalLM(cfg).eval()
    with torch.no_grad():  # the default init (std 0.02) makes a near-uniform tiny model: sharpen it
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.3)
    return model


def greedy(n: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, do_sample=False)


def hf_greedy(model, prompts, n: int, stop: list[int]) -> torch.Tensor:
    ids, mask = left_pad(prompts, PAD)
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
            pad_token_id=PAD, eos_token_id=stop,
        )


@pytest.fixture(scope="module", params=["llama", "chatglm"])
def model(request):
    """Every test taking this fixture runs on an HF Llama and on the native ChatGLM."""
    return tiny_llama() if request.param == "llama" else tiny_chatglm()


def test_left_pad_and_positions():
    ids, mask = left_pad([[7, 8, 9], [4]], pad_token_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_token_id=0)


def test_greedy_matches_hf_generate_without_stop(model):
    ours = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[60], sampling=greedy(12))
    theirs = hf_greedy(model, PROMPTS, 12, stop=[60])
    assert torch.equal(ours.sequences, theirs)
    assert ours.prompt_length == 7
    assert ours.sequences.shape == (3, 7 + 12)


def test_greedy_matches_hf_generate_with_early_stop(model):
    free = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[], sampling=greedy(10))
    # make row 1's 4th generated token a stop token: row 1 must end there, others wherever it occurs
    stop_tok = int(free.responses[1, 3])
    ours = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[stop_tok], sampling=greedy(10))
    theirs = hf_greedy(model, PROMPTS, 10, stop=[stop_tok])
    assert torch.equal(ours.sequences, theirs)

    resp = ours.responses
    for row in range(3):
        hits = (free.responses[row] == stop_tok).nonzero().flatten().tolist()
        n = hits[0] + 1 if hits else 10
        assert int(ours.response_lengths[row]) == n
        assert ours.response_mask[row, :n].all() and not ours.response_mask[row, n:].any()
        assert torch.equal(resp[row, :n], free.responses[row, :n])  # the stop token is kept
        assert (resp[row, n:] == PAD).all()
    assert int(ours.response_lengths[1]) == 4
    # attention mask = prompt mask, then the response mask
    prompt_mask = left_pad(PROMPTS, PAD)[1]
    assert torch.equal(ours.attention_mask, torch.cat([prompt_mask, ours.response_mask.long()], 1))


def test_stops_early_when_every_row_finished(model):
    free = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[], sampling=greedy(6))
    stops = [int(free.responses[r, 1]) for r in range(3)]  # every row stops at its 2nd token (or earlier)
    out = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=stops, sampling=greedy(50))
    assert out.responses.size(1) <= 2
    assert (out.response_lengths <= 2).all()
    assert out.tokens_per_second > 0 and out.elapsed_s > 0


def test_cached_equals_uncached(model):
    for sampling in (greedy(15), SamplingConfig(max_new_tokens=15, temperature=0.8, top_k=20, top_p=0.9)):
        a = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[2], sampling=sampling,
                     generator=torch.Generator().manual_seed(3))
        b = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[2], sampling=sampling,
                     generator=torch.Generator().manual_seed(3), use_cache=False)
        assert torch.equal(a.sequences, b.sequences)
        assert torch.equal(a.response_mask, b.response_mask)


def test_seeded_sampling_is_reproducible(model):
    sampling = SamplingConfig(max_new_tokens=20, temperature=1.3)
    runs = [
        generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[2], sampling=sampling,
                 generator=torch.Generator().manual_seed(seed))
        for seed in (7, 7, 8)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert not torch.equal(runs[0].sequences, runs[2].sequences)


def test_top_k_one_is_greedy(model):
    g = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[2], sampling=greedy(12))
    k1 = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[2],
                  sampling=SamplingConfig(max_new_tokens=12, temperature=2.0, top_k=1),
                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.sequences, k1.sequences)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 1.0, 2, 1.0)).tolist() == [[False, False, True, True]]
    # top_p=0.7: 0.5 alone is short of 0.7, 0.5+0.3 reaches it -> keep two
    assert torch.isinf(filter_logits(logits, 1.0, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 1.0, 0, 0.81)).tolist() == [[False, False, False, True]]
    # the best token always survives, even with a tiny top_p
    assert torch.isinf(filter_logits(logits, 1.0, 0, 0.01)).tolist() == [[False, True, True, True]]
    assert torch.isinf(filter_logits(logits, 1.0, 0, 0.0)).tolist() == [[False, True, True, True]]
    # temperature scales before filtering
    assert torch.allclose(filter_logits(logits, 2.0, 0, 1.0), logits / 2)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, 0.0, 0, 1.0)


def test_sampling_respects_filters(model):
    """With top_k=3 every sampled token is among the 3 best of its step (checked by rescoring)."""
    out = generate(model, PROMPTS, pad_token_id=PAD, stop_token_ids=[], generator=torch.Generator().manual_seed(1),
                   sampling=SamplingConfig(max_new_tokens=8, temperature=1.5, top_k=3))
    with torch.no_grad():
        logits = model(input_ids=out.sequences, attention_mask=out.attention_mask,
                       position_ids=positions_from_mask(out.attention_mask)).logits
    P = out.prompt_length
    top3 = logits[:, P - 1 : -1].topk(3, dim=-1).indices  # (B, R, 3)
    assert (top3 == out.responses[..., None]).any(-1).all()


def test_head_on_columns_slices_the_head_input_and_cleans_up(model):
    ids, mask = left_pad(PROMPTS, PAD)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    with torch.no_grad():
        full = model(**kw).logits  # (B, P, V)
        with head_on_columns(model, 2, 5, seq_len=ids.size(1)) as kept:
            part = model(**kw).logits
        assert part.shape == (3, 3, full.size(-1)) and kept["hidden"].shape[:2] == (3, 3)
        torch.testing.assert_close(part, full[:, 2:5], atol=1e-5, rtol=0)
        assert model(**kw).logits.shape == full.shape  # the hook is gone
        with pytest.raises(ValueError, match="batch-first"), head_on_columns(model, 0, 1, seq_len=99):
            model(**kw)
        assert model(**kw).logits.shape == full.shape  # gone after an error too


def test_sample_categorical_draws_the_given_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.1, 0.0, 0.0, 0.0, 0.0, 0.3]])  # row 2 sums to 0.4
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_categorical(probs, g) for _ in range(20_000)])  # (N, 2)
    for row, want in enumerate(probs / probs.sum(-1, keepdim=True)):
        freq = torch.bincount(draws[:, row], minlength=6).double() / len(draws)
        assert (freq[want == 0] == 0).all()  # a zero-probability token is never drawn
        torch.testing.assert_close(freq, want.double(), atol=0.015, rtol=0)  # 4+ binomial std at N=20k
    # same generator state, same draws
    a = sample_categorical(probs.repeat(25, 1), torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_categorical(probs.repeat(25, 1), torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("u", [0.0, 1.0 - 2.0**-53])
def test_sample_categorical_extreme_uniforms_stay_on_positive_tokens(monkeypatch, u):
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, u, dtype=kw["dtype"]))
    assert sample_categorical(probs).tolist() == ([1] if u == 0.0 else [3])
