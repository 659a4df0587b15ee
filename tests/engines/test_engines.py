"""The adapters driven by the engines' own code, on CPU, inside .venv-engines:

- TRL 1.16's GRPOTrainer trains a tiny model for a few steps with `solver_reward` as its only
  reward; the rewards it logs equal `solver-ppo score`'s for the completions it logged. With
  `environment_factory=SolverEnvironment` its tool-calling loop calls `check_model`, whose results
  are `score --feedback`'s feedback on the drafts, and the final answers' rewards are `score`'s.
- OpenRLHF 0.11's single-turn executor fetches rewards from `serve-reward` (its HTTP client) and
  from the installed `solver_ppo/integrations/openrlhf.py` (its `.py` loader); its multi-turn executor runs our
  AgentExecutor, loaded by its own loader, with a scripted LLM engine.
- veRL 0.9 is not installed (its reward managers import ray and tensordict built for another
  torch): the veRL adapters are called here with the keyword arguments its naive and batch reward
  managers pass (verl/workers/reward_manager/naive.py, batch.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

if not (importlib.util.find_spec("trl") and importlib.util.find_spec("openrlhf")):
    pytest.skip("TRL and OpenRLHF are not in this venv: `bash tools/ci_engines.sh` builds .venv-engines and runs these tests there",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
GOOD = "```lp\nMaximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n```"  # optimum 11
PROMPT = "Maximize 3x + 2y with x + y <= 4, x + 3y <= 6, x <= 3. Answer:"


def _score(tmp: Path, answers: list[str], labels: list, *flags: str) -> list[dict]:
    problems = tmp / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": str(k), "answer": a}) + "\n" for k, a in enumerate(labels)))
    given = tmp / "answers.jsonl"
    given.write_text("".join(json.dumps({"id": str(k), "answer": a}) + "\n" for k, a in enumerate(answers)))
    out = subprocess.run([sys.executable, "-m", "solver_ppo", "score", "--data", str(problems), "--answers", str(given), *flags],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_installed_copy_is_used_and_imports_no_torch(tmp_path):
    """`pip install .` put solver-ppo in the venv (setup_engine_venv.sh checked torch and transformers did not move)."""
    code = ("import sys, solver_ppo, solver_ppo.evaluation, solver_ppo.integrations.trl, solver_ppo.integrations.verl, solver_ppo.integrations.openrlhf, solver_ppo.integrations.server; "
            "print(solver_ppo.__file__); print(sorted(m for m in ('torch', 'transformers', 'lightning', 'peft') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout.split("\n")
    assert "site-packages" in out[0] and out[1] == "[]"


def _installed_openrlhf_file() -> str:
    """The file OpenRLHF's --remote_rm_url / --agent_func_path names: the installed copy's, as the docs say."""
    import solver_ppo.integrations.openrlhf as module

    return module.__file__


def _tokenizer():
    """A byte-level BPE tokenizer trained here on the prompt and the answer (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([PROMPT + GOOD] * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>"],
                                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>", padding_side="left")


def _tiny_model():
    """A 2-layer Llama taught by a short supervised run to write the LP answer after the prompt,
    so sampling gives a mix of right and broken answers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None))
    ids = torch.tensor([tok(PROMPT)["input_ids"] + tok(GOOD)["input_ids"] + [tok.eos_token_id]])  # TRL tokenizes the prompt alone
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"the tiny model did not learn the answer (loss {loss.item():.3f})"
    return tok, model, len(tok(GOOD)["input_ids"]) + 2


def test_trl_grpo_trains_with_solver_reward(tmp_path):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from solver_ppo.integrations.trl import solver_reward

    torch.set_num_threads(2)
    tok, model, n = _tiny_model()
    dataset = Dataset.from_list([{"prompt": PROMPT, "answer": "11"}, {"prompt": PROMPT, "answer": '{"answer": 11}'}] * 2)
    config = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, seed=0, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=n, temperature=1.2, learning_rate=1e-4, max_steps=2,
                        logging_steps=1, report_to="none", save_strategy="no", shuffle_dataset=False, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[solver_reward], args=config, train_dataset=dataset, processing_class=tok)
    trainer.train()
    completions = list(trainer._logs["completion"])
    logged = list(trainer._logs["rewards"]["solver_reward"])
    assert len(completions) == len(logged) == 4  # TRL keeps the completions of the last generation batch
    rows = _score(tmp_path, completions, [11] * len(completions))
    assert logged == pytest.approx([r["reward"] for r in rows], abs=1e-6)  # TRL keeps them as float32
    assert any(r["reward"] == 1.0 for r in rows) and any(r["reward"] < 1.0 for r in rows), completions
    metrics = [h for h in trainer.state.log_history if "solver/format" in h]
    assert len(metrics) == 2 and all(0.0 <= h["solver/format"] <= 1.0 for h in metrics)


def _tool_model(env, prompt: list[dict]):
    """A byte-level BPE tokenizer with Qwen2.5's chat template (one TRL parses tool calls for) and
    a 2-layer Llama taught by a short supervised run the whole exchange: call `check_model` on the
    LP model, read the solver's feedback, answer with the model. Returns them and the exchange's
    completion length in tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    lp = GOOD.strip("`").removeprefix("lp\n")
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "check_model", "arguments": {"model": lp}}}]}
    exchange = prompt + [call, {"role": "tool", "name": "check_model", "content": env.check_model(lp)}, {"role": "assistant", "content": GOOD}]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    tok.chat_template = qwen2_5_chat_template
    text = tok.apply_chat_template(exchange, tools=[env.check_model], tokenize=False)
    special = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<pad>"]
    raw.train_from_iterator([text] * 20, trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<pad>", padding_side="left")
    tok.chat_template = qwen2_5_chat_template
    ids = tok.apply_chat_template(exchange, tools=[env.check_model], return_dict=False)
    n_prompt = len(tok.apply_chat_template(prompt, tools=[env.check_model], add_generation_prompt=True, return_dict=False))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, bos_token_id=None))
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :n_prompt] = -100  # the completion only: the call, the tool's reply (as TRL appends it), the answer
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=x, labels=labels).loss
        if loss.item() < 0.01:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01, f"the tiny model did not learn the exchange (loss {loss.item():.3f})"
    return tok, model, len(ids) - n_prompt


