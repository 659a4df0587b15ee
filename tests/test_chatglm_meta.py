"""The published configs built on the meta device: every weight name and shape, parameter count."""

import pytest
import torch

from solver_ppo.models.chatglm import CHATGLM3_6B, GLM4_9B_CHAT, ChatGLMConfig, ChatGLMForCausalLM


def expected_shapes(layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        "transformer.embedding.word_embeddings.weight": (vocab, 4096),
        "transformer.rotary_pos_emb.inv_freq": (32,),
        "transformer.encoder.final_layernorm.weight": (4096,),
        "transformer.output_layer.weight": (vocab, 4096),
    }
    for n in range(layers):
        p = f"transformer.encoder.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (4096,),
            p + "self_attention.query_key_value.weight": (4608, 4096),
            p + "self_attention.query_key_value.bias": (4608,),
            p + "self_attention.dense.weight": (4096, 4096),
            p + "post_attention_layernorm.weight": (4096,),
            p + "mlp.dense_h_to_4h.weight": (2 * 13696, 4096),
            p + "mlp.dense_4h_to_h.weight": (4096, 13696),
        }
    return shapes


@pytest.mark.parametrize("preset, layers, vocab", [(CHATGLM3_6B, 28, 65024), (GLM4_9B_CHAT, 40, 151552)])
def test_published_weight_names_and_shapes(preset, layers, vocab):
    with torch.device("meta"):
        model = ChatGLMForCausalLM(ChatGLMConfig(**preset))
    found = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert found == expected_shapes(layers, vocab)
    # the LM head is output_layer, untied from the embedding
    assert model.get_output_embeddings() is model.transformer.output_layer
    assert model.get_input_embeddings() is model.transformer.embedding.word_embeddings
    assert model.transformer.output_layer.weight is not model.transformer.embedding.word_embeddings.weight


def test_chatglm3_parameter_count_matches_published_index():
    with torch.device("meta"):
        model = ChatGLMForCausalLM(ChatGLMConfig(**CHATGLM3_6B))
    # The published 6,243,584,032 counts every stored tensor, the 32-entry inv_freq buffer included
    stored = sum(t.numel() for t in model.state_dict().values())
    assert stored == 6_243_584_032
    assert 2 * stored == 12_487_168_064  # fp16 bytes = the index's total_size
    assert model.num_parameters() == 6_243_584_032 - 32  # trainable parameters: inv_freq excluded


def test_qkv_rows_split_query_then_two_key_then_two_value_groups():
    with torch.device("meta"):
        model = ChatGLMForCausalLM(ChatGLMConfig(**CHATGLM3_6B))
    attn = model.transformer.encoder.layers[0].self_attention
    assert attn.split_sizes == (32 * 128, 2 * 128, 2 * 128)
    assert sum(attn.split_sizes) == 4608


def test_config_fields_from_published_json():
    glm4 = ChatGLMConfig(**GLM4_9B_CHAT)
    assert glm4.rope_ratio == 500 and glm4.kv_groups == 2 and glm4.layernorm_epsilon == 1.5625e-07
    assert glm4.eos_token_id == [151329, 151336, 151338] and glm4.pad_token_id == 151329
    assert glm4.vocab_size == 151552 and glm4.num_hidden_layers == 40  # HF-standard aliases
    c3 = ChatGLMConfig(**CHATGLM3_6B)
    assert c3.rope_ratio == 1.0 and c3.eos_token_id == 2 and c3.pad_token_id == 0
    assert c3.tie_word_embeddings is False
    assert ChatGLMConfig(multi_query_attention=False).kv_groups == 32


def test_config_roundtrip_keeps_official_names(tmp_path):
    ChatGLMConfig(**GLM4_9B_CHAT).save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    for field in ("num_layers", "padded_vocab_size", "kv_channels", "multi_query_group_num", "rope_ratio"):
        assert f'"{field}"' in text
    back = ChatGLMConfig.from_pretrained(tmp_path)
    assert back.rope_ratio == 500 and back.num_layers == 40 and back.model_type == "chatglm"


@pytest.mark.parametrize("field, value", [("rmsnorm", False), ("pre_seq_len", 16), ("quantization_bit", 4),
                                          ("apply_residual_connection_post_layernorm", True)])  # fmt: skip
def test_config_rejects_math_changing_options(field, value):
    with pytest.raises(ValueError, match=field):
        ChatGLMConfig(**{field: value})


def test_official_style_config_json_with_extra_fields_loads(tmp_path):
    """Fields the published config.json carries beyond the math (auto_map, dropouts, vocab_size ...) are accepted."""
    import json

    raw = CHATGLM3_6B | {
        "_name_or_path": "THUDM/chatglm3-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "attention_dropout": 0.0, "hidden_dropout": 0.0, "classifier_dropout": None, "prefix_projection": False,
        "pre_seq_len": None, "quantization_bit": 0, "tie_word_embeddings": False, "transformers_version": "4.27.1",
        "use_cache": True, "vocab_size": 65024,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = ChatGLMConfig.from_json_file(tmp_path / "config.json")
    assert config.padded_vocab_size == 65024 and config.num_layers == 28 and config.tie_word_embeddings is False
    with torch.device("meta"):
        assert ChatGLMForCausalLM(config).num_parameters() == 6_243_584_000
