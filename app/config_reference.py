"""`solver-ppo config-reference`: every config key with its default, allowed values and meaning, as Markdown.

The meaning of a key is the comment written beside its field in the schema dataclasses (the
trailing `# comment`, else the comment lines right above the field), so it lives in one place;
the allowed values come from `solver_ppo.config.RANGES` and `CHOICES`. docs/config.md is this command's
output, and a test fails when the two differ.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import os
import tokenize
import types
import typing
from functools import cache
from pathlib import Path

from omegaconf import MISSING

from solver_ppo.config import CHOICES, RANGES, SFTConfig, TrainConfig
from solver_ppo.errors import UserError

COMMAND = ".venv/bin/python -m app config-reference > docs/config.md"

SECTIONS = {  # top-level group -> what it configures
    "": "the run",
    "model": "which checkpoint and how it is adapted (`app/models/config.py`)",
    "sampling": "how the policy samples its answers",
    "ppo": "the RL update (`app/config.py`; the math: [algorithms.md](algorithms.md))",
    "data": "problems and prompts",
    "evaluation": "the evaluation system that scores answers (`app/evaluation/config.py`; [evaluation.md](evaluation.md))",
    "trainer": "devices, logging, checkpoints",
    "sft": "the supervised warm start",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: the reference goes to stdout."""


def run(args: argparse.Namespace) -> int:
    print(render(), end="")
    return 0


@dataclasses.dataclass
class Key:
    name: str  # dotted, e.g. ppo.kl.coef
    type: str
    default: str
    allowed: str
    meaning: str


def render() -> str:
    """The whole reference: `train`'s keys, then the keys only `sft` has."""
    train_keys = list(schema_keys(TrainConfig))
    train_names = {key.name: key for key in train_keys}
    sft_only = [key for key in schema_keys(SFTConfig) if train_names.get(key.name) != key]
    lines = [
        "# Config reference",
        "",
        f"Generated from the schema by `{COMMAND}`; do not edit by hand.",
        "",
        "`train` and `sft` read a YAML file and `key=value` overrides over these defaults",
        "(`solver-ppo train CONFIG key=value ... --print-config` shows the result). *required*: no",
        "default, set it in the YAML or as an override. Ranges are intervals (`[` closed, `(` open);",
        "`null` is always allowed for a key whose default is `null`.",
        "",
        "## `train` (PPO and the other RL algorithms)",
        "",
    ]
    lines += _tables(train_keys)
    lines += [
        "## `sft`",
        "",
        "`sft` has the same `model.*`, `data.*` and `trainer.*` keys as `train`; these differ or are its own:",
        "",
    ]
    lines += _tables(sft_only)
    return "\n".join(lines)


def _tables(keys: list[Key]) -> list[str]:
    lines: list[str] = []
    groups: dict[str, list[Key]] = {}
    for key in keys:
        groups.setdefault(key.name.split(".")[0] if "." in key.name else "", []).append(key)
    for group, members in groups.items():
        title = f"`{group}.*`" if group else "top level"
        if group in SECTIONS:
            title += f": {SECTIONS[group]}"
        lines += [f"### {title}", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        lines += [f"| `{k.name}` | {k.type} | {k.default} | {k.allowed} | {k.meaning} |" for k in members]
        lines.append("")
    return lines


def schema_keys(cls: type, prefix: str = ""):
    """Every leaf key of the schema dataclass `cls`, depth first in field order."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        name, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from schema_keys(hint, f"{name}.")
            continue
        if f.name not in comments:
            where = os.path.relpath(inspect.getsourcefile(cls))
            raise UserError(f"{where}: config key '{name}' has no comment; write its meaning as a "
                            f"'# comment' after the field (or on the lines above it)")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        yield Key(name, _type_name(hint), _default(default), _allowed(name), _escape(comments[f.name]))


@cache
def _parsed(path: str) -> tuple[ast.Module, list[str], dict[int, str]]:
    """A source file's syntax tree, its lines, and line number -> the text of the comment on that line."""
    source = Path(path).read_text()
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    return ast.parse(source), source.splitlines(), comments


def field_comments(cls: type) -> dict[str, str]:
    """field name -> its comment: the trailing comment on the field's line, else the comment lines
    directly above it, joined."""
    tree, source_lines, comments = _parsed(inspect.getsourcefile(cls))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if stmt.end_lineno in comments and not source_lines[stmt.end_lineno - 1].lstrip().startswith("#"):
            out[stmt.target.id] = comments[stmt.end_lineno]
            continue
        above, line = [], stmt.lineno - 1
        while line in comments and source_lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        if above:
            out[stmt.target.id] = " ".join(above)
    return out


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint)).replace("NoneType", "null")
    if typing.get_origin(hint) is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def _default(value) -> str:
    if value is MISSING:
        return "*required*"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{value}`"


def _allowed(name: str) -> str:
    if name in RANGES:
        return f"`{RANGES[name]}`"
    if name in CHOICES:
        return ", ".join(f"`{choice}`" for choice in CHOICES[name])
    return ""


def _escape(text: str) -> str:
    """A comment as a Markdown table cell: `|` between choices reads as 'or'."""
    return text.replace("|", "\\|")
