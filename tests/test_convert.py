"""`solver-ppo convert`: problems in the engines' own formats, prompts built as training builds them.
(tests/engines reads the files back with each engine's own reader and scores rows through its adapter.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from solver_ppo.cli import main
from solver_ppo.data.formats import iter_problems
from solver_ppo.data.prompts import build_messages, read_prompt_settings
from solver_ppo.integrations.scorer import reference_from_label

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ROOT / "app" / "evaluation" / "samples" / "problems.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openrlhf_and_trl_rows_carry_the_projects_prompts_and_labels_the_adapters_read(tmp_path, capsys):
    problems = list(iter_problems(PROBLEMS))
    assert main(["convert", str(PROBLEMS), "--to", "openrlhf", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert main(["convert", str(PROBLEMS), "--to", "trl", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote 12 problems for openrlhf to {tmp_path / 'o.jsonl'}",
                                                    f"wrote 12 problems for trl to {tmp_path / 't.jsonl'}"]
    openrlhf, trl = _rows(tmp_path / "o.jsonl"), _rows(tmp_path / "t.jsonl")
    assert [r["prompt"] for r in openrlhf] == [r["prompt"] for r in trl] == [build_messages(p) for p in problems]
    for problem, o, t in zip(problems, openrlhf, trl):
        assert set(o) == {"prompt", "label"} and set(t) == {"prompt", "answer", "reference_model"}
        assert (t["answer"], t["reference_model"]) == (problem.answer, problem.reference_model)
        read = reference_from_label(o["label"])  # what the OpenRLHF adapter and the server do with it
        assert read == reference_from_label(problem.answer, problem.reference_model)
    assert json.loads(openrlhf[0]["label"])["reference_model"].startswith("Maximize")  # furniture has one
    assert openrlhf[2]["label"] == "3"  # gurobi-names has none: the answer as written


def test_a_models_prompt_settings_and_the_flags_build_the_prompt(tmp_path):
    model = ROOT / "checkpoints" / "quickstart-sft"
    settings = read_prompt_settings(model)
    out = tmp_path / "t.jsonl"
    assert main(["convert", str(PROBLEMS), "--to", "trl", "--out", str(out), "--model", str(model)]) == 0
    [first] = list(iter_problems(PROBLEMS))[:1]
    assert _rows(out)[0]["prompt"] == build_messages(first, settings.system_prompt, settings.instruction)
    assert main(["convert", str(PROBLEMS), "--to", "trl", "--out", str(out), "--system-prompt", "", "--instruction", "gurobipy"]) == 0
    [message] = _rows(out)[0]["prompt"]
    assert message["role"] == "user" and "gurobipy" in message["content"]


def test_unscorable_problems_are_left_out_and_bad_input_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "q", "answer": "1"}) + "\n"
                    + json.dumps({"prompt": "sft only", "completion": "c"}) + "\n")
    assert main(["convert", str(data), "--to", "openrlhf", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert capsys.readouterr().out == (f"wrote 1 problems for openrlhf to {tmp_path / 'o.jsonl'}; "
                                       "1 without an answer or reference model left out\n")
    assert main(["convert", str(tmp_path / "none.jsonl"), "--to", "trl", "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert main(["convert", str(data), "--to", "trl", "--out", str(tmp_path / "t.jsonl"), "--model", str(tmp_path)]) == 2
    assert "no prompt_settings.json there" in capsys.readouterr().err


def test_verl_parquet_or_the_pyarrow_it_needs(tmp_path, capsys):
    code = main(["convert", str(PROBLEMS), "--to", "verl", "--out", str(tmp_path / "v.parquet")])
    if importlib.util.find_spec("pyarrow") is None:  # the test venv: veRL's environment has it (tests/engines)
        assert code == 2 and "needs pyarrow: `pip install pyarrow`" in capsys.readouterr().err
        assert not (tmp_path / "v.parquet").exists()
    else:
        import pyarrow.parquet as pq

        assert code == 0 and pq.read_table(tmp_path / "v.parquet").num_rows == 12


def test_python_m_app_loads_every_module_once_under_the_installed_name():
    """`python -m app` in a checkout hands over to `solver_ppo`: no module of ours also lives under
    `app.` (which would give a second evaluator pool and a second scorer)."""
    import subprocess
    import sys

    code = ("import json, runpy, sys\n"
            f"sys.argv = ['app', 'score', '--data', {str(PROBLEMS)!r}, '--answers', {str(PROBLEMS.with_name('answers.jsonl'))!r}]\n"
            "try:\n    runpy.run_module('app', run_name='__main__', alter_sys=True)\nexcept SystemExit as done:\n    code = done.code\n"
            "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('app', 'callbacks', 'solver_ppo'))\n"
            "print(json.dumps([code, ours]), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    status, modules = json.loads(done.stderr.splitlines()[-1])
    assert status == 0 and len(done.stdout.splitlines()) == 12
    assert [m for m in modules if m.split(".")[0] in ("app", "callbacks")] == ["app"]  # the package of the shim only
    assert "solver_ppo.evaluation.pool" in modules and "solver_ppo.evaluation.cli_score" in modules
