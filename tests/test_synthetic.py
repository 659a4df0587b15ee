"""Synthetic problems: determinism, sizes, copyability, solver-checked answers, disjoint splits, CLI."""

from __future__ import annotations

import json
import re

import pytest

from solver_ppo.cli import main
from solver_ppo.data.formats import normalize_record
from solver_ppo.data.synthetic import (
    FAMILIES, NUMBER, Item, generate, imperfect_teacher, level, make_splits, signature,
)
from solver_ppo.data.prompts import answer_text, format_number, sft_target
from solver_ppo.errors import UserError
from solver_ppo.evaluation import read_model, solve_model
from solver_ppo.evaluation.config import SolverLimits


@pytest.fixture(scope="module")
def splits() -> tuple[list[Item], list[Item]]:
    return make_splits(60, 30, seed=7, difficulty="easy", infeasible_fraction=0.1)


@pytest.fixture(scope="module")
def by_level() -> dict[str, list[Item]]:
    return {d: generate(24, seed=3, difficulty=d) for d in ("easy", "medium", "hard", 0.3)}


@pytest.fixture(scope="module")
def infeasible() -> list[Item]:
    return generate(12, seed=5, difficulty="easy", infeasible_fraction=1.0) + \
        generate(12, seed=5, difficulty="hard", infeasible_fraction=1.0)


def test_levels_grow_with_difficulty():
    easy, medium, hard = level("easy"), level("medium"), level("hard")
    assert (easy.vars, easy.cons, easy.max_coef) == ((2, 3), (2, 3), 9)
    assert (medium.vars, medium.cons) == ((3, 4), (3, 4))
    assert (hard.vars, hard.cons, hard.halves) == ((4, 6), (4, 6), True)
    assert level(0.0) == easy and level(1.0) == hard
    for bad in ("extreme", 1.5, -0.1):
        with pytest.raises(UserError, match="difficulty"):
            level(bad)


def test_format_number():
    assert format_number(3.0) == "3"
    assert format_number(2.50) == "2.5"
    assert format_number(1 / 3) == "0.3333"
    assert format_number(-0.00001) == "0"
    assert format_number(2 / 3, 9) == "0.666666667"
    assert format_number(1234567.0) == "1234567"


def test_same_seed_same_items_other_seed_other_items():
    a = [item.to_json() for item in generate(12, seed=11)]
    b = [item.to_json() for item in generate(12, seed=11)]
    c = [item.to_json() for item in generate(12, seed=12)]
    assert a == b
    assert sum(x["question"] != y["question"] for x, y in zip(a, c)) >= 10


