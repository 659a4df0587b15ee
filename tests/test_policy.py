"""Policy with LoRA, adapter-off reference and value head, on a tiny Llama built here."""

from __future__ import annotations

import math

import pytest
import torch

from builders import PAD, tiny_llama
from solver_ppo.errors import UserError
from solver_ppo.models.chatglm import ChatGLMConfig, ChatGLMForCausalLM
from solver_ppo.models.config import LoraSettings, SamplingConfig
from solver_ppo.models.generation import left_pad, positions_from_mask
from solver_ppo.models.policy import (
    PolicyWithValue, ValueHead, entropy_from_logsumexp, merged_lora, read_trainable, token_logprobs,
)

PROMPTS = [[5, 9, 14, 3, 22, 7], [11, 4], [30, 31, 32]]
RESPONSES = [[40, 41, 2], [17, 18, 19, 20, 21], [8]]  # different lengths: right-padded in the batch




def tiny_chatglm(seed: int = 0) -> ChatGLMForCausalLM:
    torch.manual_seed(seed)
    cfg = ChatGLMConfig(
        num_layers=2, padded_vocab_size=61, hidden_size=32, ffn_hidden_size=48, kv_channels=8,
        num_attention_heads=4, multi_query_group_num=2, seq_length=128, pad_token_id=PAD, eos_token_id=2,
    )
    return ChatGLMForCausalLM(cfg)


TINY = {"llama": tiny_llama, "chatglm": tiny_chatglm}
both = pytest.mark.parametrize("family", ["llama", "chatglm"])


def make_policy(lora: LoraSettings | None = None, seed: int = 0, family: str = "llama", **kw) -> PolicyWithValue:
    model = TINY[family](seed)
    return PolicyWithValue(model, lora or LoraSettings(r=4, alpha=8), pad_token_id=PAD, stop_token_ids=[2], **kw)


def batch(prompts=PROMPTS, responses=RESPONSES):
    """Left-padded prompts, then right-padded responses -> ids (B, S), mask (B, S), P, response mask (B, R)."""
    ids, mask = left_pad(prompts, PAD)
    R = max(len(r) for r in responses)
    resp = torch.full((len(responses), R), PAD, dtype=torch.long)
    resp_mask = torch.zeros((len(responses), R), dtype=torch.long)
    for i, r in enumerate(responses):
        resp[i, : len(r)] = torch.tensor(r)
        resp_mask[i, : len(r)] = 1
    return torch.cat([ids, resp], 1), torch.cat([mask, resp_mask], 1), ids.size(1), resp_mask.bool()


def train_step(policy: PolicyWithValue, lr: float = 1e-2) -> None:
    ids, mask, P, rmask = batch()
    opt = torch.optim.Adam(policy.policy_parameters() + policy.value_parameters(), lr=lr)
    logprobs, values, _ = policy(ids, mask, P)
    loss = -(logprobs * rmask).sum() / rmask.sum() + (values**2 * rmask).mean()
    loss.backward()
    opt.step()


@both
def test_reference_equals_policy_at_init_and_splits_after_a_step(family):
    policy = make_policy(family=family)
    ids, mask, P, rmask = batch()
    logp0, _, _ = policy(ids, mask, P)
    ref0 = policy.reference_logprobs(ids, mask, P)
    assert torch.equal(logp0, ref0)  # LoRA B starts at zero: the adapter is a no-op

    train_step(policy)
    logp1, _, _ = policy(ids, mask, P)
    ref1 = policy.reference_logprobs(ids, mask, P)
    assert torch.equal(ref1, ref0)  # the reference never moves
    assert (logp1 - logp0)[rmask].abs().max() > 1e-4
    # the policy moved towards the response tokens
    assert (logp1 * rmask).sum() > (logp0 * rmask).sum()


