"""The published checkpoint layouts of chatglm3-6b and glm-4-9b-chat, written with seeded random weights.

A directory made here is what a user downloads, minus the trained numbers and the remote-code
`.py` files: the published `config.json` values, the published weight names and dtype split over
the published number of shards with the published index file, and a tokenizer file of the
published kind whose special tokens sit at the published ids:

| model | weights | index | tokenizer.model |
|---|---|---|---|
| chatglm3-6b | 7 × `pytorch_model-0000N-of-00007.bin`, float16 | `pytorch_model.bin.index.json` | SentencePiece, 64,789 pieces, specials 64789–64797 |
| glm-4-9b-chat | 10 × `model-000NN-of-00010.safetensors`, bfloat16 | `model.safetensors.index.json` | tiktoken ranks 0–151328, specials from 151329 |

Shards hold whole tensors in the published order (embedding, layers 0..N-1, final norm, head),
split into byte-balanced contiguous runs; where exactly the published files cut between two
tensors is not reproduced. The tokenizers are trained here on the project's synthetic text
(`tiny.default_corpus`) and padded to the published size: SentencePiece with UNUSED pieces,
tiktoken with rank entries that span several pre-tokenizer pieces, so no text ever encodes to
them. Either way the ordinary vocabulary has the published size and the specials the published ids.

Every tensor's values come from its own generator, seeded by (seed, name), so the same seed gives
the same weights whatever the shard count: `shards=1` writes the unsharded twin of a layout.
Weights are made and written one shard at a time: peak memory is one shard, not the model.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from solver_ppo.models.chatglm import CHATGLM3_6B, GLM4_9B_CHAT, ChatGLMConfig, ChatGLMForCausalLM, RotaryEmbedding
from solver_ppo.models.tiny import default_corpus, train_bpe, train_sentencepiece
from solver_ppo.models.tokenizers import write_tiktoken_ranks

INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CHUNK_ELEMENTS = 1 << 26  # random values are drawn in fp32 chunks of this many elements (256 MB)


@dataclass(frozen=True)
class PublishedLayout:
    name: str
    config: dict  # config.json as published (official fields, architectures, auto_map)
    weight_format: str  # bin | safetensors
    n_shards: int
    tokenizer: str  # chatglm3 (SentencePiece) | glm4 (tiktoken)
    ordinary_tokens: int  # tokens before the specials
    tokenizer_config: dict

    @property
    def index_name(self) -> str:
        return "pytorch_model.bin.index.json" if self.weight_format == "bin" else "model.safetensors.index.json"

    def shard_name(self, i: int, n: int) -> str:
        """1-based shard i of n; n == 1: the unsharded file name."""
        if self.weight_format == "bin":
            return "pytorch_model.bin" if n == 1 else f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        return "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"


_COMMON = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "attention_dropout": 0.0, "hidden_dropout": 0.0,
           "classifier_dropout": None, "use_cache": True, "tie_word_embeddings": False}  # fmt: skip
_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}

LAYOUTS: dict[str, PublishedLayout] = {
    "chatglm3-6b": PublishedLayout(
        name="chatglm3-6b",
        config={"_name_or_path": "THUDM/chatglm3-6b", **_COMMON, "auto_map": _AUTO_MAP, **CHATGLM3_6B,
                "pre_seq_len": None, "prefix_projection": False, "quantization_bit": 0},  # fmt: skip
        weight_format="bin",
        n_shards=7,
        tokenizer="chatglm3",
        ordinary_tokens=64789,
        tokenizer_config={"tokenizer_class": "ChatGLMTokenizer", "padding_side": "left", "remove_space": False,
                          "do_lower_case": False, "clean_up_tokenization_spaces": False,
                          "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}},  # fmt: skip
    ),
    "glm-4-9b-chat": PublishedLayout(
        name="glm-4-9b-chat",
        config={"_name_or_path": "THUDM/glm-4-9b-chat", **_COMMON, "auto_map": _AUTO_MAP, **GLM4_9B_CHAT,
                "pre_seq_len": None, "prefix_projection": False},  # fmt: skip
        weight_format="safetensors",
        n_shards=10,
        tokenizer="glm4",
        ordinary_tokens=151329,
        tokenizer_config={"tokenizer_class": "ChatGLM4Tokenizer", "padding_side": "left", "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "do_lower_case": False, "clean_up_tokenization_spaces": False,
                          "model_max_length": 128000,
                          "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]}},  # fmt: skip
    ),
}


def layout_for(name: str) -> PublishedLayout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown published model '{name}'; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def weight_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every stored tensor, in the order the published files hold them (meta device: no memory)."""
    with torch.device("meta"):
        model = ChatGLMForCausalLM(ChatGLMConfig(**config))
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def checkpoint_bytes(config: dict) -> int:
    """Bytes of all stored tensors in the config's torch_dtype (an index's total_size)."""
    itemsize = DTYPES[config["torch_dtype"]].itemsize
    return sum(_numel(shape) * itemsize for _, shape in weight_shapes(config))


