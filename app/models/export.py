"""Merge trained LoRA weights into the base and write a checkpoint in the base's own format.

The output directory looks like the input one: the same weight names (for ChatGLM the published
`transformer.encoder.layers.N...` names), the base's `config.json` with only `torch_dtype`
updated (so `auto_map` and every official field survive), and every other file of the base
(tokenizer files, remote-code .py files, generation config) copied, and the run's prompt
settings (prompt_settings.json: system prompt, instruction, chat format). It loads with
`load_model` (native class) and, for ChatGLM, with the published remote code.

The value head is not part of a causal LM checkpoint and is not exported.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from solver_ppo.data.prompts import read_prompt_settings, write_prompt_settings
from solver_ppo.errors import UserError
from solver_ppo.models.config import LoraSettings, ModelConfig
from solver_ppo.models.policy import PolicyWithValue, build_policy, read_trainable
from solver_ppo.paths import writable_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".index.json")


def merged_model(policy: PolicyWithValue) -> torch.nn.Module:
    """The causal LM with LoRA folded into its weights (consumes the policy's adapter)."""
    if policy.lora_settings is None:
        return policy.model
    return policy.model.merge_and_unload()


def base_dtype(model_dir: Path) -> str:
    """The dtype the base checkpoint declares (config.json torch_dtype), float32 if none."""
    config = json.loads((model_dir / "config.json").read_text())
    dtype = config.get("torch_dtype") or "float32"
    return dtype if dtype in DTYPES else "float32"


def export(
    model_dir: str | Path,
    adapter: str | Path,
    out_dir: str | Path,
    *,
    family: str = "chatglm",
    dtype: str | None = None,
    serialization: str = "safetensors",
    max_shard_size: str = "5GB",
) -> Path:
    """Load the base in `dtype` (default: the base's own), apply the trainable weights, merge, save."""
    from solver_ppo.models.loading import load_model  # the loader pulls in tokenizers; only export needs it here

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json); pass the base checkpoint with --model")
    if out_dir.resolve() == model_dir.resolve():
        raise UserError(f"--out {out_dir} is the base model directory; choose a new directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out {out_dir} exists and is not empty; choose a new directory or empty it")
    if serialization not in ("safetensors", "bin"):
        raise UserError(f"unknown weight format '{serialization}'; use safetensors or bin")
    writable_dir(out_dir, f"--out {out_dir}")
    dtype = dtype or base_dtype(model_dir)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")

    payload = read_trainable(adapter)
    lora = LoraSettings(**payload["lora"]) if payload["lora"] is not None else LoraSettings(enabled=False)
    cfg = ModelConfig(family=family, path=str(model_dir), dtype=dtype, lora=lora)
    loaded = load_model(cfg, torch.device("cpu"))
    policy = build_policy(loaded, cfg)
    policy.load_trainable_state_dict(payload["state_dict"])
    model = merged_model(policy)
    write_checkpoint(model, model_dir, out_dir, dtype=dtype, serialization=serialization, max_shard_size=max_shard_size)
    # the prompts the run trained with travel on (write_checkpoint copied the base's, if it had any)
    run_dir = Path(adapter) if Path(adapter).is_dir() else Path(adapter).parent
    if (settings := read_prompt_settings(run_dir)) is not None:
        write_prompt_settings(out_dir, settings)
    return out_dir


def write_checkpoint(
    model: torch.nn.Module,
    source_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    serialization: str = "safetensors",
    max_shard_size: str = "5GB",
) -> Path:
    """Save `model` in the layout of the checkpoint it was loaded from: its weights under the
    published names, the source's config.json (torch_dtype updated), every other source file."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    dtype = dtype or base_dtype(source_dir)
    model = model.to(DTYPES[dtype])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=serialization == "safetensors", max_shard_size=max_shard_size)
    for src in sorted(source_dir.iterdir()):
        if src.is_file() and src.name != "config.json" and not src.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(src, out_dir / src.name)
    config = json.loads((source_dir / "config.json").read_text())
    config["torch_dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
