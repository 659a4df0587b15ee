"""ChatGLM3 (SentencePiece) and GLM-4 (tiktoken BPE) tokenizers, with no remote code.

Both read `tokenizer.model` from a checkpoint directory and append their special tokens after
the ordinary vocabulary, in the published order, so ids agree with the published tokenizers.
Special-token text inside ordinary text is encoded as plain text (as the published tokenizers do
by default): a user who types "<|user|>" cannot inject a role switch. Chat formats build the
special ids explicitly (app/models/chat.py). Padding is on the left.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import sentencepiece as spm
import tiktoken
from transformers import PreTrainedTokenizer

CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>"]  # fmt: skip
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>"]  # fmt: skip

# The glm-4-9b-chat pre-tokenizer regex, the `pat_str` of ChatGLM4Tokenizer.__init__ in the
# published tokenization_chatglm.py (THUDM/glm-4-9b-chat); it is cl100k_base's pattern.
GLM4_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


class _GLMTokenizerBase(PreTrainedTokenizer):
    """What both families share: specials after the ordinary vocabulary, [gMASK] sop prefix, decoding.

    A subclass provides the ordinary vocabulary through `_ordinary_size`, `_ordinary_vocab`,
    `_ordinary_tokens(text)`, `_ordinary_id(token)`, `_ordinary_token(id)` and `_ordinary_decode(ids)`.
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    specials: list[str]
    sop: str

    def __init__(self, vocab_file: str | Path, padding_side: str = "left", **kwargs):
        """The subclass has loaded its ordinary vocabulary before calling this."""
        self.vocab_file = str(vocab_file)
        n = self._ordinary_size()
        self.special_ids = {token: n + i for i, token in enumerate(self.specials)}
        self.special_tokens_by_id = {i: token for token, i in self.special_ids.items()}
        kwargs.setdefault("additional_special_tokens", list(self.specials))
        kwargs["split_special_tokens"] = True  # special-token text in ordinary text stays text
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(padding_side=padding_side, **kwargs)

    # ---- vocabulary
    @property
    def vocab_size(self) -> int:
        return self._ordinary_size() + len(self.specials)

    def get_vocab(self) -> dict[str, int]:
        return self._ordinary_vocab() | self.special_ids

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self._ordinary_tokens(text)

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.special_ids:
            return self.special_ids[token]
        return self._ordinary_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if index in self.special_tokens_by_id:
            return self.special_tokens_by_id[index]
        if 0 <= index < self._ordinary_size():
            return self._ordinary_token(index)
        return ""  # ids of the model's padded vocabulary beyond the tokenizer have no text

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode([self._convert_token_to_id(t) for t in tokens if t])

    def _decode(self, token_ids: list[int] | int, skip_special_tokens: bool = False, **kwargs) -> str:
        """Runs of ordinary ids are decoded together (multi-byte characters span tokens); specials as text."""
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in skip or i >= self.vocab_size or i < 0:
                continue
            if i in self.special_tokens_by_id:
                parts.append(self._ordinary_decode(run))
                parts.append(self.special_tokens_by_id[i])
                run = []
            else:
                run.append(i)
        parts.append(self._ordinary_decode(run))
        return "".join(parts)

    # ---- the published input layout: [gMASK] sop before the text
    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        ids = [self.special_ids["[gMASK]"], self.special_ids[self.sop]] + token_ids_0
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.eos_token_id]
        return ids

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        out = Path(save_directory) / f"{filename_prefix + '-' if filename_prefix else ''}tokenizer.model"
        if Path(self.vocab_file).resolve() != out.resolve():
            shutil.copyfile(self.vocab_file, out)
        return (str(out),)


