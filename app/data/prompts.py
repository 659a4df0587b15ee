"""What the policy is asked: the problem plus the instruction for how to write its model.

The evaluator extracts one ```lp block from the answer and solves it, so the instruction asks
for exactly that, with a tiny example of the LP syntax it reads. For code answers there is one
preset per solver library (`INSTRUCTION_PRESETS`: `data.instruction: gurobipy`): a program in one
```python block whose model the evaluator captures at its solve call. Messages are plain
{role, content} dicts; the model stack renders them in each family's chat format.
"""

from __future__ import annotations

from functools import cache

from app.data.code_answers import CODE_FORMATS, code_answer, render_code
from app.data.formats import Problem

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
    """
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    instruction = instruction_text(instruction)
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
