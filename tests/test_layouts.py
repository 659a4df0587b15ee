"""Published checkpoint layouts (app/models/layouts.py) at a tiny width: same files, names, index and tokenizer ids."""

import json

import pytest
import torch

from solver_ppo.models.config import ModelConfig
from solver_ppo.models.layouts import LAYOUTS, DTYPES, plan_shards, weight_shapes, write_published_layout
from solver_ppo.models.loading import load_model

TINY = dict(num_layers=2, hidden_size=32, num_attention_heads=4, kv_channels=8, ffn_hidden_size=64)
LAYER_NAMES = ["input_layernorm.weight", "self_attention.query_key_value.weight", "self_attention.query_key_value.bias",
               "self_attention.dense.weight", "post_attention_layernorm.weight", "mlp.dense_h_to_4h.weight",
               "mlp.dense_4h_to_h.weight"]  # fmt: skip


def published_names(layers: int) -> set[str]:
    names = {"transformer.embedding.word_embeddings.weight", "transformer.rotary_pos_emb.inv_freq",
             "transformer.encoder.final_layernorm.weight", "transformer.output_layer.weight"}  # fmt: skip
    return names | {f"transformer.encoder.layers.{i}.{n}" for i in range(layers) for n in LAYER_NAMES}


@pytest.mark.parametrize("name, params, n_bytes", [("chatglm3-6b", 6_243_584_032, 12_487_168_064),
                                                    ("glm-4-9b-chat", 9_399_951_392, 18_799_902_784)])  # fmt: skip
def test_full_size_plan_matches_the_published_totals(name, params, n_bytes):
    layout = LAYOUTS[name]
    shapes = weight_shapes(layout.config)
    assert {n for n, _ in shapes} == published_names(layout.config["num_layers"])
    numels = [torch.Size(s).numel() for _, s in shapes]
    itemsize = DTYPES[layout.config["torch_dtype"]].itemsize
    assert sum(numels) == params and sum(numels) * itemsize == n_bytes  # chatglm3-6b: its index's total_size
    plan = plan_shards([n * itemsize for n in numels], layout.n_shards)
    shard_bytes = [sum(n * itemsize for n, k in zip(numels, plan) if k == s) for s in range(layout.n_shards)]
    assert plan == sorted(plan) and set(plan) == set(range(layout.n_shards))
    assert max(shard_bytes) < 2.0e9 and min(shard_bytes) > 1.5e9  # byte-balanced, one shard ~1.8 GB


def test_plan_shards_is_contiguous_and_never_empty():
    assert plan_shards([100, 1, 1, 1, 100], 5) == [0, 1, 2, 3, 4]
    assert plan_shards([10] * 10, 2) == [0] * 5 + [1] * 5
    plan = plan_shards([1000, 1, 1, 1, 1, 1, 1, 1000], 4)
    assert plan[0] == 0 and plan[-1] == 3 and set(plan) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="cannot split 2 tensors into 3 shards"):
        plan_shards([1, 1], 3)


@pytest.mark.parametrize("name", ["chatglm3-6b", "glm-4-9b-chat"])
def test_tiny_layout_loads_and_sharded_equals_unsharded(tmp_path, name):
    layout = LAYOUTS[name]
    sharded = write_published_layout(tmp_path / "sharded", name, seed=3, overrides=TINY)
    single = write_published_layout(tmp_path / "single", name, seed=3, shards=1, overrides=TINY)

    n = layout.n_shards
    index = json.loads((sharded / layout.index_name).read_text())
    files = [layout.shard_name(i, n) for i in range(1, n + 1)]
    assert files[0] == ("pytorch_model-00001-of-00007.bin" if n == 7 else "model-00001-of-00010.safetensors")
    assert set(index["weight_map"]) == published_names(2) and sorted(set(index["weight_map"].values())) == files
    assert all((sharded / f).is_file() for f in files) and (single / layout.shard_name(1, 1)).is_file()
    config = json.loads((sharded / "config.json").read_text())
    assert config == layout.config | TINY and config["architectures"] == ["ChatGLMModel"]

    a = load_model(ModelConfig(family="chatglm", path=str(sharded), dtype="float32"))
    b = load_model(ModelConfig(family="chatglm", path=str(single), dtype="float32"))
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys() == published_names(2)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert state_a["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"].std() == pytest.approx(0.02, rel=0.2)
    ids = torch.tensor([a.chat.encode_prompt(a.tokenizer, [{"role": "user", "content": "Minimize 4 x + 3 y"}])])
    with torch.no_grad():
        assert torch.equal(a.model(input_ids=ids).logits, b.model(input_ids=ids).logits)

    # the tokenizer has the published size, so the specials sit at the published ids
    assert a.tokenizer.vocab_size == layout.ordinary_tokens + len(a.tokenizer.specials)
    first = "[MASK]" if name == "chatglm3-6b" else "<|endoftext|>"
    assert a.tokenizer.convert_tokens_to_ids([first, "<|observation|>"]) == [
        layout.ordinary_tokens, layout.ordinary_tokens + len(a.tokenizer.specials) - 1]
    stops = [2, 64795, 64797] if name == "chatglm3-6b" else [151329, 151336, 151338]
    assert a.chat.stop_token_ids == stops and a.chat.pad_token_id == (0 if name == "chatglm3-6b" else 151329)
    text = "Maximize 3 x + 2 y subject to c1: x + y <= 4"
    assert a.tokenizer.decode(a.tokenizer.encode(text, add_special_tokens=False)) == text
    assert max(a.tokenizer.encode(text * 20, add_special_tokens=False)) < 4000  # padding tokens are never produced
