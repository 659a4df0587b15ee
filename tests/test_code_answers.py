"""Reference answers as solver-library code (solver_ppo.data.code_answers, make-data --answer-format) and
the code-answer instruction presets: every family's program, captured at its solve call, is the
reference model (graph distance 0, same optimum)."""

from __future__ import annotations

import json
import multiprocessing
import re

import pytest

from solver_ppo.cli import main
from solver_ppo.data.code_answers import CODE_FORMATS, code_answer, render_code
from solver_ppo.data.formats import Problem
from solver_ppo.data.prompts import INSTRUCTION, answer_text, build_messages, code_instruction, instruction_text, sft_target
from solver_ppo.data.synthetic import FAMILIES, code_demonstrations, generate, imperfect_teacher
from solver_ppo.errors import UserError
from solver_ppo.evaluation.capture import orient, run_captured
from solver_ppo.evaluation.config import SolverLimits
from solver_ppo.evaluation.graph import graph_distance
from solver_ppo.evaluation.model import read_model
from solver_ppo.evaluation.solve import solve_model


def _capture_all(conn, programs, workdir):
    conn.send([run_captured(code, workdir) for code in programs])
    conn.close()


def capture_all(programs: list[str], workdir) -> list:
    """run_captured on each program, in one forked child."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_capture_all, args=(child, programs, str(workdir)))
    proc.start()
    child.close()
    outcomes = parent.recv()
    proc.join(60)
    return outcomes


@pytest.fixture(scope="module")
def items():
    """Every family twice, easy and medium, with an infeasible share."""
    return generate(12, seed=5, difficulty="easy", infeasible_fraction=0.2) + generate(12, seed=5, difficulty="medium")


@pytest.mark.parametrize("library", CODE_FORMATS)
def test_every_family_in_every_library_captures_the_reference(library, items, tmp_path):
    assert {item.family for item in items} == set(FAMILIES)
    outcomes = capture_all([render_code(item.reference_model, library, item.family) for item in items], tmp_path)
    limits = SolverLimits()
    for item, outcome in zip(items, outcomes):
        assert outcome.status == "captured", (item.family, outcome.reason)
        captured, reference = read_model(outcome.model_text, outcome.fmt), read_model(item.reference_model)
        if outcome.sense_free:  # scipy: stated in the reference's sense, as the scorer does
            captured = orient(captured, reference.sense)
        assert graph_distance(captured, reference) == 0.0, item.family
        got, want = solve_model(captured, limits), solve_model(reference, limits)
        assert got.status == want.status == ("infeasible" if item.answer == "infeasible" else "optimal")
        if got.status == "optimal":
            assert got.objective == pytest.approx(want.objective, abs=1e-9)
            assert got.objective == pytest.approx(float(item.answer), abs=1e-6)


def test_programs_loop_over_data_with_the_librarys_sums():
    lp = "minimize\n obj: 4 A1 + 2.5 B1\nsubject to\n supply_A: A1 <= 5\n demand_1: A1 + B1 >= 3\nend\n"
    idioms = {"gurobipy": ["x = m.addVars(items", "x.prod(coefs) >= rhs", "GRB.MINIMIZE", "m.optimize()"],
              "coptpy": ["env = cp.Envr()", "cp.quicksum(", "COPT.MINIMIZE", "m.solve()"],
              "pyscipopt": ["quicksum(", "'minimize'", "m.optimize()"],
              "pulp": ["pulp.LpVariable.dicts(", "pulp.lpSum(", "pulp.LpMinimize", "prob.solve("],
              "pyomo": ["pyo.Set(initialize=items)", "pyo.Param(m.I", "rule=requirements_rule", "pyo.minimize"],
              "scipy": ["c = np.array([cost[i] for i in items])", "A_ub.append([-coefs.get(i, 0) for i in items])",
                        "res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=[(0, None)] * len(items))"]}
    for library, snippets in idioms.items():
        code = render_code(lp, library)
        assert "cost = {'A1': 4, 'B1': 2.5}" in code
        assert "'demand_1': ({'A1': 1, 'B1': 1}, 3)," in code
        for snippet in snippets:
            assert snippet in code, (library, snippet)
    assert code_answer(lp, "pulp").startswith("```python\nimport pulp\n") and code_answer(lp, "pulp").endswith("\n```")
    with pytest.raises(ValueError, match="linear models"):
        render_code("minimize\n obj: x + [ x ^ 2 ] / 2\nsubject to\n c: x >= 1\nend\n", "gurobipy")
    with pytest.raises(ValueError, match="unknown code format"):
        render_code(lp, "cplex")


GENERAL_LP = """maximize
 obj: 3 x + 2 y - 1.5 z + 0.1 w + 7
subject to
 a: x + y + z <= 10
 b: x - y >= -2
 c: y + w = 4
 d: -3 <= x - w <= 5
bounds
 -2 <= x <= 6
 y free
 w <= 3
general
 x
binary
 z
