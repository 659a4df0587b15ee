"""Find the optimization model in a free-form answer: solver-library code (a fenced ```python
block, an untagged fence, or <python>…</python>, that imports a solver library), a fenced
```lp / ```mps block, a <model>…</model> span, or an LP written straight into the text.

Code comes first: an answer with code is a code answer even if it also writes the model as LP
(the code is what runs; an LP block next to it is usually a rendering of the same model). Of
several code blocks, the last one that imports a solver library is the answer (models write a
draft and then a corrected version), together with the ```python blocks after it that import
nothing (a program continued notebook-style).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from solver_ppo.evaluation.capture import OTHER_SOLVER_LIBRARIES, detect_library
from solver_ppo.evaluation.model import _SECTION_RE, sniff_format


@dataclass
class Extraction:
    status: str  # 'found' | 'none' | 'several'
    text: str | None  # the model text (or the code) when found
    fmt: str | None  # 'lp' | 'mps' | 'python'
    final_answer: float | None  # a number the answer states as its result (reporting only)
    candidates: int  # distinct model candidates seen
    library: str | None = None  # the solver library a code answer imports


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_TAG = re.compile(r"<model>(.*?)</model>", re.S | re.I)
_PYTHON_TAG = re.compile(r"<python>(.*?)(?:</python>|\Z)", re.S | re.I)
_PYTHON_LANGS = {"python", "py", "python3", "py3"}
_OTHER_IMPORT = re.compile(r"^\s*(?:from|import)\s+(" + "|".join(OTHER_SOLVER_LIBRARIES) + r")\b", re.M)
_MODEL_LANGS = {"lp": "lp", "cplex": "lp", "cplex-lp": "lp", "mps": "mps"}
_PLAIN_LANGS = {"", "text", "txt", "plaintext", "plain", "model"}
_HEADER = {key: rx for key, rx in _SECTION_RE}
_NUM = r"[-+]?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?"
_FINAL = [
    re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}"),
    re.compile(
        r"(?:final answer|optimal (?:objective )?value|objective value|optimal cost|optimal profit|minimum cost|maximum profit)"
        r"[^\d\n\-+$]{0,20}(" + _NUM + r")",
        re.I,
    ),
]


def extract_model(answer: str) -> Extraction:
    code = _code_answer(answer)
    if code is not None:
        text, library = code
        return Extraction("found", text, "python", _final_answer(_FENCE.sub(" ", answer)), 1, library)
    candidates: list[tuple[str, str]] = []  # (text, fmt), in order of appearance

    def add(text: str, fmt: str | None) -> None:
        text = text.strip()
        if text and text not in [c[0] for c in candidates]:
            candidates.append((text, fmt or sniff_format(text)))

    for m in _TAG.finditer(answer):
        inner = m.group(1)
        if "```" in inner:
            continue  # the fenced block inside is picked up below
        if _looks_like_model(inner):
            add(inner, None)
    for m in _FENCE.finditer(answer):
        lang, body = m.group(1).lower(), m.group(2)
        if lang in _MODEL_LANGS:
            add(body, _MODEL_LANGS[lang])
        elif lang in _PLAIN_LANGS and _looks_like_model(body):
            add(body, None)
    if not candidates:
        inline = _inline_lp(answer)
        if inline is not None:
            add(inline, "lp")
    final = _final_answer(_FENCE.sub(" ", answer))
    if not candidates:
        return Extraction("none", None, None, final, 0)
    if len(candidates) > 1:
        return Extraction("several", None, None, final, len(candidates))
    text, fmt = candidates[0]
    return Extraction("found", text, fmt, final, 1)


def solver_library(code: str) -> str | None:
    """The solver library code imports: a supported one, else another known one (which is
    reported as unsupported), else None."""
    found = detect_library(code)
    if found is None:
        other = _OTHER_IMPORT.search(code)
        found = other.group(1) if other else None
    return found


def _code_answer(answer: str) -> tuple[str, str] | None:
    """(code, library) by the rule in the module docstring, or None without solver code."""
    blocks: list[tuple[int, str, bool]] = []  # (position, body, tagged as python)
    for m in _FENCE.finditer(answer):
        lang = m.group(1).lower()
        if lang in _PYTHON_LANGS or lang == "":
            blocks.append((m.start(), m.group(2), lang in _PYTHON_LANGS))
    for m in _PYTHON_TAG.finditer(answer):
        if "```" not in m.group(1):  # a fence inside the tag is found above
            blocks.append((m.start(), m.group(1), True))
    blocks.sort(key=lambda b: b[0])
    libraries = [solver_library(body) for _, body, _ in blocks]
    last = max((i for i, lib in enumerate(libraries) if lib), default=None)
    if last is None:
        return None
    parts = [blocks[last][1].strip("\n")]
    for (_, body, tagged), lib in zip(blocks[last + 1 :], libraries[last + 1 :]):
        if tagged and body.strip():
            parts.append(body.strip("\n"))
    return "\n".join(parts) + "\n", libraries[last]


def _looks_like_model(text: str) -> bool:
    if sniff_format(text) == "mps":
        return "COLUMNS" in text.upper()
    return _inline_lp(text) is not None


def _inline_lp(text: str) -> str | None:
    """The lines from an objective header through 'End' (or the text's end), if a 'Subject To' follows."""
    lines = text.splitlines()
    start = None
    for i, raw in enumerate(lines):
        line = raw.split("\\", 1)[0].strip()
        if start is None:
            if _HEADER["max"].match(line) or _HEADER["min"].match(line):
                start = i
        elif _HEADER["st"].match(line):
            end = next((j for j in range(i, len(lines)) if lines[j].strip().lower() == "end"), len(lines) - 1)
            return "\n".join(lines[start : end + 1])
    return None


def _final_answer(text: str) -> float | None:
    """The last stated result ('final answer: 42', '\\boxed{42}', 'optimal value is 1,250.5')."""
    best: tuple[int, float] | None = None
    for rx in _FINAL:
        for m in rx.finditer(text):
            try:
                value = float(re.sub(r"[\s$,]", "", m.group(1)))
            except ValueError:
                continue
            if best is None or m.start() > best[0]:
                best = (m.start(), value)
    return None if best is None else best[1]
