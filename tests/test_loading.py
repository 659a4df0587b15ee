"""load_model for every family and layout, and its errors, on checkpoints built here."""

import json
import shutil
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from solver_ppo.errors import UserError
from solver_ppo.models.chatglm import ChatGLMForCausalLM
from solver_ppo.models.config import ModelConfig
from solver_ppo.models.loading import RemoteChatGLM, load_model
from solver_ppo.models.tokenizers import ChatGLM3Tokenizer, GLM4Tokenizer

IDS = torch.tensor([[5, 9, 30, 41, 7], [0, 0, 12, 13, 14]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])


def logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tiny_checkpoint_loads_through_the_native_path(tiny_chatglm_dir):
    loaded = load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir)))
    model = loaded.model
    assert type(model) is ChatGLMForCausalLM and not model.training and model.dtype == torch.float32
    assert isinstance(loaded.tokenizer, ChatGLM3Tokenizer) and loaded.tokenizer.padding_side == "left"
    assert loaded.chat.name == "chatglm3" and loaded.chat.stop_token_ids[0] == 2 and loaded.chat.pad_token_id == 0
    stored = load_file(tiny_chatglm_dir / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stored[name]), name
    assert json.loads((tiny_chatglm_dir / "config.json").read_text())["architectures"] == ["ChatGLMModel"]
    # the model and its tokenizer fit together: a chat prompt runs and generates
    prompt = loaded.chat.encode_prompt(loaded.tokenizer, [{"role": "user", "content": "Maximize 3 x"}])
    out = model.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, len(prompt) + 3) and int(out.max()) < model.config.padded_vocab_size


def test_glm4_variant_and_seeded_weights(tmp_path):
    from solver_ppo.models.tiny import make_tiny_chatglm

    a = make_tiny_chatglm(tmp_path / "a", variant="glm4", seed=1)
    b = make_tiny_chatglm(tmp_path / "b", variant="glm4", seed=1)
    assert (a / "tokenizer.model").read_bytes() == (b / "tokenizer.model").read_bytes()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    loaded = load_model(ModelConfig(family="chatglm", path=str(a), dtype="bfloat16"))
    assert isinstance(loaded.tokenizer, GLM4Tokenizer) and loaded.chat.name == "glm4"
    assert loaded.model.dtype == torch.bfloat16 and loaded.model.config.rope_ratio == 500
    cfg = json.loads((a / "config.json").read_text())
    ids = loaded.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"])
    assert cfg["eos_token_id"] == ids and cfg["pad_token_id"] == ids[0]
    assert loaded.chat.stop_token_ids == ids


@pytest.mark.parametrize("layout", ["bin_index_fp16", "safetensors_index_bf16", "single_bin_fp32"])
def test_published_layouts_and_dtypes(tiny_chatglm_dir, tmp_path, layout):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_chatglm_dir / f, ckpt / f)
    state = load_file(tiny_chatglm_dir / "model.safetensors")
    stored_dtype = {"bin_index_fp16": torch.float16, "safetensors_index_bf16": torch.bfloat16}.get(layout, torch.float32)
    state = {k: v.to(stored_dtype) for k, v in state.items()}
    names = sorted(state)
    if layout == "single_bin_fp32":
        torch.save(state, ckpt / "pytorch_model.bin")
    else:
        ext, index_name = (".bin", "pytorch_model.bin.index.json") if layout.startswith("bin") else (
            ".safetensors", "model.safetensors.index.json")  # fmt: skip
        prefix = "pytorch_model" if ext == ".bin" else "model"
        halves = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for i, part in enumerate(halves, start=1):
            shard = f"{prefix}-0000{i}-of-00002{ext}"
            tensors = {k: state[k] for k in part}
            torch.save(tensors, ckpt / shard) if ext == ".bin" else save_file(tensors, ckpt / shard)
            weight_map |= {k: shard for k in part}
        (ckpt / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    model = load_model(ModelConfig(family="chatglm", path=str(ckpt), dtype="float32")).model
    assert model.dtype == torch.float32
    reference = load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir))).model
    with torch.no_grad():  # the same weights, rounded through the stored dtype
        for p in reference.parameters():
            p.copy_(p.to(stored_dtype).float())
    torch.testing.assert_close(logits(model), logits(reference))


# ----------------------------------------------------------------------------- errors


