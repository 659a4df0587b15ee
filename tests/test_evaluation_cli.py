"""The evaluation commands, run as a user would: `python -m app ...`."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LP = "Maximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n"


def app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_evaluate_model_and_graph_distance(tmp_path):
    a, b, bad = tmp_path / "a.lp", tmp_path / "b.lp", tmp_path / "bad.lp"
    a.write_text(LP)
    b.write_text(LP.replace("<= 6", "<= 4.5"))
    bad.write_text("Maximize\n x\nSubject To\n c: x <=\nEnd\n")
    out = app("evaluate-model", str(a), str(bad), "--workers", "1")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert (rows[0]["file"], rows[0]["status"], rows[0]["objective"], rows[0]["n_vars"], rows[0]["n_cons"]) == (str(a), "optimal", 11.0, 2, 2)
    assert rows[1]["status"] == "error" and "line 4" in rows[1]["reason"]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(f"{a}\t{a}\n{a}\t{b}\n")
    out = app("graph-distance", "--pairs", str(pairs))
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["distance"] == 0.0, r["equivalent"]) for r in rows] == [(True, True), (False, False)]
    single = json.loads(app("graph-distance", str(a), str(b)).stdout)
    assert single["distance"] == rows[1]["distance"] > 0


def test_bad_arguments_give_one_line_and_exit_2(tmp_path):
    binary = tmp_path / "bin.lp"
    binary.write_bytes(b"\xff\xfe\x00max")
    for args, words in [
        (("graph-distance", "nope.lp", "nope2.lp"), "file not found: nope.lp"),
        (("graph-distance", str(binary), str(binary)), "not UTF-8"),
        (("graph-distance", "only-one.lp"), "give two model files"),
        (("score", "--data", str(binary), "--answers", str(binary)), "not UTF-8"),
        (("evaluate-model", "missing.mps"), "file not found"),
    ]:
        out = app(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.count("\n") == 1 and words in out.stderr


def test_score_the_bundled_sample(tmp_path):
    samples = ROOT / "app" / "evaluation" / "samples"
    out_file = tmp_path / "scores.jsonl"
    out = app("score", "--data", str(samples / "problems.jsonl"), "--answers", str(samples / "answers.jsonl"), "--out", str(out_file))
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in map(json.loads, out_file.read_text().splitlines())}
    assert len(rows) == 12
    assert rows["furniture"]["reward"] == 1.0 and rows["furniture"]["graph_distance"] == 0.0
    assert rows["infeasible"]["matched"] and rows["diet-mps"]["matched"] and rows["gurobi-names"]["matched"]
    assert not rows["furniture-wrong"]["matched"] and 0 < rows["furniture-wrong"]["graph_distance"] < 0.1
    assert [rows[k]["status"] for k in ("syntax-error", "garbage", "two-models", "unbounded")] == ["parse_error", "no_model", "several", "unbounded"]
    assert "accuracy            0.417" in out.stdout and "mean reward" in out.stdout
    # the relative rule accepts the rounded dataset answer
    relaxed = app("score", "--data", str(samples / "problems.jsonl"), "--answers", str(samples / "answers.jsonl"), "--match", "relative", "--tolerance", "0.05")
    rounded = next(json.loads(line) for line in relaxed.stdout.splitlines() if '"rounded-answer"' in line)
    assert rounded["matched"]


def test_score_answers_by_order_and_dataset_answer_keys(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"en_question": "q", "en_answer": "11.0"}) + "\n" + json.dumps({"question": "q", "results": {"profit": 11}}) + "\n")
    answers = tmp_path / "a.jsonl"
    answers.write_text("\n".join(json.dumps({"response": f"```lp\n{LP}```"}) for _ in range(2)) + "\n")
    out = app("score", "--data", str(data), "--answers", str(answers))
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["matched"] for line in out.stdout.splitlines()] == [True, True]
    answers.write_text(json.dumps({"response": "x"}) + "\n")
    out = app("score", "--data", str(data), "--answers", str(answers))
    assert out.returncode == 2 and "1 answers for 2 problems" in out.stderr