end
"""


def test_mixed_types_bounds_and_a_constant_in_every_library(tmp_path):
    """Models beyond the synthetic families' shape get per-item lower/upper/vtype dicts."""
    programs = [render_code(GENERAL_LP, library) for library in CODE_FORMATS]
    assert all("lower = {" in p and "vtype = {" in p for p in programs)
    reference = read_model(GENERAL_LP)
    want = solve_model(reference, SolverLimits())
    assert want.objective == pytest.approx(31.1)
    for library, outcome in zip(CODE_FORMATS, capture_all(programs, tmp_path)):
        assert outcome.status == "captured", (library, outcome.reason)
        captured = read_model(outcome.model_text, outcome.fmt)
        expected, optimum = reference, want.objective
        if library == "scipy":  # no objective constant in scipy: the program adds it to what it prints
            captured = orient(captured, "max")
            expected, optimum = read_model(GENERAL_LP.replace(" + 7\n", "\n")), want.objective - 7
        assert graph_distance(captured, expected) == 0.0, library
        assert solve_model(captured, SolverLimits()).objective == pytest.approx(optimum, abs=1e-9), library


def test_sft_target_follows_the_code_preset():
    problem = Problem(id="p7", question="q", answer="12", reference_model=GENERAL_LP)
    assert sft_target(problem) == answer_text(problem) and answer_text(problem).startswith("```lp\n")
    assert sft_target(problem, "pyomo") == code_answer(GENERAL_LP, "pyomo")
    assert sft_target(Problem(id="p8", question="q", answer="1", demonstration="mine"), "pyomo") == "mine"
    quadratic = Problem(id="p9", question="q", answer="1", reference_model="minimize\n obj: [ x ^ 2 ] / 2\nsubject to\n c: x >= 1\nend\n")
    with pytest.raises(ValueError, match="problem p9: its reference model cannot be written as pulp code"):
        sft_target(quadratic, "pulp")


def test_code_demonstrations_and_the_teacher_in_code(items):
    some = [item for item in generate(12, seed=9, infeasible_fraction=0.0)]
    assert imperfect_teacher(some, seed=9, flip_rate=1.0, answer_format="pulp") > 0
    flipped = [item for item in some if item.demonstration is not None]
    code_demonstrations(some, "pulp")
    for item in some:
        assert item.demonstration.startswith("```python\nimport pulp\n")
    for item in flipped:  # the teacher's program states every requirement as an upper bound
        assert ">= rhs" not in item.demonstration and "requirements" not in item.demonstration
    with pytest.raises(UserError, match="answer format must be one of lp, pyscipopt"):
        code_demonstrations(some, "fortran")


def test_make_data_answer_format(tmp_path, capsys):
    args = ["make-data", "--train", "6", "--heldout", "3", "--seed", "2"]
    assert main([*args, "--out", str(tmp_path / "lp")]) == 0
    assert main([*args, "--out", str(tmp_path / "code"), "--answer-format", "gurobipy"]) == 0
    for split in ("train", "heldout"):
        lp = [json.loads(line) for line in (tmp_path / "lp" / f"{split}.jsonl").read_text().splitlines()]
        code = [json.loads(line) for line in (tmp_path / "code" / f"{split}.jsonl").read_text().splitlines()]
        assert all(r["demonstration"] is None for r in lp)
        assert [{**r, "demonstration": None} for r in code] == lp  # the problems are the same
        for r in code:
            assert r["demonstration"] == code_answer(r["reference_model"], "gurobipy", r["family"])
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--answer-format", "julia"]) == 2
    err = capsys.readouterr().err
    assert "answer format must be one of" in err and len(err.strip().splitlines()) == 1


def test_instruction_presets():
    problem = Problem(id="p", question="Maximize x.", answer="1")
    assert instruction_text(None) == instruction_text("lp") == INSTRUCTION
    assert instruction_text("Answer in LP.") == "Answer in LP."
    for library in CODE_FORMATS:
        text = code_instruction(library)
        assert f"builds the model with {library}" in text and "```python" in text
        assert build_messages(problem, "", library)[-1]["content"] == f"Maximize x.\n\n{text}"


def test_the_presets_example_programs_capture_their_model(tmp_path):
    """The example in each preset is a program the evaluator captures (max 3x + 2y, integers: 12)."""
    programs = [re.search(r"```python\n(.*?)```", code_instruction(lib), re.S).group(1) for lib in CODE_FORMATS]
    for outcome in capture_all(programs, tmp_path):
        assert outcome.status == "captured"
        model = orient(read_model(outcome.model_text, outcome.fmt), "max") if outcome.sense_free else read_model(outcome.model_text)
        assert solve_model(model, SolverLimits()).objective == pytest.approx(12)


class _Pieces:
    """A decoder over a fixed list of text pieces (token id = index)."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, token_ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in token_ids)


def test_partial_kl_starts_at_the_python_block():
    import torch

    from solver_ppo.ppo.rollout import partial_kl_mask

    rows = [["The model:\n", "``", "`python\n", "import pulp\n", "```"],  # fence split over tokens 1 and 2
            ["Code:", "<python>", "import gurobipy", "</python>"],
            ["Think.", " ", "```py\n", "x = 1", "```"],
            ["import pulp", "\n", "x"]]  # no block: penalized everywhere
    pieces = [p for row in rows for p in row]
    tok = _Pieces(pieces)
    ids = torch.zeros(len(rows), 5, dtype=torch.long)
    mask = torch.zeros(len(rows), 5)
    at = 0
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.arange(at, at + len(row))
        mask[i, : len(row)] = 1
        at += len(row)
    assert partial_kl_mask(ids, mask, tok).tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]]
