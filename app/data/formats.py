"""Problem records from the public dataset formats, read as a stream.

Formats (keys of one record):
- project:   id, question, answer, optional reference_model (LP text), optional demonstration
             (the answer SFT imitates, when it is not the reference: a teacher's, errors included),
             optional revision {answer, feedback}: an earlier answer and the evaluation's feedback
             on it, which SFT puts before its target (a revision demonstration)
- sirl:      en_question, en_answer (SIRL / ORLM), optional id
- mamo:      Question, Answer, id
- optibench: question, results {label: value}, optional index
SFT data as the field publishes it (the prompt taken as written: no instruction appended), each
with an optional id and an optional `answer` (the optimum: without it a record trains SFT only):
- completion: prompt, completion (TRL's prompt-completion records; the completion is the demonstration)
- messages:   messages [{role, content}]: an optional system turn, one user turn, one assistant turn
- alpaca:     instruction, optional input, output
`auto` picks the format per record from its keys. Files are JSONL, or one JSON array (OptiBench),
which is parsed element by element so that no file is ever held in memory whole.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from solver_ppo.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("auto", "project", "sirl", "mamo", "optibench", "completion", "messages", "alpaca")
CHAT_FORMATS = ("completion", "messages", "alpaca")  # SFT records whose prompt is taken as written


@dataclass
class Problem:
    id: str
    question: str
    answer: str | None  # the reference optimum as written in the dataset ("219816.0", "No Best Solution")
    reference_model: str | None = None  # LP text of a reference model, when the dataset has one
    demonstration: str | None = None  # the SFT target when a teacher wrote it; else built from the reference
    system: str | None = None  # the record's own system prompt (a `messages` system turn)
    as_written: bool = False  # the question is the whole user turn: no instruction is appended
    revision: dict | None = None  # {"answer", "feedback"}: SFT's target then revises that answer after that feedback

    @property
    def scorable(self) -> bool:
        """Whether PPO can score answers to it: it has a reference optimum or a reference model."""
        return self.answer is not None or self.reference_model is not None


class BadRecord(UserError):
    """A record that cannot be read; the message starts with `file:line:`."""


def detect_format(obj: dict) -> str:
    if "messages" in obj:
        return "messages"
    if "prompt" in obj and "completion" in obj:
        return "completion"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "en_question" in obj:
        return "sirl"
    if "Question" in obj:
        return "mamo"
    if "question" in obj:
        return "optibench" if "results" in obj else "project"
    raise ValueError(
        "no question field: expected one of question, en_question, Question, prompt + completion, messages, "
        f"instruction + output (keys: {sorted(obj)[:8]})"
    )


# OptiBench `results` list the optimal variable values and the objective, in no fixed order
# (the objective is usually last, sometimes first); the objective's label names it.
_OBJECTIVE_LABEL = re.compile(r"\b(maxim|minim|max\b|min\b|optimal|objective|total|profit|cost|revenue)", re.IGNORECASE)


def optibench_answer(results: dict) -> str | None:
    """The objective value among OptiBench `results`: the last entry whose label names an objective, else the last."""
    if not results:
        return None
    labels = list(results)
    named = [label for label in labels if _OBJECTIVE_LABEL.search(label)]
    return _text(results[(named or labels)[-1]], "results value")


def _text(value, key: str, required: bool = False) -> str | None:
    """A field as text: strings as they are, numbers written out; anything else is an error."""
    if value is None:
        if required:
            raise ValueError(f"'{key}' is missing or null")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"'{key}' must be a string or a number, got {type(value).__name__}")
    text = str(value)
    if required and not text.strip():
        raise ValueError(f"'{key}' is empty")
    return text


# format -> (id key, question key, answer key)
FIELDS = {
    "project": ("id", "question", "answer"),
    "sirl": ("id", "en_question", "en_answer"),
    "mamo": ("id", "Question", "Answer"),
    "optibench": ("index", "question", "results"),
}


def check_options(fmt: str, on_bad_line: str = "skip") -> None:
    """Fail fast on a format or bad-line policy that does not exist."""
    if fmt not in FORMATS:
        raise UserError(f"data.format='{fmt}' is not one of {', '.join(FORMATS)}")
    if on_bad_line not in ("skip", "error"):
        raise UserError(f"data.on_bad_line='{on_bad_line}' is not one of skip, error")


def chat_record(obj: dict, kind: str, default_id: str) -> Problem:
    """A completion / messages / alpaca record -> Problem: the user turn as the question (taken as
    written), the completion / assistant turn / output as the demonstration."""
    system = None
    if kind == "completion":
        question = _text(obj.get("prompt"), "prompt", True)
        demonstration = _text(obj.get("completion"), "completion", True)
    elif kind == "alpaca":
        instruction, extra = _text(obj.get("instruction"), "instruction", True), _text(obj.get("input"), "input")
        question = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
        demonstration = _text(obj.get("output"), "output", True)
    else:
        messages = obj.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("'messages' must be a list of {role, content} objects")
        roles = [m.get("role") for m in messages]
        if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
            raise ValueError(f"'messages' must be [system,] user, assistant turns (one of each), got roles {roles}")
        texts = [_text(m.get("content"), f"messages[{i}].content", True) for i, m in enumerate(messages)]
        system = texts[0] if roles[0] == "system" else None
        question, demonstration = texts[-2], texts[-1]
    return Problem(id=_text(obj.get("id"), "id") or default_id, question=question,
                   answer=_text(obj.get("answer"), "answer"), demonstration=demonstration, system=system, as_written=True)


def normalize_record(obj, fmt: str, where: str, default_id: str) -> Problem:
    """One decoded record -> Problem; `where` ("file:line") prefixes any error, `default_id` fills a missing id."""
    check_options(fmt)
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        kind = detect_format(obj) if fmt == "auto" else fmt
        if kind in CHAT_FORMATS:
            return chat_record(obj, kind, default_id)
        id_key, question_key, answer_key = FIELDS[kind]
        answer = obj.get(answer_key)
        if kind == "optibench":
            if answer is not None and not isinstance(answer, dict):
                raise ValueError(f"'results' must be an object {{label: value}}, got {type(answer).__name__}")
            answer = optibench_answer(answer or {})
        return Problem(
            id=_text(obj.get(id_key), id_key) or default_id,
            question=_text(obj.get(question_key), question_key, required=True),
            answer=_text(answer, answer_key),
            reference_model=_text(obj.get("reference_model"), "reference_model") if kind == "project" else None,
            demonstration=_text(obj.get("demonstration"), "demonstration") if kind == "project" else None,
            revision=_revision(obj.get("revision")) if kind == "project" else None,
        )
    except ValueError as err:
        raise BadRecord(f"{where}: {err}") from None


def _revision(value) -> dict | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("answer"), str) and isinstance(value.get("feedback"), str)):
        raise ValueError("'revision' must be an object with string fields 'answer' and 'feedback'")
    return {"answer": value["answer"], "feedback": value["feedback"]}


Report = Callable[[str], None]


def iter_records(
    path: Path, shard: tuple[int, int] = (0, 1), chunk_chars: int = 1 << 16
) -> Iterator[tuple[int, object]]:
    """(line number, decoded value or BadRecord) for this shard's records of a JSONL or JSON-array file.

    Records are the non-blank JSONL lines or the array elements, numbered from 0; shard (i, n)
    keeps numbers i, i+n, ... and decodes no other JSONL line. The kind of file is decided by
    its first non-blank character ('[': one array), not by its name.
    """
    index, count = shard
    # bytes that are not UTF-8 come through as lone surrogates (U+DC80..U+DCFF), found per record
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        first = ""
        while not first:
            chunk = fh.read(4096)
            if not chunk:
                return
            first = chunk.lstrip()[:1]
        fh.seek(0)
        if first == "[":
            for n, record in enumerate(_iter_json_array(fh, path, chunk_chars)):
                if n % count == index:
                    yield record
            return
        lines = ((line_no, line) for line_no, line in enumerate(fh, start=1) if line.strip())
        for n, (line_no, line) in enumerate(lines):
            if n % count != index:
                continue
            if bad := NOT_UTF8.search(line):
                byte = ord(bad.group()) - 0xDC00
                yield line_no, BadRecord(f"{path}:{line_no}: not valid UTF-8 (byte 0x{byte:02x} at column {bad.start() + 1})")
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, BadRecord(f"{path}:{line_no}: not valid JSON ({err.msg} at column {err.colno})")


_decoder = json.JSONDecoder()
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a byte that is not UTF-8


def _iter_json_array(fh, path: Path, chunk_chars: int) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array, decoded one at a time from chunks of the file.

    A syntax error inside the array is fatal: there is no reliable place to resume after it.
    """
    buf, pos, line, eof = "", 0, 1, False  # `line`: line number at `pos`

    def fill() -> bool:
        nonlocal buf, pos, eof
        more = fh.read(chunk_chars)
        if not more:
            eof = True
            return False
        buf = buf[pos:] + more  # drop what has been consumed
        pos = 0
        if bad := NOT_UTF8.search(buf):
            bad_line = line + buf.count("\n", 0, bad.start())
            raise UserError(f"{path}:{bad_line}: not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x}) in the JSON array")
        return True

    def next_char() -> str:
        """Skip blanks; the next character, or "" at the end of the file."""
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                line += buf[pos] == "\n"
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return ""

    next_char()
    pos += 1  # the opening '['
    expect_comma = False
    while True:
        ch = next_char()
        if ch == "":
            raise UserError(f"{path}:{line}: the JSON array is not closed (missing ']')")
        if ch == "]":
            return
        if expect_comma:
            if ch != ",":
                raise UserError(f"{path}:{line}: expected ',' or ']' between array elements, found {ch!r}")
            pos += 1
            expect_comma = False
            continue
        # decode one element; one cut by the chunk end fails, or ends exactly at the buffer end: read more
        while True:
            try:
                value, end = _decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:
                    break
            except json.JSONDecodeError as err:
                if eof:
                    raise UserError(f"{path}:{line}: not valid JSON in the array ({err.msg})") from None
            fill()
        yield line, value
        line += buf.count("\n", pos, end)
        pos = end
        expect_comma = True