class ChatGLM3Tokenizer(_GLMTokenizerBase):
    """chatglm3: SentencePiece pieces, then [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|>
    <|assistant|> <|observation|>. eos is SentencePiece's `</s>`, pad its `<unk>`."""

    specials = CHATGLM3_SPECIALS
    sop = "sop"

    def __init__(self, vocab_file: str | Path, **kwargs):
        self.sp = spm.SentencePieceProcessor(model_file=str(vocab_file))
        kwargs.setdefault("eos_token", self.sp.id_to_piece(self.sp.eos_id()))
        kwargs.setdefault("unk_token", self.sp.id_to_piece(self.sp.unk_id()))
        kwargs.setdefault("pad_token", self.sp.id_to_piece(self.sp.unk_id()))
        super().__init__(vocab_file, **kwargs)

    def _ordinary_size(self) -> int:
        return self.sp.get_piece_size()

    def _ordinary_vocab(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}

    def _ordinary_tokens(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def _ordinary_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)  # unknown pieces map to <unk>

    def _ordinary_token(self, index: int) -> str:
        return self.sp.id_to_piece(index)

    def _ordinary_decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids) if ids else ""


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """`tokenizer.model` of glm-4: one `base64(token) rank` per line."""
    ranks = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    Path(path).write_text("\n".join(lines) + "\n")


class GLM4Tokenizer(_GLMTokenizerBase):
    """glm-4: byte-level BPE through tiktoken, then <|endoftext|> [MASK] [gMASK] [sMASK] <sop> <eop>
    <|system|> <|user|> <|assistant|> <|observation|>. eos and pad are <|endoftext|>.

    Token strings are the token's bytes read as latin-1 (a one-to-one map), so the HF string API
    works for tokens that are not valid UTF-8 on their own.
    """

    specials = GLM4_SPECIALS
    sop = "<sop>"

    def __init__(self, vocab_file: str | Path, **kwargs):
        self.ranks = read_tiktoken_ranks(vocab_file)
        self.encoding = tiktoken.Encoding(name="glm4", pat_str=GLM4_PAT_STR, mergeable_ranks=self.ranks,
                                          special_tokens={})  # fmt: skip
        self.tokens_by_rank = {rank: token for token, rank in self.ranks.items()}
        kwargs.setdefault("eos_token", "<|endoftext|>")
        kwargs.setdefault("pad_token", "<|endoftext|>")
        super().__init__(vocab_file, **kwargs)

    def _ordinary_size(self) -> int:
        return len(self.ranks)

    def _ordinary_vocab(self) -> dict[str, int]:
        return {token.decode("latin-1"): rank for token, rank in self.ranks.items()}

    def _ordinary_tokens(self, text: str) -> list[str]:
        return [self.tokens_by_rank[i].decode("latin-1") for i in self.encoding.encode_ordinary(text)]

    def _ordinary_id(self, token: str) -> int:
        rank = self.ranks.get(token.encode("latin-1"))
        if rank is None:
            raise KeyError(f"token {token!r} is not in {self.vocab_file}")
        return rank

    def _ordinary_token(self, index: int) -> str:
        return self.tokens_by_rank[index].decode("latin-1")

    def _ordinary_decode(self, ids: list[int]) -> str:
        return self.encoding.decode_bytes(ids).decode("utf-8", errors="replace")


TOKENIZER_CLASSES = {  # tokenizer_class in tokenizer_config.json -> our class (published names first)
    "ChatGLMTokenizer": ChatGLM3Tokenizer,
    "ChatGLM4Tokenizer": GLM4Tokenizer,
    "ChatGLM3Tokenizer": ChatGLM3Tokenizer,
    "GLM4Tokenizer": GLM4Tokenizer,
}


def sniff_tokenizer_class(model_file: Path) -> type[_GLMTokenizerBase]:
    """Without a tokenizer_config.json: glm-4's tokenizer.model is text (base64 + rank lines)."""
    head = model_file.read_bytes()[:200]
    try:
        token, rank = head.decode("ascii").splitlines()[0].split()
        base64.b64decode(token, validate=True)
        int(rank)
        return GLM4Tokenizer
    except (UnicodeDecodeError, ValueError, IndexError):
        return ChatGLM3Tokenizer
