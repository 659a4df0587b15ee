"""solver-ppo as an engine's user has it, inside .venv-engines (`pip install .`, no extras):

- a user's project with its own `app/` and `callbacks/` packages first on sys.path imports and calls
  every adapter and starts `serve-reward`, and every reward equals `solver-ppo score`'s;
- the wheel claims no top-level name but `solver_ppo`;
- `solver-ppo convert` writes each engine's prompt data, which that engine's own reader reads
  back (pyarrow/pandas for veRL's parquet, `datasets` for TRL, OpenRLHF's preprocessing) and whose
  rows score through that engine's adapter exactly as `score` scores them.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

if not (importlib.util.find_spec("trl") and importlib.util.find_spec("openrlhf")):
    pytest.skip("TRL and OpenRLHF are not in this venv: `bash tools/ci_engines.sh` builds .venv-engines and runs these tests there",
                allow_module_level=True)

from test_engines import GOOD, _free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMPLES = ROOT / "app" / "evaluation" / "samples"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SOLVER_PPO_EVAL_CONFIG")}


def _samples() -> tuple[list[dict], list[str]]:
    problems = [json.loads(line) for line in (SAMPLES / "problems.jsonl").read_text().splitlines()]
    answers = {row["id"]: row["answer"] for row in map(json.loads, (SAMPLES / "answers.jsonl").read_text().splitlines())}
    return problems, [answers[p["id"]] for p in problems]


def _score_rewards() -> list[float]:
    out = subprocess.run([str(BIN / "solver-ppo"), "score", "--data", str(SAMPLES / "problems.jsonl"),
                          "--answers", str(SAMPLES / "answers.jsonl")], capture_output=True, text=True, check=True,
                         env=_clean_env()).stdout
    return [json.loads(line)["reward"] for line in out.splitlines()]


def _user_project(tmp_path: Path) -> Path:
    """A project of the common shape: its own `app` (with an `integrations` subpackage) and `callbacks`."""
    project = tmp_path / "project"
    for package in ("app", "app/integrations", "callbacks"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"OWNER = 'user:{package}'\n")
    return project


USER_SCRIPT = textwrap.dedent('''
    import asyncio, importlib.util, json, sys

    import app, app.integrations, callbacks  # the project's own packages
    from solver_ppo.integrations import scorer
    from solver_ppo.integrations.trl import SolverEnvironment, solver_reward
    from solver_ppo.integrations.verl import SolverInteraction, compute_score, compute_score_batch
    import solver_ppo.integrations.openrlhf as openrlhf_module

    problems, answers, good = json.loads(sys.stdin.read())
    scorer.configure(feedback=True)  # the environment and the interaction need the feedback; rewards are the same
    labels = [json.dumps({"answer": p["answer"], "reference_model": p.get("reference_model")}) for p in problems]
    out = {"owners": [app.OWNER, app.integrations.OWNER, callbacks.OWNER]}
    out["trl"] = solver_reward(prompts=["q"] * len(answers), completions=answers, answer=[p["answer"] for p in problems],
                               reference_model=[p.get("reference_model") for p in problems])
    environment = SolverEnvironment()
    environment.reset(answer="11")
    out["trl_tool"] = environment.check_model(good.strip("`").removeprefix("lp\\n"))
    out["verl"] = [compute_score("sample", a, p["answer"], {"reference_model": p.get("reference_model")})["score"]
                   for p, a in zip(problems, answers)]
    out["verl_batch"] = [row["score"] for row in compute_score_batch(
        ["sample"] * len(answers), answers, [p["answer"] for p in problems],
        [{"reference_model": p.get("reference_model")} for p in problems])]

    async def interact():
        interaction = SolverInteraction({"name": "solver", "max_turns": 2})
        instance = await interaction.start_interaction(ground_truth="11")
        return await interaction.generate_response(instance, [{"role": "assistant", "content": good}])
    terminate, _, turn_score, _ = asyncio.run(interact())
    out["verl_interaction"] = [terminate, turn_score]

    spec = importlib.util.spec_from_file_location("reward_module", openrlhf_module.__file__)  # OpenRLHF's loader
    by_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(by_file)
    out["openrlhf"] = by_file.reward_func(queries=["q" + a for a in answers], prompts=["q"] * len(answers), labels=labels)["rewards"]
    from openrlhf.utils.agent import AgentExecutorBase
    out["openrlhf_agent"] = isinstance(by_file.AgentExecutor(), AgentExecutorBase)
    out["app_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("app", "callbacks"))
    out["solver_ppo_file"] = sys.modules["solver_ppo"].__file__
    print(json.dumps(out))
''')


def test_a_project_with_its_own_app_and_callbacks_packages_uses_every_adapter(tmp_path):
    project = _user_project(tmp_path)
    (project / "train_with_solver_reward.py").write_text(USER_SCRIPT)
    problems, answers = _samples()
    want = _score_rewards()
    done = subprocess.run([sys.executable, "train_with_solver_reward.py"], input=json.dumps([problems, answers, GOOD]),
                          capture_output=True, text=True, cwd=project, env=_clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["owners"] == ["user:app", "user:app/integrations", "user:callbacks"]
    assert out["app_modules"] == ["app", "app.integrations", "callbacks"]  # nothing of ours under those names
    assert "site-packages/solver_ppo/" in out["solver_ppo_file"]
    for engine in ("trl", "verl", "verl_batch", "openrlhf"):
        assert out[engine] == pytest.approx(want), engine
    assert "Objective value: 11." in out["trl_tool"]
    assert out["verl_interaction"] == [True, 1.0] and out["openrlhf_agent"] is True

    port = _free_port()
    server = subprocess.Popen([str(BIN / "solver-ppo"), "serve-reward", "--port", str(port)], cwd=project,
                              env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        body = {"query": ["q" + a for a in answers], "prompts": ["q"] * len(answers),
                "labels": [json.dumps({"answer": p["answer"], "reference_model": p.get("reference_model")}) for p in problems]}
        reply = _post(port, "/get_reward", body)
        assert reply["rewards"] == pytest.approx(want)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr.read()[-2000:]


def test_the_wheel_claims_no_top_level_name_but_solver_ppo(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info where it builds
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("app", "callbacks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, capture_output=True, text=True, env=_clean_env())
    [wheel] = (tmp_path / "wheel").glob("solver_ppo-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        [top_level] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        [record] = [n for n in names if n.endswith(".dist-info/RECORD")]
        assert whl.read(top_level).decode().split() == ["solver_ppo"]
        recorded = {line.split(",")[0].split("/")[0] for line in whl.read(record).decode().splitlines() if line}
    assert recorded == {"solver_ppo", Path(top_level).parent.name}
    assert "solver_ppo/callbacks/solver_reward.py" in names and "solver_ppo/evaluation/samples/problems.jsonl" in names


def _convert(tmp_path: Path, engine: str, suffix: str) -> Path:
    out = tmp_path / f"{engine}{suffix}"
    done = subprocess.run([str(BIN / "solver-ppo"), "convert", str(SAMPLES / "problems.jsonl"), "--to", engine,
                           "--out", str(out), "--instruction", "pyscipopt"], capture_output=True, text=True, env=_clean_env())
    assert done.returncode == 0 and f"wrote 12 problems for {engine}" in done.stdout, done.stderr
    return out


def test_converted_prompt_data_reads_back_in_each_engine_and_scores_as_score_does(tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from openrlhf.datasets.prompts_dataset import preprocess_data

    from solver_ppo.data.prompts import code_instruction
    from solver_ppo.integrations.trl import solver_reward
    from solver_ppo.integrations.verl import compute_score

    problems, answers = _samples()
    want = _score_rewards()

    verl = _convert(tmp_path, "verl", ".parquet")
    assert pq.read_schema(verl).names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    frame = pd.read_parquet(verl)
    rows = frame.to_dict("records")
    assert [r["extra_info"]["id"] for r in rows] == [p["id"] for p in problems]
    first = rows[0]
    assert first["data_source"] == "problems" and first["reward_model"]["style"] == "rule"
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["prompt"][1]["content"].endswith(code_instruction("pyscipopt"))
    got = [compute_score(r["data_source"], a, r["reward_model"]["ground_truth"], r["extra_info"])["score"]
           for r, a in zip(rows, answers)]
    assert got == pytest.approx(want)

    trl = load_dataset("json", data_files=str(_convert(tmp_path, "trl", ".jsonl")), split="train")
    assert trl.column_names == ["prompt", "answer", "reference_model"] and len(trl) == 12
    assert trl[0]["prompt"] == list(first["prompt"])
    got = solver_reward(prompts=trl["prompt"], completions=answers, answer=trl["answer"], reference_model=trl["reference_model"])
    assert got == pytest.approx(want)

    class ChatTemplate:  # what OpenRLHF passes: the tokenizer's apply_chat_template
        @staticmethod
        def apply_chat_template(chat, tokenize=False, add_generation_prompt=True):
            return "".join(f"<{m['role']}>{m['content']}" for m in chat) + "<assistant>"

    import solver_ppo.integrations.openrlhf as openrlhf_module

    spec = importlib.util.spec_from_file_location("reward_module", openrlhf_module.__file__)
    by_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(by_file)
    records = [json.loads(line) for line in _convert(tmp_path, "openrlhf", ".jsonl").read_text().splitlines()]
    pairs = [preprocess_data(r, input_key="prompt", label_key="label", apply_chat_template=ChatTemplate.apply_chat_template)
             for r in records]
    assert pairs[0][0].startswith("<system>") and pairs[0][0].endswith("<assistant>")
    prompts, labels = [p for p, _ in pairs], [label for _, label in pairs]
    got = by_file.reward_func(queries=[p + a for p, a in zip(prompts, answers)], prompts=prompts, labels=labels)["rewards"]
    assert got == pytest.approx(want)


def _post(port: int, path: str, body: dict, wait_s: float = 60.0) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200, response.read()
            return json.loads(response.read())
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