def test_every_family_in_turn(splits):
    train, heldout = splits
    assert [item.family for item in train[:6]] == list(FAMILIES)
    for items in splits:
        counts = {f: sum(item.family == f for item in items) for f in FAMILIES}
        assert set(counts.values()) == {len(items) // 6}, counts
    assert {item.sense for item in train} == {"maximize", "minimize"}
    assert {item.type for item in train} == {"LP", "MILP"}


def test_sizes_within_level_bounds(by_level):
    for difficulty, items in by_level.items():
        lvl = level(difficulty)
        for item in items:
            model = read_model(item.reference_model)
            assert (model.n_vars, model.n_cons) == (item.n_vars, item.n_cons)
            assert model.sense == item.sense[:3]
            types = {v.vtype for v in model.variables}
            assert types == {"C"} if item.type == "LP" else types in ({"I"}, {"B"}), (item.id, types)
            assert lvl.vars[0] <= item.n_vars <= lvl.vars[1], (difficulty, item.family, item.n_vars)
            assert lvl.cons[0] <= item.n_cons <= lvl.cons[1], (difficulty, item.family, item.n_cons)
            assert 2 <= item.n_vars <= 6 and 2 <= item.n_cons <= 6
    assert max(len(item.question) for item in by_level["easy"]) < 400
    assert max(len(item.question) for item in by_level["hard"]) > 400


def test_reference_models_solve_to_stored_answers(splits, by_level, infeasible):
    sample = splits[1] + by_level["medium"][:12] + by_level["hard"][:12] + infeasible[::2]
    assert len(sample) >= 60
    n_infeasible = 0
    for item in sample:
        result = solve_model(read_model(item.reference_model), SolverLimits())
        if item.answer == "infeasible":
            n_infeasible += 1
            assert result.status == "infeasible", (item.id, result.status, result.reason)
        else:
            assert result.status == "optimal", (item.id, result.status, result.reason)
            ref = float(item.answer)
            assert abs(result.objective - ref) / (abs(ref) + 1) <= 1e-6, (item.id, result.objective, ref)
    assert n_infeasible >= 12


def test_every_family_can_be_infeasible(infeasible):
    assert all(item.answer == "infeasible" for item in infeasible)
    assert {item.family for item in infeasible} == set(FAMILIES)
    for item in infeasible[1::2]:
        assert solve_model(read_model(item.reference_model), SolverLimits()).status == "infeasible", item.id


def test_splits_share_no_problem(splits):
    train, heldout = splits
    assert len(train) == 60 and len(heldout) == 30
    assert not {signature(i) for i in train} & {signature(i) for i in heldout}
    assert len({i.id for i in train + heldout}) == 90
    # the held-out set does not depend on how many training problems are asked for
    _, heldout_again = make_splits(6, 30, seed=7, difficulty="easy", infeasible_fraction=0.1)
    assert [i.to_json() for i in heldout_again] == [i.to_json() for i in heldout]


def test_signature_ignores_wording_not_numbers():
    lp = "maximize\n obj: 3 a + 5 b\nsubject to\n c1: 2 a + 4 b <= 40\nend\n"
    one = Item("x", "q1", "60", lp, "production", "easy", "maximize", "LP", 2, 1)
    two = Item("y", "other words", "60", lp.replace("c1", "wood"), "production", "easy", "maximize", "LP", 2, 1)
    three = Item("z", "q1", "60", lp.replace("40", "41"), "production", "easy", "maximize", "LP", 2, 1)
    assert signature(one) == signature(two) == ("production", (2.0, 3.0, 4.0, 5.0, 40.0))
    assert signature(one) != signature(three)


def test_lp_is_copyable_from_the_question(splits, by_level, infeasible):
    items = splits[0] + splits[1] + [i for items in by_level.values() for i in items] + infeasible
    for item in items:
        stated = set(NUMBER.findall(item.question))
        missing = [x for x in NUMBER.findall(item.reference_model) if x not in stated]
        assert not missing, (item.id, missing, item.question)
        words = set(re.findall(r"[A-Za-z]+|\d+", item.question))
        for var in read_model(item.reference_model).variables:
            parts = re.findall(r"[A-Za-z]+|\d+", var.name)
            assert all(p in words for p in parts), (item.id, var.name, item.question)


def test_constraints_in_question_order(splits):
    """Where constraint names are words of the question, the LP lists them in the order the
    question first mentions them."""
    checked = 0
    for item in splits[0]:
        if item.family not in ("production", "diet", "knapsack", "staffing"):
            continue
        names = [c.name for c in read_model(item.reference_model).constraints]
        first = [m.start() for n in names if (m := re.search(rf"\b{n}\b", item.question))]
        assert first == sorted(first), (item.id, names, item.question)
        checked += len(first) >= 2
    assert checked >= 10


def test_reference_answer_renders_the_sft_target():
    lp = "minimize\n obj: x + y\nsubject to\n c1: 3 x + 3 y >= 1\nend\n"
    item = Item("a", "q", format_number(1 / 3, 9), lp, "diet", "easy", "minimize", "LP", 2, 1)
    assert answer_text(item) == f"```lp\n{lp.rstrip()}\n```\nOptimal value: 0.3333"
    item.answer = "infeasible"
    assert answer_text(item).endswith("```\nOptimal value: infeasible")
    item.answer = "42"
    assert answer_text(item).splitlines()[-1] == "Optimal value: 42"


def test_imperfect_teacher_flips_requirements_in_its_share_of_demonstrations():
    items = generate(120, seed=8)
    clean = [item.to_json() for item in items]
    with_requirements = [i for i, item in enumerate(items) if " >= " in item.reference_model]
    assert 40 <= len(with_requirements) < 120  # diet, staffing, ... have them; assignment has none

    assert imperfect_teacher(items, seed=8, flip_rate=1.0) == len(with_requirements)
    for i, item in enumerate(items):
        assert {**item.to_json(), "demonstration": None} == clean[i]  # the reference stays correct
        if i not in with_requirements:
            assert item.demonstration is None and sft_target(item) == answer_text(item)
            continue
        flipped = item.reference_model.replace(" >= ", " <= ")
        lp, stated = sft_target(item).removeprefix("```lp\n").split("\n```\nOptimal value: ")
        assert lp == flipped.rstrip() and " >= " not in lp
        result = solve_model(read_model(flipped), SolverLimits())
        assert result.status == "optimal"  # nonnegative variables under upper bounds only
        assert stated == format_number(result.objective), item.id
    # the flipped models are wrong: SCIP finds another optimum for most of them
    wrong = sum(items[i].demonstration.split("Optimal value: ")[1] != format_number(float(items[i].answer))
                for i in with_requirements if items[i].answer != "infeasible")
    assert wrong >= 0.7 * len(with_requirements)

    items = generate(120, seed=8)
    picked = imperfect_teacher(items, seed=8, flip_rate=0.5)
    assert 0.3 * len(with_requirements) < picked < 0.7 * len(with_requirements)
    assert imperfect_teacher(generate(20, seed=8), seed=8, flip_rate=0.0) == 0
    with pytest.raises(UserError, match="flip rate must be in"):
        imperfect_teacher(items, seed=8, flip_rate=1.2)


def test_demonstration_is_read_from_project_records_and_is_what_sft_imitates():
    record = {"id": "a", "question": "q", "answer": "3", "reference_model": "minimize\n obj: x\nend\n",
              "demonstration": "```lp\nmaximize\n obj: x\nend\n```\nOptimal value: 5"}
    problem = normalize_record(record, "project", "f:1", "x")
    assert sft_target(problem) == record["demonstration"]
    assert answer_text(problem).endswith("Optimal value: 3")  # the reference, for the reward
    problem = normalize_record({**record, "demonstration": None}, "project", "f:1", "x")
    assert sft_target(problem) == answer_text(problem)
    with pytest.raises(UserError, match="'demonstration' must be a string"):
        normalize_record({**record, "demonstration": [1]}, "project", "f:1", "x")


def test_family_subset_and_bad_arguments():
    items = generate(4, seed=1, families=["diet", "staffing"])
    assert [i.family for i in items] == ["diet", "staffing", "diet", "staffing"]
    with pytest.raises(UserError, match="unknown problem families"):
        generate(2, seed=1, families=["cooking"])
    with pytest.raises(UserError, match="infeasible fraction"):
        generate(2, seed=1, infeasible_fraction=1.5)


def test_cli_writes_the_files(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["make-data", "--out", str(out), "--train", "12", "--heldout", "6", "--seed", "4",
            "--infeasible", "0.2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 train and 6 held-out problems" in printed
    assert re.search(r"train\s+all\s+12 ", printed) and re.search(r"heldout\s+all\s+6 ", printed)
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert (len(train), len(heldout)) == (12, 6)
    assert {"id", "question", "answer", "reference_model", "family", "n_vars", "n_cons"} <= set(train[0])
    first = (out / "train.jsonl").read_bytes()
    assert main(args) == 0
    assert (out / "train.jsonl").read_bytes() == first

    # an imperfect teacher changes the training demonstrations only, never the problems
    assert main([*args, "--out", str(tmp_path / "taught"), "--teacher-flip", "1"]) == 0
    flipped = int(re.search(r"(\d+) of 12 training demonstrations", capsys.readouterr().out).group(1))
    taught = [json.loads(line) for line in (tmp_path / "taught" / "train.jsonl").read_text().splitlines()]
    assert flipped == sum(" >= " in t["reference_model"] for t in train) > 0
    assert [{**t, "demonstration": None} for t in taught] == train
    assert (tmp_path / "taught" / "heldout.jsonl").read_text() == (out / "heldout.jsonl").read_text()


@pytest.mark.parametrize("bad, message", [
    (["--difficulty", "extreme"], "--difficulty must be"),
    (["--families", "diet,cooking"], "unknown problem families"),
    (["--train", "-3"], "--train and --heldout must be 0 or more"),
    (["--teacher-flip", "2"], "flip rate must be in [0, 1]"),
])
def test_cli_bad_arguments_are_one_line(tmp_path, capsys, bad, message):
    assert main(["make-data", "--out", str(tmp_path / "d"), "--train", "2", "--heldout", "1", *bad]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