def iter_problems(
    path: str | Path,
    fmt: str = "auto",
    on_bad_line: str = "skip",
    report: Report | None = None,
    shard: tuple[int, int] = (0, 1),
    require_answer: bool = False,
) -> Iterator[Problem]:
    """Stream the problems of one file, record by record.

    A bad record is fatal (`on_bad_line="error"`, raises BadRecord) or reported through `report`
    (default: a logged warning, "file:line: reason") and skipped. `shard=(i, n)` keeps only records
    number i, i+n, i+2n, ... (counted over non-blank records), which are the only ones normalized
    or reported, so every bad line is reported by exactly one shard. `require_answer` (PPO): a
    record with neither an answer nor a reference model is a bad record too (nothing to score).
    """
    path = Path(path)
    check_options(fmt, on_bad_line)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    report = report or log.warning
    for line, value in iter_records(path, shard):
        try:
            if isinstance(value, BadRecord):
                raise value
            problem = normalize_record(value, fmt, f"{path}:{line}", f"{path.stem}:{line}")
            if require_answer and not problem.scorable:
                raise BadRecord(f"{path}:{line}: no answer to score (no 'answer' or reference): an SFT-only record; "
                                "to train on problems without answers, label them by votes (evaluation.labels=votes)")
            yield problem
        except BadRecord as err:
            if on_bad_line == "error":
                raise
            report(f"{err} (skipped)")