def test_trl_grpo_calls_the_solver_environment_as_a_tool(tmp_path):
    """GRPOTrainer(environment_factory=SolverEnvironment): TRL's tool loop calls `check_model` on
    the drafts the model writes, gives it the solver's feedback, and `solver_reward` scores the
    final answers; run through TRL's own generation, parsing and tool execution, on CPU."""
    from solver_ppo.integrations import scorer

    scorer.shutdown()
    scorer.configure(feedback=True)
    try:
        _grpo_with_environment(tmp_path)
    finally:  # the later tests score with the default settings
        scorer.shutdown()
        scorer.configure()


def _grpo_with_environment(tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from solver_ppo.integrations.trl import SolverEnvironment, solver_reward

    torch.set_num_threads(2)
    prompt = [{"role": "user", "content": PROMPT}]
    probe = SolverEnvironment()
    probe.reset(answer="11")
    tok, model, n = _tool_model(probe, prompt)
    dataset = Dataset.from_list([{"prompt": prompt, "answer": "11"}] * 4)
    config = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, seed=0, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=n + 8, temperature=0.5, learning_rate=1e-4, max_steps=2,
                        logging_steps=1, report_to="none", save_strategy="no", shuffle_dataset=False, dataloader_num_workers=0,
                        max_tool_calling_iterations=2)
    trainer = GRPOTrainer(model=model, reward_funcs=[solver_reward], args=config, train_dataset=dataset, processing_class=tok,
                          environment_factory=SolverEnvironment)
    trainer.train()
    history = [h for h in trainer.state.log_history if "tools/call_frequency" in h]
    assert len(history) == 2 and history[0]["tools/call_frequency"] > 0 and all(h["tools/failure_frequency"] == 0 for h in history)

    completions = list(trainer._logs["completion"])  # the last batch's conversations: assistant, tool, assistant ...
    logged = list(trainer._logs["rewards"]["solver_reward"])
    calls = [(turn["tool_calls"][0]["function"]["arguments"]["model"], reply["content"])
             for c in completions for turn, reply in zip(c, c[1:]) if turn.get("tool_calls") and reply["role"] == "tool"]
    assert calls, completions
    checked = _score(tmp_path, [f"```lp\n{model_text}\n```" for model_text, _ in calls], [11] * len(calls), "--feedback")
    assert [reply for _, reply in calls] == [row["feedback"] for row in checked]  # the tool's result is the solver's feedback
    assert "Objective value: 11." in calls[0][1]
    finals = [[m for m in c if m["role"] == "assistant"][-1]["content"] for c in completions]
    rows = _score(tmp_path, finals, [11] * len(finals))
    assert logged == pytest.approx([r["reward"] for r in rows], abs=1e-6)
    assert any(r == 1.0 for r in logged), (logged, completions)
    assert sum(env.checks for env in trainer._environment_pool[None]) == len(calls)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openrlhf_reward_paths(tmp_path):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    answers = [GOOD, "no model here", GOOD.replace("<= 4", "<= 5")]
    labels = ["11", "11", json.dumps({"answer": 11})]
    want = [r["reward"] for r in _score(tmp_path, answers, [11, 11, 11])]
    queries, prompts = [PROMPT + a + "<eos>" for a in answers], [PROMPT] * 3

    by_file = SingleTurnAgentExecutor(_installed_openrlhf_file())
    got = asyncio.run(by_file._fetch_rewards_via_func(queries, prompts, labels))
    assert [g["rewards"][0] for g in got] == want

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "solver_ppo", "serve-reward", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        by_http = SingleTurnAgentExecutor(f"http://127.0.0.1:{port}/get_reward")
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        [got] = asyncio.run(by_http._fetch_rewards_via_http(queries, prompts, labels))
        assert got["rewards"] == got["scores"] == want
        assert set(got["extra_logs"]) == {"solver_format", "solver_solved", "solver_answer", "solver_accuracy"}
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_openrlhf_agent_executor(tmp_path):
    """OpenRLHF's own loader and multi-turn loop run our AgentExecutor: the first (infeasible)
    answer gets the solver's feedback, the second matches and ends the episode with reward 1."""
    import importlib.util

    from openrlhf.utils.agent import AgentExecutorBase

    spec = importlib.util.spec_from_file_location("agent_module", _installed_openrlhf_file())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    executor = module.AgentExecutor()
    assert isinstance(executor, AgentExecutorBase)

    from solver_ppo.integrations import scorer

    scorer.shutdown()  # the agent needs evaluation.feedback: a pool of its own
    scorer.configure(feedback=True)
    tok = _tokenizer()
    turns = iter(["```lp\nMaximize\n obj: x\nSubject To\n a: x >= 4\n b: x <= 3\nEnd\n```", GOOD])

    class Engine:  # answers with the scripted turns, as vLLM's engine would with sampled ones
        async def generate(self, ids, params, multi_modal_data=None):
            text = next(turns)
            return SimpleNamespace(outputs=[SimpleNamespace(token_ids=tok(text)["input_ids"], text=text, logprobs=None)])

    params = SimpleNamespace(max_tokens=None, logprobs=None)
    out = asyncio.run(executor.execute(PROMPT, "11", params, 4096, tok, Engine()))
    assert out["reward"] == pytest.approx(1.0) and out["scores"] == 1.0 and len(out["action_ranges"]) == 2
    assert "irreducible infeasible subset" in tok.decode(out["observation_tokens"])


