"""What the policy is asked: the problem plus the instruction for how to write its model.

The evaluator extracts one ```lp block from the answer and solves it, so the instruction asks
for exactly that, with a tiny example of the LP syntax it reads. For code answers there is one
preset per solver library (`INSTRUCTION_PRESETS`: `data.instruction: gurobipy`): a program in one
```python block whose model the evaluator captures at its solve call. Messages are plain
{role, content} dicts; the model stack renders them in each family's chat format.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from solver_ppo.data.code_answers import CODE_FORMATS, code_answer, render_code
from solver_ppo.data.formats import Problem
from solver_ppo.errors import UserError

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert in operations research. You turn optimization problems described in words "
    "into correct mathematical models."
)

INSTRUCTION = """\
Formulate this problem as a linear or mixed-integer program. Think it through briefly, then \
write the complete model in LP file format inside exactly one ```lp fenced block, and finish \
with a line "Optimal value: <number>". Use variable names made of letters, digits and \
underscores, put integer variables under general and 0/1 variables under binary.

Example of the format:
```lp
maximize
 obj: 3 x + 2 y
subject to
 labor: x + y <= 4
 material: x + 3 y <= 6
bounds
 x <= 3
general
 y
end
```
Optimal value: 11"""

_SOLVE_CALL = {"pyscipopt": "calls m.optimize()", "gurobipy": "calls m.optimize()", "coptpy": "calls m.solve()",
               "pyomo": "solves it with pyo.SolverFactory(\"glpk\").solve(m)", "pulp": "calls prob.solve()",
               "scipy": "solves it with scipy.optimize.linprog"}
_EXAMPLE_LP = """maximize
 obj: 3 x + 2 y
subject to
 labor: x + y <= 4
 material: x + 3 y <= 6
general
 x y
end
"""
INSTRUCTION_PRESETS = ("lp", *CODE_FORMATS)  # names `data.instruction` may give instead of a text


@cache
def code_instruction(library: str) -> str:
    """The instruction for answers as a program in `library`, with a tiny example in it."""
    return (
        f"Formulate this problem as a linear or mixed-integer program. Think it through briefly, then write "
        f"a Python program that builds the model with {library} and {_SOLVE_CALL[library]} once at the end, "
        f"inside exactly one ```python fenced block. Put the problem's numbers in the program as data; do not "
        f"read files or input. The model your program builds is solved and checked; what it prints is not used.\n\n"
        f"Example of the format:\n```python\n{render_code(_EXAMPLE_LP, library, 'example')}```"
    )


def instruction_text(instruction: str | None) -> str:
    """None: the LP instruction; a preset name (`INSTRUCTION_PRESETS`): that preset; else the text itself."""
    if instruction is None or instruction == "lp":
        return INSTRUCTION
    if instruction in CODE_FORMATS:
        return code_instruction(instruction)
    return instruction


def build_messages(
    problem: Problem, system_prompt: str | None = None, instruction: str | None = None
) -> list[dict[str, str]]:
    """[system, user] messages for one problem.

    None means the defaults above; "" leaves the system turn (or the instruction) out, which a
    small model trained on this project's own data can afford (short prompts learn faster). An
    instruction that is a preset name (lp, pyscipopt, gurobipy, coptpy, pyomo, pulp, scipy) is that preset.
    A record that brings its own prompt (prompt/completion, messages, alpaca) is taken as written:
    its own system turn if it has one, and no instruction appended.
    """
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    if problem.system is not None:
        system = problem.system
    instruction = "" if problem.as_written else instruction_text(instruction)
    messages = [{"role": "system", "content": system}] if system else []
    user = problem.question.strip() + (f"\n\n{instruction}" if instruction else "")
    messages.append({"role": "user", "content": user})
    return messages


def format_number(x: float, places: int = 4) -> str:
    """Integers without '.0', others rounded to `places` decimals with trailing zeros dropped."""
    r = round(float(x), places)
    if r == int(r):
        return str(int(r))
    return f"{r:.{places}f}".rstrip("0").rstrip(".")


def answer_text(problem, instruction: str | None = None) -> str:
    """The answer the instruction asks for, built from the reference (the SFT target): an LP, or
    for a code preset (`data.instruction: gurobipy`) the reference as a program in that library."""
    if not problem.reference_model:
        raise ValueError(f"problem {problem.id} has no reference_model to build an answer from")
    if instruction in CODE_FORMATS:
        try:
            return code_answer(problem.reference_model, instruction)
        except ValueError as err:
            raise ValueError(f"problem {problem.id}: its reference model cannot be written as {instruction} code "
                             f"({err}); give it a demonstration") from None
    return lp_answer(problem.reference_model, problem.answer)


