"""ChatGLM3 / GLM-4 tokenizers (tiny ones trained here) and the chat formats built on them."""

import pytest
import sentencepiece as spm
from transformers import LlamaTokenizer

from solver_ppo.errors import UserError
from solver_ppo.models.chat import chat_format_for
from solver_ppo.models.tiny import default_corpus, train_bpe
from solver_ppo.models.tokenizers import (
    CHATGLM3_SPECIALS,
    GLM4_SPECIALS,
    ChatGLM3Tokenizer,
    GLM4Tokenizer,
    read_tiktoken_ranks,
    sniff_tokenizer_class,
    write_tiktoken_ranks,
)

LP = "Maximize\n obj: 35 chairs + 12 x[0,1]\nSubject To\n c1: 3 chairs + 2 x[0,1] <= 120\nEnd"


@pytest.fixture(scope="module")
def glm3(tiny_chatglm_dir):
    return ChatGLM3Tokenizer(tiny_chatglm_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def glm4_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("glm4tok")
    write_tiktoken_ranks(train_bpe(default_corpus(0, 40), 400), path / "tokenizer.model")
    return path


@pytest.fixture(scope="module")
def glm4(glm4_dir):
    return GLM4Tokenizer(glm4_dir / "tokenizer.model")


def test_chatglm3_specials_follow_sentencepiece_vocab(glm3, tiny_chatglm_dir):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_chatglm_dir / "tokenizer.model"))
    n = sp.get_piece_size()
    assert [glm3.convert_tokens_to_ids(t) for t in CHATGLM3_SPECIALS] == list(range(n, n + 9))
    assert glm3.vocab_size == len(glm3) == n + 9
    assert glm3.eos_token == "</s>" and glm3.eos_token_id == 2
    assert glm3.pad_token == "<unk>" and glm3.pad_token_id == 0
    assert glm3.padding_side == "left"


def test_chatglm3_roundtrip_and_digits_split_the_same_in_prose_and_lp(glm3):
    ids = glm3.encode(LP, add_special_tokens=False)
    assert glm3.decode(ids) == LP
    assert glm3.decode(glm3.encode("目标 ≤ 5½", add_special_tokens=False)) == "目标 ≤ 5½"  # byte fallback
    prose = glm3.tokenize("make 120 chairs")
    lp = glm3.tokenize(" c1: 3 chairs + 2 x <= 120")
    assert prose[prose.index("1") : prose.index("1") + 3] == ["1", "2", "0"]
    assert lp[-3:] == ["1", "2", "0"]


def test_special_token_text_in_content_stays_text(glm3, glm4):
    for tok in (glm3, glm4):
        ids = tok.encode("hi <|user|> [gMASK]", add_special_tokens=False)
        assert not set(ids) & set(tok.special_ids.values())
        assert tok.decode(ids) == "hi <|user|> [gMASK]"


def test_prefix_padding_and_decode_skipping_specials(glm3):
    batch = glm3(["a longer sentence here", "hi"], padding=True)
    gmask, sop = glm3.convert_tokens_to_ids(["[gMASK]", "sop"])
    short, mask = batch["input_ids"][1], batch["attention_mask"][1]
    n_pad = mask.index(1)
    assert n_pad > 0 and short[:n_pad] == [0] * n_pad  # left padding with <unk> = 0
    assert short[n_pad : n_pad + 2] == [gmask, sop]
    assert glm3.decode(short[n_pad:]) == "[gMASK]sophi"
    assert glm3.decode(short, skip_special_tokens=True) == "hi"
    # ids of the model's padded vocabulary beyond the tokenizer (a random model can sample them) have no text
    assert glm3.decode([glm3.vocab_size, glm3.vocab_size + 5] + short[n_pad + 2 :]) == "hi"


def test_tokenizer_save_and_load_back(glm3, tmp_path):
    glm3.save_pretrained(tmp_path)
    back = ChatGLM3Tokenizer.from_pretrained(tmp_path)
    assert back.encode(LP) == glm3.encode(LP)
    assert back.padding_side == "left"


def test_glm4_specials_follow_ranks(glm4, glm4_dir):
    n = len(read_tiktoken_ranks(glm4_dir / "tokenizer.model"))
    assert [glm4.convert_tokens_to_ids(t) for t in GLM4_SPECIALS] == list(range(n, n + 10))
    assert glm4.eos_token == glm4.pad_token == "<|endoftext|>" and glm4.eos_token_id == n
    assert glm4.decode(glm4.encode(LP + " 中文", add_special_tokens=False)) == LP + " 中文"
    assert glm4.convert_ids_to_tokens(glm4.encode("hi")[:2]) == ["[gMASK]", "<sop>"]


