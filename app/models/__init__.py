"""Architectures, checkpoints, tokenizers, LoRA and generation: the only place that knows ChatGLM."""