def lp_answer(model: str, value) -> str:
    """An LP in an ```lp block, then `Optimal value: <value>`: a number with 4 decimals at most, or
    a status such as "infeasible" as given."""
    try:
        value = format_number(float(value))
    except (TypeError, ValueError):  # "infeasible" and other non-numeric answers stay as written
        pass
    return f"```lp\n{model.rstrip()}\n```\nOptimal value: {value}"


def sft_target(problem, instruction: str | None = None) -> str:
    """What SFT imitates: the dataset's demonstration when it has one (a teacher's answer, which
    may be wrong where the reference is right), else the reference answer in the form
    `instruction` asks for."""
    return problem.demonstration or answer_text(problem, instruction)


def fixed_prompt_tokens(encode, system_prompt: str | None, instruction: str | None) -> int:
    """Tokens of a prompt before any question: system prompt, instruction and chat format
    (`encode(messages) -> ids`, the model's chat format with its tokenizer)."""
    return len(encode(build_messages(Problem(id="", question="", answer=None), system_prompt, instruction)))


# ---- the prompt settings a model was trained with, kept beside its weights

PROMPT_SETTINGS_FILE = "prompt_settings.json"


@dataclass
class PromptSettings:
    """How a model's prompts were built in training: `eval`, and `train` starting from the model,
    build theirs the same way unless told otherwise. None: the built-in default."""

    system_prompt: str | None = None
    instruction: str | None = None
    chat_format: str = "auto"


def write_prompt_settings(directory: str | Path, settings: PromptSettings) -> Path:
    path = Path(directory) / PROMPT_SETTINGS_FILE
    path.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return path


def read_prompt_settings(directory: str | Path) -> PromptSettings | None:
    """The settings stored in `directory` (a checkpoint or run directory), None if it has none."""
    path = Path(directory) / PROMPT_SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return PromptSettings(**{k: data[k] for k in ("system_prompt", "instruction", "chat_format") if k in data})
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{path}: not a prompt settings file ({err}); delete it or write it again") from None


def _shown(value: str | None) -> str:
    if value is None:
        return "the built-in default"
    short = value if len(value) <= 40 else value[:37] + "..."
    return repr(short)


def first_process() -> bool:
    """Not a second rank of a launched run (torchrun, fabric run, Lightning's launcher set these)."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def prompt_settings_for(
    trained: PromptSettings | None, source: str, given: dict[str, str | None], names: dict[str, str]
) -> PromptSettings:
    """The settings to prompt with: each of `given` (system_prompt, instruction, chat_format) that is
    set (not None; chat_format not "auto") wins, the others come from `trained` (what `source` was
    trained with). Each given value that differs from the trained one is said once on stderr,
    under its flag or key in `names`."""
    chosen = dict(asdict(trained)) if trained is not None else asdict(PromptSettings())
    unset = {"system_prompt": None, "instruction": None, "chat_format": "auto"}
    for key, value in given.items():
        if value == unset[key]:
            continue
        if trained is not None and value != chosen[key] and first_process():
            print(f"{names[key]}={_shown(value)} overrides the {key.replace('_', ' ')} {source} was trained with "
                  f"({_shown(chosen[key])})", file=sys.stderr)
        chosen[key] = value
    return PromptSettings(**chosen)


def use_trained_prompt_settings(cfg) -> None:
    """Fill a run config's prompt settings (data.system_prompt, data.instruction, model.chat_format)
    that it leaves unset from those model.path was trained with; a set one that differs is said on stderr."""
    d = cfg.data
    chosen = prompt_settings_for(
        read_prompt_settings(cfg.model.path), f"model.path={cfg.model.path}",
        {"system_prompt": d.system_prompt, "instruction": d.instruction, "chat_format": cfg.model.chat_format},
        {"system_prompt": "data.system_prompt", "instruction": "data.instruction", "chat_format": "model.chat_format"},
    )
    cfg.data.system_prompt, cfg.data.instruction, cfg.model.chat_format = (
        chosen.system_prompt, chosen.instruction, chosen.chat_format)
