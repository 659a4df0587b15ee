"""Settings of the model stack: which checkpoint, how it is adapted, how it samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class LoraSettings:
    enabled: bool = True  # False: full fine-tuning with a frozen copy as the reference
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's default (ChatGLM: qkv, dense, MLP)
    # sample with the adapter folded into a copy of the adapted weights: one matmul per layer
    # instead of three per decoding step, for one extra copy of those weights while sampling
    merge_for_sampling: bool = True


@dataclass
class ModelConfig:
    family: str = "chatglm"  # chatglm (native) | remote (trust_remote_code) | auto (AutoModelForCausalLM)
    path: str = MISSING  # local checkpoint directory
    dtype: str = "float32"  # float32 | bfloat16 | float16
    chat_format: str = "auto"  # auto | chatglm3 | glm4 | plain
    gradient_checkpointing: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    do_sample: bool = True  # False: greedy
