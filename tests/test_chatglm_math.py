"""Every math fact of the native ChatGLM (docs/models.md), checked against hand computations and an independent reference.

`reference_logits` below is written straight from the formulas (explicit loops over positions,
heads and rotation pairs), sharing no code with app/models/chatglm.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from solver_ppo.models.chatglm import (
    MLP,
    ChatGLMConfig,
    ChatGLMForCausalLM,
    KVCache,
    RMSNorm,
    SelfAttention,
    apply_rope,
    rope_angles,
)

TINY = dict(num_layers=2, padded_vocab_size=96, hidden_size=64, ffn_hidden_size=96, kv_channels=16,
            num_attention_heads=4, multi_query_group_num=2, seq_length=128, eos_token_id=2, pad_token_id=0)  # fmt: skip


def tiny_model(seed: int = 0, **overrides) -> ChatGLMForCausalLM:
    torch.manual_seed(seed)
    model = ChatGLMForCausalLM(ChatGLMConfig(**(TINY | overrides))).eval()
    with torch.no_grad():  # non-trivial norms and biases so every weight matters
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.15)
    return model


# ----------------------------------------------------------------------------- reference


def reference_logits(model: ChatGLMForCausalLM, ids: list[int]) -> torch.Tensor:
    """Logits (n, V) for one unpadded row at positions 0..n-1, from the state dict and formulas only."""
    cfg, sd = model.config, {k: v.double() for k, v in model.state_dict().items()}
    H, G, D, eps = cfg.num_attention_heads, cfg.multi_query_group_num, cfg.kv_channels, cfg.layernorm_epsilon
    n, base = len(ids), 10000.0 * cfg.rope_ratio

    def rmsnorm(x, w):
        return torch.stack([row / math.sqrt(float((row * row).mean()) + eps) for row in x]) * w

    def rotate(t):  # t (n, heads, D): pairs (2i, 2i+1) of the first D/2 dims at position p
        out = t.clone()
        for p in range(n):
            for i in range(D // 4):
                angle = p * base ** (-2 * i / (D // 2))
                a, b = t[p, :, 2 * i], t[p, :, 2 * i + 1]
                out[p, :, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
                out[p, :, 2 * i + 1] = b * math.cos(angle) + a * math.sin(angle)
        return out

    x = sd["transformer.embedding.word_embeddings.weight"][ids]  # (n, C)
    for layer in range(cfg.num_layers):
        w = lambda name: sd[f"transformer.encoder.layers.{layer}.{name}"]  # noqa: E731
        h = rmsnorm(x, w("input_layernorm.weight"))
        qkv = h @ w("self_attention.query_key_value.weight").T + w("self_attention.query_key_value.bias")
        q = rotate(qkv[:, : H * D].reshape(n, H, D))
        k = rotate(qkv[:, H * D : H * D + G * D].reshape(n, G, D))
        v = qkv[:, H * D + G * D :].reshape(n, G, D)
        heads = []
        for head in range(H):
            g = head // (H // G)
            out = torch.zeros(n, D, dtype=torch.double)
            for p in range(n):
                scores = torch.tensor([float(q[p, head] @ k[s, g]) / math.sqrt(D) for s in range(p + 1)])
                weights = torch.softmax(scores.double(), dim=0)
                out[p] = sum(weights[s] * v[s, g] for s in range(p + 1))
            heads.append(out)
        x = x + torch.cat(heads, dim=-1) @ w("self_attention.dense.weight").T
        h = rmsnorm(x, w("post_attention_layernorm.weight"))
        up_gate = h @ w("mlp.dense_h_to_4h.weight").T
        gate, up = up_gate[:, : cfg.ffn_hidden_size], up_gate[:, cfg.ffn_hidden_size :]
        x = x + (gate * torch.sigmoid(gate) * up) @ w("mlp.dense_4h_to_h.weight").T
    x = rmsnorm(x, sd["transformer.encoder.final_layernorm.weight"])
    return x @ sd["transformer.output_layer.weight"].T


# ----------------------------------------------------------------------------- single facts


@pytest.mark.parametrize("rope_ratio", [1.0, 500.0])
def test_rope_rotates_interleaved_pairs_of_first_half(rope_ratio):
    torch.manual_seed(0)
    B, Hh, T, D = 2, 3, 5, 16
    x = torch.randn(B, Hh, T, D, dtype=torch.double)
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 7, 8, 100]])
    got = apply_rope(x, rope_angles(pos, D, rope_ratio).double())
    want = x.clone()
    base = 10000.0 * rope_ratio
    for b in range(B):
        for t in range(T):
            for i in range(D // 4):
                theta = base ** (-2 * i / (D // 2))
                c, s = math.cos(pos[b, t] * theta), math.sin(pos[b, t] * theta)
                a_, b_ = x[b, :, t, 2 * i], x[b, :, t, 2 * i + 1]
                want[b, :, t, 2 * i] = a_ * c - b_ * s
                want[b, :, t, 2 * i + 1] = b_ * c + a_ * s
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert torch.equal(got[..., D // 2 :], x[..., D // 2 :])  # second half passes through


def test_rope_uses_cos_sin_rounded_to_model_dtype():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 16).bfloat16()
    angles = rope_angles(torch.tensor([[0, 5, 900, 4000]]), 16, 1.0)
    cos, sin = angles.cos().bfloat16()[:, None], angles.sin().bfloat16()[:, None]
    a, b = x[..., 0:8:2], x[..., 1:8:2]
    want = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
    got = apply_rope(x, angles)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got[..., :8], want)


def test_rmsnorm_variance_in_fp32_then_cast():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.tensor([[300.0, -400.0, 250.0, 10.0, 0.5, -1.0, 512.0, 60.0]]).half()  # x² overflows fp16
    got = norm.half()(x)
    xf = x.float()
    want = norm.weight * (xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + 1e-5)).half()
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)
    assert torch.isinf((x * x).mean()).item()  # computing the variance in fp16 would overflow


def test_attention_query_head_h_reads_group_h_div_heads_per_group():
    torch.manual_seed(0)
    cfg = ChatGLMConfig(**TINY)
    attn = SelfAttention(cfg).double()
    B, T, H, G, D = 2, 5, 4, 2, 16
    x = torch.randn(B, T, cfg.hidden_size, dtype=torch.double)
    angles = torch.zeros(B, T, D // 4, dtype=torch.double)  # no rotation: isolate the group mapping
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None].expand(B, 1, T, T)
    cache = KVCache(1)
    got = attn(x, angles, mask, cache, 0)
    k_cache, v_cache = cache[0]
    assert k_cache.shape == (B, G, T, D) and v_cache.shape == (B, G, T, D)

    qkv = x @ attn.query_key_value.weight.T + attn.query_key_value.bias
    assert qkv.shape[-1] == H * D + 2 * G * D
    q = qkv[..., : H * D].reshape(B, T, H, D)
    k = qkv[..., H * D : H * D + G * D].reshape(B, T, G, D)
    v = qkv[..., H * D + G * D :].reshape(B, T, G, D)
    out = torch.zeros(B, T, H, D, dtype=torch.double)
    for h in range(H):
        g = h // (H // G)  # heads 0,1 -> group 0; heads 2,3 -> group 1
        scores = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, g]) / math.sqrt(D)
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        out[:, :, h] = torch.einsum("bts,bsd->btd", scores.softmax(-1), v[:, :, g])
    want = out.reshape(B, T, H * D) @ attn.dense.weight.T
    torch.testing.assert_close(got, want)


def test_swiglu_first_rows_gate_second_rows_up():
    torch.manual_seed(0)
    cfg = ChatGLMConfig(**TINY)
    mlp = MLP(cfg).double()
    x = torch.randn(3, cfg.hidden_size, dtype=torch.double)
    W, ffn = mlp.dense_h_to_4h.weight, cfg.ffn_hidden_size
    gate, up = x @ W[:ffn].T, x @ W[ffn:].T
    want = (gate / (1 + torch.exp(-gate)) * up) @ mlp.dense_4h_to_h.weight.T
    torch.testing.assert_close(mlp(x), want)


# ----------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("rope_ratio", [1.0, 500.0])
def test_logits_match_reference(rope_ratio):
    model = tiny_model(rope_ratio=rope_ratio)
    ids = [5, 17, 3, 88, 41, 9, 60]
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got.double(), reference_logits(model, ids), atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_reference():
    model = tiny_model(seed=3, rope_ratio=500.0)
    ids = [7, 21, 33, 4]
    want = list(ids)
    for _ in range(6):
        want.append(int(reference_logits(model, want)[-1].argmax()))
    got = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got[0].tolist() == want


def test_incremental_decoding_with_cache_equals_full_forward(monkeypatch):
    monkeypatch.setattr(KVCache, "GROW", 4)  # the buffers grow twice on the way: 8, then 16 columns
    model = tiny_model()
    torch.manual_seed(1)
    ids = torch.randint(3, 96, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # one left-padded row
    mask[2, :5] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        out = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        for t in range(6, 10):
            out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
    assert past[0][0].shape == (3, 2, 10, 16)  # (B, G, S, D)
    assert past.keys[0].shape == (3, 2, 16, 16) and past.lengths == [10] * len(past)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_kv_cache_reorders_rows_and_rejects_another_shape():
    cache = KVCache(2)
    k = torch.arange(3 * 2 * 5 * 4, dtype=torch.float).view(3, 2, 5, 4)  # (B, G, T, D)
    for layer in range(2):
        cache.append(layer, k, -k)
    picked = cache.index_select(torch.tensor([2, 0]))
    assert torch.equal(picked[1][0], k[[2, 0]]) and torch.equal(picked[1][1], -k[[2, 0]])
    assert picked.lengths == [5, 5] and cache[0][0].shape == (3, 2, 5, 4)  # the original is untouched
    with pytest.raises(ValueError, match=r"cached keys are \(3, 2, 256, 4\).*new keys \(2, 2, 1, 4\)"):
        cache.append(0, k[:2, :, :1], k[:2, :, :1])


def test_left_padded_row_equals_unpadded_row():
    model = tiny_model()
    row = torch.tensor([[11, 12, 13, 14, 15]])
    padded = torch.tensor([[0, 0, 0, 11, 12, 13, 14, 15], [21, 22, 23, 24, 25, 26, 27, 28]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        alone = model(row).logits[0]
        batched = model(padded, attention_mask=mask).logits
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched[0, 3:], alone, atol=1e-5, rtol=1e-5)
    # and the positions the model derived are 0.. for the real tokens
    from solver_ppo.models.chatglm import position_ids_from_mask

    assert position_ids_from_mask(mask, 8)[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4]


def test_batched_left_padded_generate_equals_single_rows():
    model = tiny_model(seed=5)
    rows = [[31, 32, 33, 34, 35, 36], [41, 42]]
    singles = [model.generate(torch.tensor([r]), max_new_tokens=5, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(r):].tolist() for r in rows]  # fmt: skip
    ids = torch.tensor([rows[0], [0] * 4 + rows[1]])
    mask = torch.tensor([[1] * 6, [0] * 4 + [1] * 2])
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, eos_token_id=None,
                           pad_token_id=0)  # fmt: skip
    assert batch[:, 6:].tolist() == singles


def test_hidden_states_batch_first_last_is_after_final_norm():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_layers + 1
    assert all(h.shape == (2, 3, 64) for h in out.hidden_states)
    last = out.hidden_states[-1]
    torch.testing.assert_close(model.transformer.output_layer(last), out.logits)
    torch.testing.assert_close(out.hidden_states[0], model.transformer.embedding.word_embeddings(ids))
    with torch.no_grad():  # the backbone alone returns the same final-normed states, no logits
        torch.testing.assert_close(model.transformer(ids).last_hidden_state, last)


def test_labels_give_shifted_cross_entropy():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    labels = ids.clone()
    labels[1, :2] = -100
    out = model(ids, labels=labels)
    logits = out.logits
    terms = [F.cross_entropy(logits[b, t], ids[b, t + 1]) for b in range(2) for t in range(3) if labels[b, t + 1] >= 0]
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())


def test_gradient_checkpointing_gives_same_gradients():
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.transformer.encoder.gradient_checkpointing
        model(ids, labels=ids).loss.backward()
        grads.append(model.transformer.encoder.layers[0].self_attention.query_key_value.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_save_and_load_with_published_names(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert "transformer.rotary_pos_emb.inv_freq" in stored and stored["transformer.rotary_pos_emb.inv_freq"].shape == (4,)
    assert "transformer.output_layer.weight" in stored and "lm_head.weight" not in stored
    # the stored inv_freq is accepted but, as in the published code, does not drive the rotation
    stored["transformer.rotary_pos_emb.inv_freq"] = torch.full((4,), 123.0)
    save_file(stored, tmp_path / "model.safetensors", metadata={"format": "pt"})
    back = ChatGLMForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits)


def test_lora_targets_are_linear_layers():
    from peft import LoraConfig, get_peft_model

    model = tiny_model()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        before = model(ids).logits
    targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(targets)
    with torch.no_grad():  # lora_B starts at zero: same function until trained
        torch.testing.assert_close(peft_model(input_ids=ids).logits, before)
