"""Tiny ChatGLM checkpoints for tests and the quick start: same files, same loading path as a real one.

`make_tiny_chatglm` writes config.json (official field names), model.safetensors (seeded random
init, published weight names) and a tokenizer trained here on project text: for chatglm3 a
SentencePiece model with the ChatGLM specials appended, for glm4 a byte-level BPE in glm-4's
tiktoken `tokenizer.model` format. Digits are split one by one (chatglm3) so numbers tokenize the
same way in word problems and in LP text.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

import regex
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from solver_ppo.models.chatglm import ChatGLMConfig, ChatGLMForCausalLM
from solver_ppo.models.tokenizers import CHATGLM3_SPECIALS, GLM4_PAT_STR, GLM4_SPECIALS, write_tiktoken_ranks

VARIANTS = ("chatglm3", "glm4")


def default_corpus(seed: int = 0, n_problems: int = 150) -> list[str]:
    """Optimization-modelling sentences and LP snippets (CPLEX LP format), drawn from templates."""
    rng = random.Random(seed)
    goods = ["chairs", "tables", "desks", "bread", "cakes", "steel", "paint", "boxes", "shirts", "lamps"]
    resources = ["labor", "wood", "machine time", "flour", "sugar", "storage", "energy", "budget"]
    lines = [
        "Formulate a linear program and write it in LP format.",
        "Maximize the total profit subject to the resource constraints.",
        "Minimize the total cost while meeting every demand.",
        "Each variable is nonnegative. Some variables must be integer.",
        "The optimal objective value is reported by the solver.",
        "Write the model between ```lp and ``` fences.",
        "A factory produces several products using limited resources.",
        "A diet must provide at least the required amount of each nutrient.",
        "Ship goods from warehouses to stores at minimum transportation cost.",
        "Assign workers to tasks so that every task is done exactly once.",
        "Select items for the knapsack without exceeding its capacity.",
    ]
    for _ in range(n_problems):
        a, b = rng.sample(goods, 2)
        r1, r2 = rng.sample(resources, 2)
        pa, pb = rng.randint(2, 90), rng.randint(2, 90)
        c = [rng.randint(1, 9) for _ in range(4)]
        cap1, cap2 = rng.randint(20, 900), rng.randint(20, 900)
        sense, verb = rng.choice([("Maximize", "profit"), ("Minimize", "cost")])
        lines.append(
            f"A shop makes {a} and {b}. Each unit of {a} gives a {verb} of {pa} dollars and each unit of "
            f"{b} gives {pb} dollars. One unit of {a} needs {c[0]} hours of {r1} and {c[1]} units of {r2}; "
            f"one unit of {b} needs {c[2]} hours of {r1} and {c[3]} units of {r2}. There are {cap1} hours "
            f"of {r1} and {cap2} units of {r2} available. How many of each should be made?"
        )
        x, y = a.replace(" ", "_"), b.replace(" ", "_")
        kind = rng.choice(["General", "Binary", "Bounds"])
        tail = f"{kind}\n {x} {y}\n" if kind != "Bounds" else f"Bounds\n 0 <= {x} <= {cap1}\n {y} >= 0\n"
        lines.append(
            f"{sense}\n obj: {pa} {x} + {pb} {y}\nSubject To\n c1: {c[0]} {x} + {c[2]} {y} <= {cap1}\n"
            f" c2: {c[1]} {x} + {c[3]} {y} <= {cap2}\n{tail}End"
        )
        lines.append(f"The optimal {verb} is {rng.randint(10, 9999)}.{rng.randint(0, 99)} with x[{c[0]},{c[1]}] = {c[2]}.")
    return lines


def train_sentencepiece(corpus: list[str], vocab_size: int) -> bytes:
    """A SentencePiece BPE model (unk 0, bos 1, eos 2 as in chatglm3) with byte fallback and split digits."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may not support the full size
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def train_bpe(corpus: list[str], vocab_size: int) -> dict[bytes, int]:
    """Byte-level BPE ranks (256 single bytes, then merges by pair frequency) over glm-4's pre-tokenizer."""
    pattern = regex.compile(GLM4_PAT_STR)
    words = Counter(tuple(bytes([b]) for b in piece.encode()) for text in corpus for piece in pattern.findall(text))
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab_size:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent, ties by bytes
        ranks.setdefault(a + b, len(ranks))
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return ranks


def make_tiny_chatglm(
    out_dir: str | Path,
    variant: str = "chatglm3",
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    kv_groups: int = 2,
    ffn_hidden_size: int = 128,
    vocab_size: int = 512,
    corpus: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny checkpoint directory; `vocab_size` is the model's padded vocabulary (tokenizer ≤ it)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    if hidden_size % num_heads or (hidden_size // num_heads) % 4:
        raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} must give a head dim divisible by 4")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else default_corpus(seed)
    specials = CHATGLM3_SPECIALS if variant == "chatglm3" else GLM4_SPECIALS

    if variant == "chatglm3":
        sp_model = train_sentencepiece(corpus, vocab_size - len(specials))
        (out / "tokenizer.model").write_bytes(sp_model)
        n_ordinary = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
        eos_token_id, pad_token_id = 2, 0
        tokenizer_config = {"tokenizer_class": "ChatGLMTokenizer", "eos_token": "</s>", "pad_token": "<unk>"}
    else:
        ranks = train_bpe(corpus, vocab_size - len(specials))
        write_tiktoken_ranks(ranks, out / "tokenizer.model")
        n_ordinary = len(ranks)
        ids = {token: n_ordinary + i for i, token in enumerate(specials)}
        eos_token_id = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
        pad_token_id = ids["<|endoftext|>"]
        tokenizer_config = {"tokenizer_class": "ChatGLM4Tokenizer", "eos_token": "<|endoftext|>",
                            "pad_token": "<|endoftext|>"}  # fmt: skip
    if n_ordinary + len(specials) > vocab_size:
        raise ValueError(f"tokenizer has {n_ordinary + len(specials)} tokens, more than vocab_size {vocab_size}")
    seq_length = 2048
    tokenizer_config |= {"padding_side": "left", "clean_up_tokenization_spaces": False, "model_max_length": seq_length}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    config = ChatGLMConfig(
        num_layers=num_layers, padded_vocab_size=vocab_size, hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
        kv_channels=hidden_size // num_heads, num_attention_heads=num_heads, multi_query_attention=True,
        multi_query_group_num=kv_groups, seq_length=seq_length, layernorm_epsilon=1e-5,
        rope_ratio=1.0 if variant == "chatglm3" else 500.0, rmsnorm=True, post_layer_norm=True, add_qkv_bias=True,
        add_bias_linear=False, apply_residual_connection_post_layernorm=False, apply_query_key_layer_scaling=True,
        attention_softmax_in_fp32=True, fp32_residual_connection=False, original_rope=True,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, torch_dtype="float32",
        architectures=["ChatGLMModel"],
    )  # fmt: skip
    config.to_json_file(out / "config.json")  # official fields + the non-default generic ones
    torch.manual_seed(seed)
    model = ChatGLMForCausalLM(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    return out