def test_verl_reward_manager_calls():
    """The calls veRL's naive (one row) and batch reward managers make, by keyword."""
    from solver_ppo.integrations.verl import compute_score, compute_score_batch

    one = compute_score(data_source="optimization", solution_str=GOOD, ground_truth="11", extra_info={"index": 0})
    batch = compute_score_batch(data_sources=["optimization"] * 2, solution_strs=[GOOD, "none"], ground_truths=["11", "11"],
                                extra_infos=[{"rollout_reward_scores": {}}, {"rollout_reward_scores": {}}])
    assert one["score"] == batch[0]["score"] == 1.0 and batch[1]["score"] == 0.0
    assert set(one) == set(batch[1])


def test_trl_environment_tool_renders_for_the_chat_template():
    """TRL hands the environment's methods to `apply_chat_template(tools=...)`, which reads each
    one's JSON schema from its signature and docstring; the tool answers with the solver's feedback."""
    from transformers.utils import get_json_schema

    from solver_ppo.integrations import scorer
    from solver_ppo.integrations.trl import SolverEnvironment

    scorer.shutdown()
    scorer.configure(feedback=True)
    env = SolverEnvironment()
    schema = get_json_schema(env.check_model)["function"]
    assert schema["name"] == "check_model" and schema["parameters"]["required"] == ["model"]
    env.reset(prompt=PROMPT, answer="11")
    assert "Objective value: 11." in env.check_model(GOOD.strip("`").removeprefix("lp\n"))