def test_error_missing_directory_and_config(tmp_path):
    with pytest.raises(UserError, match="checkpoint directory not found"):
        load_model(ModelConfig(family="chatglm", path=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="no config.json"):
        load_model(ModelConfig(family="chatglm", path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="config.json is a file; pass the checkpoint directory"):
        load_model(ModelConfig(family="chatglm", path=str(tmp_path / "config.json")))


def test_error_unknown_dtype_and_family(tiny_chatglm_dir):
    with pytest.raises(UserError, match="model.dtype 'fp8'"):
        load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir), dtype="fp8"))
    with pytest.raises(UserError, match="model.family 'glm'"):
        load_model(ModelConfig(family="glm", path=str(tiny_chatglm_dir)))


def test_error_unknown_architecture_for_chatglm_family(tiny_chatglm_dir, tmp_path):
    ckpt = copy_dir(tiny_chatglm_dir, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text()) | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"config.json: model_type 'llama' .*LlamaForCausalLM.*model.family=auto"):
        load_model(ModelConfig(family="chatglm", path=str(ckpt)))


def test_error_unsupported_config_value(tiny_chatglm_dir, tmp_path):
    ckpt = copy_dir(tiny_chatglm_dir, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text()) | {"rmsnorm": False}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"config.json: .*rmsnorm=False"):
        load_model(ModelConfig(family="chatglm", path=str(ckpt)))


def test_error_missing_shard_named_in_index(tiny_chatglm_dir, tmp_path):
    ckpt = copy_dir(tiny_chatglm_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    save_file(state, ckpt / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state}
    weight_map["transformer.output_layer.weight"] = "model-00002-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match=r"index.json: shard 'model-00002-of-00002.safetensors' \(holding "
                                        r"'transformer.output_layer.weight'"):  # fmt: skip
        load_model(ModelConfig(family="chatglm", path=str(ckpt)))


def test_error_shape_mismatch_names_weight_and_shapes(tiny_chatglm_dir, tmp_path):
    ckpt = copy_dir(tiny_chatglm_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    name = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"
    state[name] = torch.zeros(64, 100)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(UserError, match=rf"model.safetensors: weight '{name}' has shape \[64, 100\], expected \[64, 128\]"):
        load_model(ModelConfig(family="chatglm", path=str(ckpt)))


def test_error_missing_weight_and_no_weights(tiny_chatglm_dir, tmp_path):
    ckpt = copy_dir(tiny_chatglm_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    del state["transformer.encoder.final_layernorm.weight"]
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(UserError, match="no weight 'transformer.encoder.final_layernorm.weight'"):
        load_model(ModelConfig(family="chatglm", path=str(ckpt)))
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights found"):
        load_model(ModelConfig(family="chatglm", path=str(ckpt)))


def test_missing_inv_freq_is_accepted(tiny_chatglm_dir, tmp_path):
    ckpt = copy_dir(tiny_chatglm_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    del state["transformer.rotary_pos_emb.inv_freq"]
    save_file(state, ckpt / "model.safetensors")
    model = load_model(ModelConfig(family="chatglm", path=str(ckpt))).model
    reference = load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir))).model
    torch.testing.assert_close(logits(model), logits(reference))


# ----------------------------------------------------------------------------- auto family


def test_auto_family_loads_a_llama_with_plain_chat(tiny_chatglm_dir, tmp_path):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    llama.save_pretrained(tmp_path)
    LlamaTokenizer(vocab_file=str(tiny_chatglm_dir / "tokenizer.model"), legacy=False).save_pretrained(tmp_path)
    loaded = load_model(ModelConfig(family="auto", path=str(tmp_path)))
    assert type(loaded.model) is LlamaForCausalLM and not loaded.model.training
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert loaded.chat.name == "plain" and loaded.chat.stop_token_ids == [loaded.tokenizer.eos_token_id]
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, llama.eval()(ids).logits)


def test_auto_family_reports_unloadable_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(UserError, match="cannot load with transformers"):
        load_model(ModelConfig(family="auto", path=str(tmp_path)))


# ----------------------------------------------------------------------------- remote family

FAKE_CONFIG = '''
from transformers import PretrainedConfig


class FakeGLMConfig(PretrainedConfig):
    model_type = "fakeglm"

    def __init__(self, vocab_size=64, hidden_size=16, num_layers=2, **kwargs):
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        super().__init__(**kwargs)
'''

# Mimics the published chatglm3 code's layout: seq-first inside, hidden states seq-first with the
# last entry taken before the final norm, the head at transformer.output_layer, logits batch-first.
FAKE_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_fakeglm import FakeGLMConfig


class Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size)
        self.gradient_checkpointing = False

    def forward(self, x, position_ids):  # x (T, B, C)
        states = ()
        for layer in self.layers:
            states += (x,)
            context = x.cumsum(0) / torch.arange(1, x.shape[0] + 1).view(-1, 1, 1)  # causal mean over seq
            x = x + torch.tanh(layer(context)) + 0.01 * position_ids.t().unsqueeze(-1)
        states += (x,)
        return self.final_layernorm(x), states


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embedding = Embedding(config)
        self.encoder = Encoder(config)
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, return_dict=None):
        if inputs_embeds is None:
            inputs_embeds = self.embedding.word_embeddings(input_ids).transpose(0, 1)
        T, B = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(T).expand(B, T)
        x, states = self.encoder(inputs_embeds, position_ids)
        return BaseModelOutputWithPast(last_hidden_state=x, past_key_values=None,
                                       hidden_states=states if output_hidden_states else None)


class FakeGLMForConditionalGeneration(PreTrainedModel):
    config_class = FakeGLMConfig

    def __init__(self, config):
        super().__init__(config)
        self.transformer = Transformer(config)

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, **kwargs):
        out = self.transformer(input_ids, position_ids, attention_mask, output_hidden_states=True)
        logits = self.transformer.output_layer(out.last_hidden_state).transpose(0, 1)
        return CausalLMOutputWithPast(logits=logits, hidden_states=out.hidden_states)
'''


@pytest.fixture(scope="module")
def fake_remote_dir(tmp_path_factory, tiny_chatglm_dir):
    path = tmp_path_factory.mktemp("fake_remote")
    (path / "configuration_fakeglm.py").write_text(textwrap.dedent(FAKE_CONFIG))
    (path / "modeling_fakeglm.py").write_text(textwrap.dedent(FAKE_MODEL))
    config = {"model_type": "fakeglm", "vocab_size": 520, "hidden_size": 16, "num_layers": 2,
              "architectures": ["FakeGLMForConditionalGeneration"], "eos_token_id": 2, "pad_token_id": 0,
              "auto_map": {"AutoConfig": "configuration_fakeglm.FakeGLMConfig",
                           "AutoModelForCausalLM": "modeling_fakeglm.FakeGLMForConditionalGeneration"}}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    state = {"transformer.embedding.word_embeddings.weight": torch.randn(520, 16),
             "transformer.output_layer.weight": torch.randn(520, 16),
             "transformer.encoder.final_layernorm.weight": torch.rand(16) + 0.5,
             "transformer.encoder.final_layernorm.bias": torch.zeros(16)}  # fmt: skip
    for i in range(2):
        state |= {f"transformer.encoder.layers.{i}.weight": torch.randn(16, 16),
                  f"transformer.encoder.layers.{i}.bias": torch.zeros(16)}  # fmt: skip
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_chatglm_dir / f, path / f)
    return path


def test_remote_family_is_batch_first_with_output_layer_head(fake_remote_dir):
    loaded = load_model(ModelConfig(family="remote", path=str(fake_remote_dir)))
    model = loaded.model
    assert isinstance(model, RemoteChatGLM) and model.seq_first
    assert model.get_output_embeddings() is model.inner.transformer.output_layer
    assert loaded.chat.name == "chatglm3"
    ids = torch.tensor([[5, 9, 30, 41, 7], [4, 8, 12, 13, 14], [6, 6, 6, 6, 6]])  # B=3, T=5: layouts differ
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        native = model.inner(ids)  # the remote model's own (batch-first) logits
        backbone = model.inner.transformer(ids, output_hidden_states=True)
    assert out.logits.shape == (3, 5, 520)
    torch.testing.assert_close(out.logits, native.logits)
    assert len(out.hidden_states) == 3 and all(h.shape == (3, 5, 16) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], backbone.last_hidden_state.transpose(0, 1))  # after norm
    torch.testing.assert_close(out.hidden_states[0], backbone.hidden_states[0].transpose(0, 1))
    torch.testing.assert_close(model.get_output_embeddings()(out.hidden_states[-1]), out.logits)
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    assert generated.shape == (3, 7) and torch.equal(generated[:, 5], out.logits[:, -1].argmax(-1))


def test_remote_family_positions_follow_the_mask(fake_remote_dir):
    model = load_model(ModelConfig(family="remote", path=str(fake_remote_dir))).model
    ids, mask = torch.tensor([[0, 0, 12, 13, 14]]), torch.tensor([[0, 0, 1, 1, 1]])
    with torch.no_grad():
        derived = model(ids, attention_mask=mask).logits
        explicit = model(ids, attention_mask=mask, position_ids=torch.tensor([[0, 0, 0, 1, 2]])).logits
        remote_default = model.inner(ids).logits  # the remote code's own positions 0..n-1
    torch.testing.assert_close(derived, explicit)
    assert not torch.allclose(derived, remote_default)
