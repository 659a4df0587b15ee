"""Chat formats: how a conversation becomes prompt token ids, and which tokens end a reply.

Messages are dicts with `role` (system | user | assistant), `content` and optionally
`metadata` (ChatGLM's text after the role token; usually empty). The prompt always ends with the
generation prompt, so the model's next token starts the assistant's reply.

- chatglm3: [gMASK] sop, then per message <|role|> + encode(metadata + "\\n") + encode(content),
  then <|assistant|>. Stops at eos, <|user|>, <|observation|>.
- glm4:     [gMASK] <sop>, then per message <|role|> + encode(metadata + "\\n" + content), then
  <|assistant|> (the published template renders "<|role|>{metadata}\\n{content}" and tokenizes
  the text between special tokens as one piece). Stops at <|endoftext|>, <|user|>, <|observation|>.
- plain:    the tokenizer's own chat_template if it has one, else "User: ...\\nAssistant:" lines.
  Stops at eos.

Multi-turn episodes (`rollout.turns`) append the evaluation's feedback after each answer as an
<|observation|> message (chatglm3, glm4) or a user message (plain), then <|assistant|>.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from solver_ppo.errors import UserError

FORMATS = ("chatglm3", "glm4", "plain")
ROLES = ("system", "user", "assistant")


@dataclass
class ChatFormat:
    name: str  # chatglm3 | glm4 | plain
    stop_token_ids: list[int]
    pad_token_id: int
    special_ids: dict[str, int] = field(default_factory=dict)  # ChatGLM's [gMASK], sop, role tokens

    def encode_prompt(self, tokenizer, messages: list[dict]) -> list[int]:
        for i, message in enumerate(messages):
            if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise UserError(f"chat message {i} must have role in {ROLES} and string content, got {message!r}")
        if self.name == "plain":
            return _plain_prompt(tokenizer, messages)
        special = self.special_ids
        ids = [special["[gMASK]"], special["sop" if self.name == "chatglm3" else "<sop>"]]
        for m in messages:
            ids.append(special[f"<|{m['role']}|>"])
            metadata = m.get("metadata") or ""
            if self.name == "chatglm3":
                ids += _encode(tokenizer, metadata + "\n") + _encode(tokenizer, m["content"])
            else:
                ids += _encode(tokenizer, metadata + "\n" + m["content"])
        ids.append(special["<|assistant|>"])
        return ids

    def encode_feedback(self, tokenizer, content: str, after: int | None = None) -> list[int]:
        """The tokens that follow an answer with the evaluation's feedback on it and prompt the next
        answer: an observation message where the format has that role (chatglm3, glm4), a user
        message in the plain format. `after`: the answer's last token; a ChatGLM answer that ended
        with <|observation|> already opened the message."""
        if self.name == "plain":
            return _plain_followup(tokenizer, content)
        special = self.special_ids
        role = special["<|observation|>"]
        ids = [] if after == role else [role]
        if self.name == "chatglm3":
            ids += _encode(tokenizer, "\n") + _encode(tokenizer, content)
        else:
            ids += _encode(tokenizer, "\n" + content)
        return ids + [special["<|assistant|>"]]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def _special_ids(tokenizer, tokens: list[str]) -> dict[str, int]:
    """Ids of special tokens that must exist in the vocabulary (not mapped to <unk>)."""
    ids = {}
    for token in tokens:
        try:
            i = tokenizer.convert_tokens_to_ids(token)
        except KeyError:
            i = None
        if i is None or i == tokenizer.unk_token_id:
            raise UserError(
                f"tokenizer {type(tokenizer).__name__} has no special token {token!r}; choose the chat format "
                "that matches the checkpoint (model.chat_format=chatglm3|glm4|plain)"
            )
        ids[token] = i
    return ids


def _plain_prompt(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer.encode(text, add_special_tokens=True)


def _plain_followup(tokenizer, content: str) -> list[int]:
    """A user message and the generation prompt after an answer. With a chat template: the text the
    template adds for them after a conversation that ends with an answer."""
    if not getattr(tokenizer, "chat_template", None):
        return _encode(tokenizer, f"\nUser: {content}\nAssistant:")
    before = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    head = tokenizer.apply_chat_template(before, tokenize=False)
    full = tokenizer.apply_chat_template([*before, {"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    if not full.startswith(head):
        raise UserError(f"the chat template of {type(tokenizer).__name__} renders a conversation differently once it "
                        "goes on, so feedback cannot follow an answer; use rollout.turns=1 with this tokenizer")
    return _encode(tokenizer, full[len(head):])


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [ids] if isinstance(ids, int) else list(ids)


def chat_format_for(name_or_auto: str, tokenizer, config=None) -> ChatFormat:
    """The chat format by name, or `auto`: from the tokenizer's class (published ChatGLM names included)."""
    name = name_or_auto
    if name == "auto":
        cls = type(tokenizer).__name__
        name = {"ChatGLM3Tokenizer": "chatglm3", "ChatGLMTokenizer": "chatglm3",
                "GLM4Tokenizer": "glm4", "ChatGLM4Tokenizer": "glm4"}.get(cls, "plain")  # fmt: skip
    if name not in FORMATS:
        raise UserError(f"unknown chat format '{name_or_auto}'; choose auto, {', '.join(FORMATS)}")
    config_eos = _as_list(getattr(config, "eos_token_id", None))
    special: dict[str, int] = {}
    if name in ("chatglm3", "glm4"):
        roles = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
        first = ["[gMASK]", "sop"] if name == "chatglm3" else ["<|endoftext|>", "[gMASK]", "<sop>"]
        special = _special_ids(tokenizer, first + roles)
        end = tokenizer.eos_token_id if name == "chatglm3" else special["<|endoftext|>"]
        stops = [end, special["<|user|>"], special["<|observation|>"]]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    else:
        stops = _as_list(tokenizer.eos_token_id) or config_eos
        if not stops:
            raise UserError(f"tokenizer {type(tokenizer).__name__} and the model config define no eos token to stop at")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    stops += [i for i in config_eos if i not in stops]
    return ChatFormat(name, [i for i in stops if i is not None], pad, special)
