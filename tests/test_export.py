"""`python -m app export`: LoRA merged into a tiny ChatGLM loads back with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from solver_ppo.cli import main
from solver_ppo.models.config import LoraSettings, ModelConfig
from solver_ppo.models.generation import positions_from_mask
from solver_ppo.models.loading import load_model
from solver_ppo.models.policy import build_policy

IDS = torch.tensor([[0, 0, 5, 17, 33, 80, 9], [12, 40, 41, 42, 43, 44, 45]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, position_ids=positions_from_mask(MASK)).logits


def trained_policy(model_dir: Path, lora: LoraSettings):
    """A policy whose trainable weights are far from their init (as after training)."""
    cfg = ModelConfig(family="chatglm", path=str(model_dir), lora=lora)
    policy = build_policy(load_model(cfg), cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.trainable_state_dict().values():
            p.add_(torch.randn_like(p) * 0.05)
    return policy


def weight_names(model_dir: Path) -> set[str]:
    names = set()
    for file in model_dir.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names |= set(f.keys())
    for file in model_dir.glob("*.bin"):
        names |= set(torch.load(file, map_location="cpu", weights_only=True))
    return names


@pytest.mark.parametrize("lora", [LoraSettings(r=4, alpha=8), LoraSettings(enabled=False)], ids=["lora", "full"])
def test_export_loads_back_with_the_policy_logits(tiny_chatglm_dir, tmp_path, lora, capsys):
    policy = trained_policy(tiny_chatglm_dir, lora)
    want = logits(policy.causal_lm)
    base = logits(load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir))).model)
    assert (want - base).abs().max() > 1e-3  # the adapter really changes the model
    policy.save_trainable(tmp_path / "run" / "trainable.pt")

    out = tmp_path / "merged"
    assert main(["export", "--model", str(tiny_chatglm_dir), "--adapter", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    merged = load_model(ModelConfig(family="chatglm", path=str(out))).model
    torch.testing.assert_close(logits(merged), want, atol=1e-5, rtol=0)

    # official layout: same weight names, the base's config.json fields, tokenizer files alongside
    assert weight_names(out) == weight_names(tiny_chatglm_dir)
    assert "transformer.encoder.layers.0.self_attention.query_key_value.weight" in weight_names(out)
    assert not any("lora" in n for n in weight_names(out))
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_chatglm_dir / "config.json").read_text())
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tiny_chatglm_dir / name).read_bytes()


def test_export_sharded_bin_in_bfloat16(tiny_chatglm_dir, tmp_path):
    policy = trained_policy(tiny_chatglm_dir, LoraSettings(r=4, alpha=8))
    want = logits(policy.causal_lm)
    policy.save_trainable(tmp_path / "trainable.pt")
    out = tmp_path / "merged"
    code = main(["export", "--model", str(tiny_chatglm_dir), "--adapter", str(tmp_path / "trainable.pt"),
                 "--out", str(out), "--format", "bin", "--max-shard-size", "100KB", "--dtype", "bfloat16"])
    assert code == 0
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not list(out.glob("*.safetensors"))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert next(iter(torch.load(out / sorted(shards)[0], weights_only=True).values())).dtype == torch.bfloat16
    merged = load_model(ModelConfig(family="chatglm", path=str(out), dtype="float32")).model
    # bf16 weights: close to the fp32 policy, not equal
    assert (logits(merged) - want).abs().max() < 0.05 * want.abs().max()


def test_export_errors(tiny_chatglm_dir, tmp_path, capsys):
    def export(adapter, out=tmp_path / "o") -> str:
        code = main(["export", "--model", str(tiny_chatglm_dir), "--adapter", str(adapter), "--out", str(out)])
        assert code == 2
        return capsys.readouterr().err

    assert "adapter file not found" in export(tmp_path / "missing.pt")

    # an adapter trained on a differently shaped base: the key and both shapes are named
    from solver_ppo.models.tiny import make_tiny_chatglm

    other = make_tiny_chatglm(tmp_path / "other", hidden_size=32, num_heads=4, ffn_hidden_size=64)
    trained_policy(other, LoraSettings(r=4, alpha=8)).save_trainable(tmp_path / "other.pt")
    err = export(tmp_path / "other.pt")
    assert "shape" in err and "(4, 32) in the file but (4, 64) in this model" in err and "lora_A" in err

    good = tmp_path / "good.pt"
    trained_policy(tiny_chatglm_dir, LoraSettings(r=4, alpha=8)).save_trainable(good)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    assert "not empty" in export(good, tmp_path / "busy")
    assert "base model directory" in export(good, tiny_chatglm_dir)
    blocked = tmp_path / "busy" / "x" / "out"
    assert f"--out {blocked}: cannot write in {blocked} (Not a directory)" in export(good, blocked)
    code = main(["export", "--model", str(tmp_path / "nodir"), "--adapter", str(good), "--out", str(tmp_path / "o")])
    assert code == 2 and "not a model directory" in capsys.readouterr().err