@both
def test_full_finetuning_keeps_a_frozen_copy(family):
    policy = make_policy(LoraSettings(enabled=False), family=family)
    assert policy.reference is not None and not policy.reference.training
    assert all(not p.requires_grad for p in policy.reference.parameters())
    ids, mask, P, rmask = batch()
    ref0 = policy.reference_logprobs(ids, mask, P)
    assert torch.allclose(policy(ids, mask, P)[0], ref0, atol=1e-6)
    train_step(policy, lr=1e-3)
    assert torch.equal(policy.reference_logprobs(ids, mask, P), ref0)
    assert (policy(ids, mask, P)[0] - ref0)[rmask].abs().max() > 1e-4


@both
def test_left_padded_batch_equals_rows_alone(family):
    policy = make_policy(family=family)
    train_step(policy)  # non-zero LoRA, so the adapter path is exercised too
    ids, mask, P, rmask = batch()
    with torch.no_grad():
        logp, values, entropy = policy(ids, mask, P)
        ref = policy.reference_logprobs(ids, mask, P)
        for i, (prompt, resp) in enumerate(zip(PROMPTS, RESPONSES)):
            row = torch.tensor([prompt + resp])
            ones = torch.ones_like(row)
            n = len(resp)
            l1, v1, e1 = policy(row, ones, len(prompt))
            r1 = policy.reference_logprobs(row, ones, len(prompt))
            torch.testing.assert_close(logp[i, :n], l1[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(values[i, :n], v1[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(entropy[i, :n], e1[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(ref[i, :n], r1[0], atol=1e-5, rtol=0)


@both
def test_logprobs_entropy_values_match_a_manual_computation(family):
    policy = make_policy(family=family)
    train_step(policy)
    ids, mask, P, _ = batch()
    with torch.no_grad():
        logp, values, entropy = policy(ids, mask, P)
        out = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                           output_hidden_states=True)
        full = out.logits.float().log_softmax(-1)  # (B, S, V)
        want = full[:, P - 1 : -1].gather(-1, ids[:, P:, None]).squeeze(-1)
        torch.testing.assert_close(logp, want, atol=1e-6, rtol=0)
        p = full[:, P - 1 : -1].exp()
        torch.testing.assert_close(entropy, -(p * full[:, P - 1 : -1]).sum(-1), atol=1e-5, rtol=0)
        h = out.hidden_states[-1][:, P - 1 : -1]  # state before each response token
        want_v = h @ policy.value_head.proj.weight[0] + policy.value_head.proj.bias
        torch.testing.assert_close(values, want_v, atol=1e-6, rtol=0)
        # temperature divides the logits
        logp_t, _, _ = policy(ids, mask, P, temperature=0.7)
        want_t = (out.logits[:, P - 1 : -1].float() / 0.7).log_softmax(-1).gather(-1, ids[:, P:, None]).squeeze(-1)
        torch.testing.assert_close(logp_t, want_t, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="response_start"):
        policy(ids, mask, 0)


def test_value_head_shape_init_and_grads():
    head = ValueHead(32)
    assert head.proj.weight.dtype == torch.float32 and head.proj.weight.std() < 5e-3
    assert torch.all(head.proj.bias == 0)
    assert head(torch.randn(2, 5, 32, dtype=torch.bfloat16)).shape == (2, 5)

    policy = make_policy()
    ids, mask, P, rmask = batch()
    logprobs, values, entropy = policy(ids, mask, P)
    assert logprobs.shape == values.shape == entropy.shape == (3, ids.size(1) - P)
    assert values.dtype == torch.float32
    (values * rmask).sum().backward()
    assert policy.value_head.proj.weight.grad.abs().sum() > 0
    base = policy.causal_lm.model.layers[0].self_attn.q_proj.base_layer.weight
    assert base.grad is None and not base.requires_grad
    # entropy is a proper entropy: between 0 and log(V)
    assert (entropy >= 0).all() and (entropy <= torch.log(torch.tensor(61.0)) + 1e-5).all()


def test_default_lora_targets_every_linear_layer_but_the_head():
    policy = make_policy()
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapted = {n.split(".")[-4] for n in policy.trainable_state_dict() if "lora_A" in n}
    assert adapted == set(linear)
    assert not hasattr(policy.causal_lm.lm_head, "lora_A")
    only_q = make_policy(LoraSettings(r=2, target_modules=["q_proj"]))
    assert {n.split(".")[-4] for n in only_q.trainable_state_dict() if "lora_" in n} == {"q_proj"}

    glm = make_policy(family="chatglm")
    adapted = {n.split(".")[-4] for n in glm.trainable_state_dict() if "lora_A" in n}
    assert adapted == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert not hasattr(glm.causal_lm.transformer.output_layer, "lora_A")
    with pytest.raises(UserError, match=r"model.lora.target_modules=\['qproj'\]: Target modules \{'qproj'\} not found"):
        make_policy(LoraSettings(target_modules=["qproj"]))


def test_trainable_state_dict_has_no_base_weights_and_round_trips(tmp_path):
    policy = make_policy()
    train_step(policy)
    sd = policy.trainable_state_dict()
    assert sd and all("lora_" in k or k.startswith("value_head.") for k in sd)
    assert sum(v.numel() for v in sd.values()) < 0.2 * sum(p.numel() for p in policy.causal_lm.parameters())

    path = policy.save_trainable(tmp_path / "ckpt" / "trainable.pt")
    fresh = make_policy()  # same base weights; scramble what load_trainable must restore
    with torch.no_grad():
        for p in fresh.trainable_state_dict().values():
            p.normal_()
    ids, mask, P, _ = batch()
    fresh.load_trainable(tmp_path / "ckpt")  # a directory holding trainable.pt works too
    with torch.no_grad():
        for a, b in zip(policy(ids, mask, P), fresh(ids, mask, P)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert read_trainable(path)["lora"]["r"] == 4


def test_trainable_file_errors(tmp_path):
    policy = make_policy()
    with pytest.raises(UserError, match="adapter file not found"):
        policy.load_trainable(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(UserError, match=r"not a readable torch checkpoint \(\w+: [^\n]*\)$"):
        policy.load_trainable(tmp_path / "junk.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a trainable-weights file"):
        policy.load_trainable(tmp_path / "other.pt")

    make_policy(LoraSettings(r=2, alpha=4)).save_trainable(tmp_path / "r2.pt")
    with pytest.raises(UserError, match=r"lora_A.*shape \(2, 32\) in the file but \(4, 32\)"):
        policy.load_trainable(tmp_path / "r2.pt")
    make_policy(LoraSettings(r=4, target_modules=["q_proj"])).save_trainable(tmp_path / "q.pt")
    with pytest.raises(UserError, match="missing"):
        policy.load_trainable(tmp_path / "q.pt")
    make_policy(LoraSettings(enabled=False)).save_trainable(tmp_path / "full.pt")
    with pytest.raises(UserError, match="full fine-tuning mode"):
        policy.load_trainable(tmp_path / "full.pt")


def distinct_bytes(module: torch.nn.Module) -> int:
    """Bytes of distinct parameter/buffer storages (shared tensors counted once)."""
    seen = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@both
def test_lora_reference_is_not_a_second_copy(family):
    base_bytes = distinct_bytes(TINY[family](0))
    lora = make_policy(family=family)
    assert lora.reference is None
    # exactly the base plus LoRA matrices and the value head: nothing of the base is duplicated
    added = sum(v.numel() * v.element_size() for v in lora.trainable_state_dict().values())
    assert distinct_bytes(lora) == base_bytes + added
    # r=4 on hidden 32 adds ~16%; r=1 is the proportion a real model sees (r=8 on hidden 4096: 0.6%)
    assert distinct_bytes(make_policy(LoraSettings(r=1, alpha=2), family=family)) <= 1.15 * base_bytes
    full = make_policy(LoraSettings(enabled=False), family=family)
    assert distinct_bytes(full) >= 1.99 * base_bytes


@both
def test_gradient_checkpointing_gives_the_same_numbers(family):
    plain, ckpt = make_policy(family=family), make_policy(family=family, gradient_checkpointing=True)
    assert ckpt.causal_lm.is_gradient_checkpointing
    ids, mask, P, rmask = batch()
    grads = []
    for policy in (plain, ckpt):
        policy.train()
        logp, values, _ = policy(ids, mask, P)
        ((logp + values) * rmask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.policy_parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@both
def test_policy_generate_uses_the_adapter(family):
    policy = make_policy(family=family).eval()
    before = policy.generate([[5, 6, 7]], SamplingConfig(max_new_tokens=6, do_sample=False))
    with torch.no_grad():
        for p in policy.policy_parameters():
            if "lora_B" in [n for n, q in policy.named_parameters() if q is p][0]:
                p.normal_(std=0.5)
    after = policy.generate([[5, 6, 7]], SamplingConfig(max_new_tokens=6, do_sample=False))
    assert not torch.equal(before.sequences, after.sequences)
    # and the scoring path agrees with what generation picked: greedy tokens are each step's argmax
    with torch.no_grad():
        ids, mask = after.sequences, after.attention_mask
        logits = policy.causal_lm(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    n = int(after.response_lengths[0])
    assert torch.equal(logits[0, 2 : 2 + n].argmax(-1), after.responses[0, :n])


@both
def test_merged_lora_equals_the_adapter_path_and_restores_the_base_bit_for_bit(family):
    policy = make_policy(family=family).eval()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    ids, mask, P, _ = batch()
    base = {n: (p.data_ptr(), p.detach().clone()) for n, p in policy.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        adapter_path = policy(ids, mask, P)[0]
        reference = policy.reference_logprobs(ids, mask, P)
        with merged_lora(policy.model):
            merged = policy(ids, mask, P)[0]
            assert any(p.data_ptr() != base[n][0] for n, p in policy.named_parameters() if n in base)
        assert torch.allclose(merged, adapter_path, atol=1e-5) and not torch.allclose(merged, reference, atol=1e-3)
        assert torch.equal(policy(ids, mask, P)[0], adapter_path)
        assert torch.equal(policy.reference_logprobs(ids, mask, P), reference)
    for name, p in policy.named_parameters():
        if name in base:
            assert p.data_ptr() == base[name][0] and torch.equal(p, base[name][1]), name


@both
def test_sampling_merged_or_not_gives_the_same_answers(family):
    policies = [make_policy(LoraSettings(r=4, alpha=8, merge_for_sampling=m), family=family).eval() for m in (True, False)]
    with torch.no_grad():
        noise = {n: torch.randn_like(p) * 0.3 for n, p in policies[0].named_parameters() if "lora_B" in n}
        for policy in policies:
            for name, p in policy.named_parameters():
                if name in noise:
                    p.copy_(noise[name])
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    merged, plain = (p.generate([[5, 6, 7], [9, 4]], greedy) for p in policies)
    assert torch.equal(merged.sequences, plain.sequences)


@both
@pytest.mark.parametrize("merge", [True, False])
def test_sampling_keeps_the_logprobs_and_hidden_states_a_scoring_pass_computes(family, merge):
    policy = make_policy(LoraSettings(r=4, alpha=8, merge_for_sampling=merge), family=family)
    train_step(policy)  # a non-zero adapter: merged sampling differs from the base weights
    policy.eval().stop_token_ids = list(range(0, 61, 4))  # a quarter of the vocabulary ends a row: ragged lengths
    sampling = SamplingConfig(max_new_tokens=7, temperature=0.7, top_k=20)  # top-k: kept log-probs are unfiltered
    gen = policy.generate(PROMPTS, sampling, generator=torch.Generator().manual_seed(3), keep_logprobs=True)
    rmask = gen.response_mask
    assert rmask.shape == gen.logprobs.shape and not rmask.all()  # rows of different lengths (a stop token)
    with torch.no_grad():
        old, values, ref = policy.score_rollout(gen.sequences, gen.attention_mask, gen.prompt_length, 0.7)
        kept_values = policy.value_head(gen.hidden)
        only_ref = policy.score_rollout(gen.sequences, gen.attention_mask, gen.prompt_length, 0.7, reference_only=True)
    torch.testing.assert_close(gen.logprobs[rmask], old[rmask], atol=2e-5, rtol=0)
    torch.testing.assert_close(kept_values[rmask], values[rmask], atol=2e-5, rtol=0)
    assert only_ref[:2] == (None, None) and torch.equal(only_ref[2], ref)
    assert (old - ref)[rmask].abs().max() > 1e-3  # the policy's own numbers, not the reference's
    assert policy.generate(PROMPTS, sampling).logprobs is None


@both
def test_score_rollout_in_chunks_equals_one_pass_and_the_separate_calls(family):
    policy = make_policy(family=family)
    train_step(policy)  # the adapter is on: policy and reference differ
    ids, mask, P, rmask = batch()
    with torch.no_grad():
        logp, values, _ = policy(ids, mask, P, temperature=0.7)
        ref = policy.reference_logprobs(ids, mask, P, temperature=0.7)
    assert (logp - ref)[rmask].abs().max() > 1e-4
    whole = policy.score_rollout(ids, mask, P, temperature=0.7)
    for got, want in zip(whole, (logp, values, ref)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for chunk in (1, 2, 5):
        for got, want in zip(policy.score_rollout(ids, mask, P, temperature=0.7, chunk_size=chunk), whole):
            assert got.shape == want.shape == rmask.shape and not got.requires_grad
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        policy.score_rollout(ids, mask, P, chunk_size=0)


def test_entropy_without_grad_has_the_same_values_and_logprob_gradients():
    ids, mask, P, rmask = batch()
    results = {}
    for entropy_grad in (True, False):
        policy = make_policy()
        logp, values, entropy = policy(ids, mask, P, temperature=0.7, entropy_grad=entropy_grad)
        assert entropy.requires_grad == entropy_grad and logp.requires_grad
        ((logp + values) * rmask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in policy.policy_parameters()])
        results[entropy_grad] = (logp.detach(), entropy, grads)
    torch.testing.assert_close(results[False][0], results[True][0], atol=0, rtol=0)
    torch.testing.assert_close(results[False][1], results[True][1].detach(), atol=0, rtol=0)
    torch.testing.assert_close(results[False][2], results[True][2], atol=0, rtol=0)
    assert results[True][2].abs().sum() > 0
    # with grad, the entropy bonus reaches the adapter
    policy = make_policy()
    _, _, entropy = policy(ids, mask, P, entropy_grad=True)
    (entropy * rmask).sum().backward()
    assert sum(float(p.grad.abs().sum()) for p in policy.policy_parameters() if p.grad is not None) > 0


def test_token_logprobs_and_entropy_match_log_softmax_even_for_large_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 1000, dtype=torch.float64) * torch.tensor([1.0, 30.0, 300.0])[:, None, None]
    logits[0, 0] = 0.0  # uniform: entropy log(V)
    tokens = torch.randint(0, 1000, (3, 5))
    logp, lse = token_logprobs(logits, tokens)
    full = logits.log_softmax(-1)
    torch.testing.assert_close(logp, full.gather(-1, tokens[..., None]).squeeze(-1), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lse, logits.logsumexp(-1))
    entropy = entropy_from_logsumexp(logits, lse)
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1), atol=1e-9, rtol=1e-9)
    assert entropy[0, 0].item() == pytest.approx(math.log(1000))
    assert torch.isfinite(entropy).all() and (entropy >= -1e-9).all()


def test_token_logprobs_gradient_matches_autograd_of_log_softmax():
    torch.manual_seed(1)
    logits = (torch.randn(2, 4, 50, dtype=torch.float64) * 5).requires_grad_()
    tokens = torch.randint(0, 50, (2, 4))
    weights = torch.randn(2, 4, dtype=torch.float64)  # a non-uniform upstream gradient
    (token_logprobs(logits, tokens)[0] * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    (logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1) * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, tokens)[0], (logits.detach().requires_grad_(),))
    assert not token_logprobs(logits, tokens)[1].requires_grad  # the logsumexp is a by-product, no gradient