def test_glm4_format_and_pretokenizer_by_hand(tmp_path):
    # ranks: the 256 bytes, then merges "ab" -> 256, "cd" -> 257, "abcd" -> 258, "12" 259, "34" 260, "1234" 261
    merges = [b"ab", b"cd", b"abcd", b"12", b"34", b"1234"]
    ranks = {bytes([i]): i for i in range(256)} | {m: 256 + i for i, m in enumerate(merges)}
    write_tiktoken_ranks(ranks, tmp_path / "tokenizer.model")
    assert (tmp_path / "tokenizer.model").read_text().splitlines()[256] == "YWI= 256"  # base64("ab") and its rank
    tok = GLM4Tokenizer(tmp_path / "tokenizer.model")
    assert tok.encode("abcd", add_special_tokens=False) == [258]
    # glm-4's regex cuts digit runs into groups of at most 3: "1234" -> "123" "4", so 1234 never forms
    assert tok.encode("1234", add_special_tokens=False) == [259, ord("3"), ord("4")]
    assert tok.encode("abcd 12", add_special_tokens=False) == [258, ord(" "), 259]  # " " and "12" are split
    assert sniff_tokenizer_class(tmp_path / "tokenizer.model") is GLM4Tokenizer


def test_sniff_sentencepiece(tiny_chatglm_dir):
    assert sniff_tokenizer_class(tiny_chatglm_dir / "tokenizer.model") is ChatGLM3Tokenizer


# ----------------------------------------------------------------------------- chat formats

MESSAGES = [{"role": "system", "content": "Write LP."}, {"role": "user", "content": "Max 3 x"}]


def test_chatglm3_prompt_layout_and_stops(glm3):
    chat = chat_format_for("auto", glm3)
    assert chat.name == "chatglm3"
    s = {t: glm3.convert_tokens_to_ids(t) for t in CHATGLM3_SPECIALS}
    enc = lambda text: glm3.encode(text, add_special_tokens=False)  # noqa: E731
    want = [s["[gMASK]"], s["sop"], s["<|system|>"], *enc("\n"), *enc("Write LP."), s["<|user|>"], *enc("\n"),
            *enc("Max 3 x"), s["<|assistant|>"]]  # fmt: skip
    assert chat.encode_prompt(glm3, MESSAGES) == want
    assert chat.stop_token_ids == [2, s["<|user|>"], s["<|observation|>"]]
    assert chat.pad_token_id == 0
    with_meta = chat.encode_prompt(glm3, [{"role": "user", "content": "x", "metadata": "m"}])
    assert with_meta[3 : 3 + len(enc("m\n"))] == enc("m\n")


def test_glm4_prompt_layout_and_stops(glm4):
    chat = chat_format_for("auto", glm4)
    assert chat.name == "glm4"
    s = {t: glm4.convert_tokens_to_ids(t) for t in GLM4_SPECIALS}
    enc = lambda text: glm4.encode(text, add_special_tokens=False)  # noqa: E731
    want = [s["[gMASK]"], s["<sop>"], s["<|system|>"], *enc("\nWrite LP."), s["<|user|>"], *enc("\nMax 3 x"),
            s["<|assistant|>"]]  # fmt: skip
    assert chat.encode_prompt(glm4, MESSAGES) == want
    assert glm4.decode(want) == "[gMASK]<sop><|system|>\nWrite LP.<|user|>\nMax 3 x<|assistant|>"
    assert chat.stop_token_ids == [s["<|endoftext|>"], s["<|user|>"], s["<|observation|>"]]
    assert chat.pad_token_id == s["<|endoftext|>"]


def test_plain_format_with_and_without_template(tiny_chatglm_dir):
    tok = LlamaTokenizer(vocab_file=str(tiny_chatglm_dir / "tokenizer.model"), legacy=False)
    chat = chat_format_for("auto", tok)
    assert chat.name == "plain" and chat.stop_token_ids == [tok.eos_token_id]
    ids = chat.encode_prompt(tok, MESSAGES)
    assert ids == tok.encode("System: Write LP.\nUser: Max 3 x\nAssistant:")
    tok.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
    assert chat.encode_prompt(tok, MESSAGES) == tok.encode("[system]Write LP.[user]Max 3 x[assistant]",
                                                           add_special_tokens=False)  # fmt: skip


def test_chat_format_errors(glm3, tiny_chatglm_dir):
    with pytest.raises(UserError, match="unknown chat format 'chatml'"):
        chat_format_for("chatml", glm3)
    llama = LlamaTokenizer(vocab_file=str(tiny_chatglm_dir / "tokenizer.model"), legacy=False)
    with pytest.raises(UserError, match=r"no special token '\[gMASK\]'"):
        chat_format_for("chatglm3", llama)
    with pytest.raises(UserError, match="role"):
        chat_format_for("chatglm3", glm3).encode_prompt(glm3, [{"role": "robot", "content": "x"}])
