"""What the policy is asked: the problem plus the instruction for how to write its model.

The evaluator extracts one ```lp block from the answer and solves it, so the instruction asks
for exactly that, with a tiny example of the LP syntax it reads. Messages are plain
{role, content} dicts; the model stack renders them in each family's chat format.
"""

from __future__ import annotations

from app.data.formats import Problem

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert in operations research. You turn optimization problems described in words "
    "into correct mathematical models."
)

INSTRUCTION = """\
Formulate this problem as a linear or mixed-integer program. Think it through briefly, then \
write the complete model in LP file format inside exactly one ```lp fenced block, and finish \
with a line "Optimal value: <number>". Use variable names made of letters, digits and \
underscores, put integer variables under General and 0/1 variables under Binary.

Example of the format:
```lp
Maximize
 obj: 3 x + 2 y
Subject To
 labor: x + y <= 4
 material: x + 3 y <= 6
Bounds
 x <= 3
General
 y
End
```
Optimal value: 11"""


def build_messages(problem: Problem, system_prompt: str | None = None) -> list[dict[str, str]]:
    """[system, user] messages for one problem; `system_prompt=""` leaves the system turn out."""
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{problem.question.strip()}\n\n{INSTRUCTION}"})
    return messages
