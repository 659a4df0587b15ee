"""`python -m app eval`: greedy pass@1 of a checkpoint with the evaluation system."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solver_ppo.cli import main
from solver_ppo.data.synthetic import generate
from solver_ppo.evaluation import Reference

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "checkpoints" / "quickstart-sft"  # the quick start's SFT starter, trained on empty prompts


def test_eval_table_is_the_mean_of_the_per_problem_rows(tmp_path, capsys):
    data, out = tmp_path / "heldout.jsonl", tmp_path / "rows.jsonl"
    problems = [item.to_json() for item in generate(8, seed=5, split="heldout")]
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    argv = ["eval", "--model", str(STARTER), "--data", str(data), "--out", str(out), "--limit", "6", "--batch-size", "4",
            "--max-new-tokens", "128", "--workers", "1", "--system-prompt", "", "--instruction", ""]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in problems[:6]]
    assert [r["expected"] for r in rows] == [Reference.from_answer(p["answer"]).expected for p in problems[:6]]
    printed = capsys.readouterr()
    assert printed.err == ""  # no progress bar: stderr is not a terminal here
    accuracy = sum(r["matched"] for r in rows) / len(rows)
    reward = sum(r["reward"] for r in rows) / len(rows)
    assert 0 < accuracy < 1  # the starter gets some of these right, not all
    pass_at_1 = next(line for line in printed.out.splitlines() if line.startswith("| pass@1"))
    cells = [cell.strip() for cell in pass_at_1.strip("|").split("|")]  # name, accuracy, solved, format, graph, reward
    assert float(cells[1]) == pytest.approx(accuracy, abs=5e-4)
    assert float(cells[5]) == pytest.approx(reward, abs=5e-4)


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--batch-size", "--limit", "--workers"])
def test_eval_refuses_a_count_below_one(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(STARTER), "--data", str(tmp_path / "x.jsonl"), flag, "0"])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_eval_checks_where_it_writes_before_loading_the_model(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["eval", "--model", str(tmp_path / "no-such-model"), "--data", str(tmp_path / "x.jsonl"), "--out",
            str(blocker / "rows.jsonl")]
    assert main(argv) == 2
    assert f"--out {blocker / 'rows.jsonl'}: cannot write in {blocker} (File exists)" in capsys.readouterr().err



def test_sampled_eval_repeats_from_its_seed_and_differs_from_greedy(tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in generate(4, seed=5, split="heldout")))
    base = ["eval", "--model", str(STARTER), "--data", str(data), "--batch-size", "4", "--max-new-tokens", "48",
            "--workers", "1", "--system-prompt", "", "--instruction", ""]

    def responses(name: str, *flags: str) -> list[str]:
        out = tmp_path / f"{name}.jsonl"
        assert main([*base, "--out", str(out), *flags]) == 0
        return [json.loads(line)["response"] for line in out.read_text().splitlines()]

    greedy = responses("greedy", "--temperature", "0")  # 0, the default: greedy
    sampled = responses("t1-seed0", "--temperature", "1.0")
    assert responses("t1-seed0-again", "--temperature", "1.0", "--seed", "0") == sampled
    assert responses("t1-seed1", "--temperature", "1.0", "--seed", "1") != sampled
    assert sampled != greedy
    capsys.readouterr()
    assert main([*base, "--temperature", "-0.5"]) == 2
    assert "--temperature must be 0 (greedy) or more, got -0.5" in capsys.readouterr().err