def plan_shards(sizes: list[int], n: int) -> list[int]:
    """0-based shard of each tensor: contiguous, byte-balanced runs (by each tensor's midpoint), none empty."""
    if not 1 <= n <= len(sizes):
        raise ValueError(f"cannot split {len(sizes)} tensors into {n} shards")
    total, start, prev, plan = sum(sizes), 0, 0, []
    for i, size in enumerate(sizes):
        k = min(n - 1, int(n * (start + size / 2) / total))
        k = max(k, prev, n - (len(sizes) - i))  # leave at least one tensor for each later shard
        k = min(k, prev + 1 if plan else 0)  # never skip a shard
        plan.append(k)
        prev, start = k, start + size
    return plan


def tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, std: float) -> torch.Tensor:
    """Seeded values for one weight: N(0, std) for matrices and biases, 1 + N(0, std) for norms, the
    exact rotary frequencies for `inv_freq`. Drawn in fp32 chunks, so the temporary stays small."""
    if name == INV_FREQ:
        return RotaryEmbedding(4 * shape[0]).inv_freq.to(dtype)
    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    for begin in range(0, flat.numel(), CHUNK_ELEMENTS):
        end = min(flat.numel(), begin + CHUNK_ELEMENTS)
        chunk = torch.randn(end - begin, generator=generator) * std
        if name.endswith("layernorm.weight"):
            chunk += 1.0
        flat[begin:end] = chunk
    return out


def write_published_layout(
    out_dir: str | Path,
    name: str,
    *,
    seed: int = 0,
    shards: int | None = None,
    overrides: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the layout `name` (see LAYOUTS) into `out_dir` with random weights.

    `shards`: how many weight files (default: the published count; 1: the single-file twin).
    `overrides`: config.json values to change (tests shrink layers and widths; the files, names
    and index logic stay those of the published layout). Returns `out_dir`.
    """
    layout = layout_for(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = layout.config | (overrides or {})
    n = shards or layout.n_shards
    dtype = DTYPES[config["torch_dtype"]]
    shapes = weight_shapes(config)
    sizes = [_numel(shape) * dtype.itemsize for _, shape in shapes]
    plan = plan_shards(sizes, n)
    write_tokenizer(out, layout, seed=seed)
    files = [layout.shard_name(i + 1, n) for i in range(n)]
    std = float(config.get("initializer_range", 0.02))
    for k, file in enumerate(files):
        tensors = {tname: random_tensor(tname, shape, dtype, seed, std) for (tname, shape), s in zip(shapes, plan)
                   if s == k}  # fmt: skip
        if layout.weight_format == "bin":
            torch.save(tensors, out / file)
        else:
            save_file(tensors, out / file, metadata={"format": "pt"})
        del tensors
        if progress:
            progress(f"{file}: {sum(sz for sz, s in zip(sizes, plan) if s == k) / 1e9:.2f} GB")
    if n > 1:
        index = {"metadata": {"total_size": sum(sizes)},
                 "weight_map": {tname: files[s] for (tname, _), s in zip(shapes, plan)}}  # fmt: skip
        (out / layout.index_name).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ----------------------------------------------------------------------------- tokenizers


def write_tokenizer(out: Path, layout: PublishedLayout, seed: int = 0, trained_tokens: int = 2000) -> None:
    """tokenizer.model of the published kind and size, trained on synthetic text, and tokenizer_config.json."""
    corpus = default_corpus(seed)
    if layout.tokenizer == "chatglm3":
        (out / "tokenizer.model").write_bytes(pad_sentencepiece(train_sentencepiece(corpus, trained_tokens),
                                                                layout.ordinary_tokens))  # fmt: skip
    else:
        write_tiktoken_ranks(pad_ranks(train_bpe(corpus, trained_tokens // 4), layout.ordinary_tokens),
                             out / "tokenizer.model")  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(layout.tokenizer_config, indent=2) + "\n")


def pad_sentencepiece(model: bytes, size: int) -> bytes:
    """A SentencePiece model grown to `size` pieces with UNUSED pieces (never produced by encoding)."""
    # transformers' copy of the proto module: sentencepiece's own registers the same proto file name,
    # and one process cannot hold both (the tokenizer loaders use transformers')
    from transformers.convert_slow_tokenizer import import_protobuf

    sentencepiece_model_pb2 = import_protobuf()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    if len(proto.pieces) > size:
        raise ValueError(f"the trained SentencePiece model has {len(proto.pieces)} pieces, more than {size}")
    for i in range(len(proto.pieces), size):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"<unused_{i}>", 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED
    return proto.SerializeToString()


def pad_ranks(ranks: dict[bytes, int], size: int) -> dict[bytes, int]:
    """BPE ranks grown to `size` entries with `<|reserved_N|>` byte strings: each spans several
    pre-tokenizer pieces ("<|", "reserved", "_", digits, "|>"), so no text encodes to them."""
    if len(ranks) > size:
        raise ValueError(f"the trained BPE has {len(ranks)} ranks, more than {size}")
    out = dict(ranks)
    for i in range(len(ranks), size):
        out[f"<|reserved_{i}|>".encode()] = i
    return out

