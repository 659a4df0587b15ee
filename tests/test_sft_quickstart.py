"""SFT warm start and the quick-start pipeline, shortened: the pieces connect end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from solver_ppo.cli import main
from solver_ppo.config import SFTConfig, load_config
from solver_ppo.data.formats import iter_problems
from solver_ppo.data.prompts import answer_text, build_messages, sft_target
from solver_ppo.data.synthetic import generate, imperfect_teacher, write_jsonl
from solver_ppo.errors import UserError
from solver_ppo.models.config import ModelConfig
from solver_ppo.models.loading import load_model
from tests.builders import answer_token_loss

ROOT = Path(__file__).resolve().parents[1]


def write_problems(path: Path, n: int, seed: int) -> Path:
    with open(path, "w") as f:
        for item in generate(n, seed=seed):
            f.write(json.dumps(item.to_json()) + "\n")
    return path


def answer_loss(model_dir: Path, problems_path: Path) -> float:
    """Mean cross-entropy of the reference answers given the questions (the SFT objective)."""
    loaded = load_model(ModelConfig(family="chatglm", path=str(model_dir)))
    losses = []
    for problem in iter_problems(problems_path):
        prompt = loaded.chat.encode_prompt(loaded.tokenizer, build_messages(problem, "", ""))
        target = loaded.tokenizer.encode(answer_text(problem), add_special_tokens=False)
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        losses.append(torch.nn.functional.cross_entropy(logits.float(), ids[0, len(prompt) :]).item())
    return sum(losses) / len(losses)


def sft_overrides(model_dir: Path, data: Path, out: Path, root: Path, steps: int, **extra) -> list[str]:
    base = {
        "model.path": model_dir, "output_dir": out, "data.train": data, "data.system_prompt": "",
        "data.instruction": "", "sft.max_steps": steps, "sft.batch_size": 4, "sft.lr": 3e-3, "sft.warmup_steps": 0,
        "sft.lr_schedule": "constant", "sft.max_length": 2048, "trainer.root_dir": root, "trainer.enable_progress_bar": False,
        "trainer.cpu_threads": 1,
    }
    base.update(extra)
    return [f'{k}=""' if v == "" else f"{k}={v}" for k, v in base.items()]  # `key=` alone would be None


def test_sft_lowers_the_answer_loss_and_writes_a_loadable_checkpoint(tiny_chatglm_dir, tmp_path):
    from solver_ppo.sft.cli import train_sft

    data = write_problems(tmp_path / "train.jsonl", 8, seed=11)
    out = tmp_path / "sft_model"
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, out, tmp_path / "logs", steps=12,
                                          **{"model.lora.enabled": False}), schema_cls=SFTConfig)  # fmt: skip
    before = answer_loss(tiny_chatglm_dir, data)
    train_sft(cfg)
    after = answer_loss(out, data)
    assert after < before - 0.5, (before, after)
    assert (out / "config.json").is_file() and (out / "tokenizer.model").is_file()
    events = EventAccumulator(str(next((tmp_path / "logs" / "sft").glob("version_*"))))
    events.Reload()
    assert "sft/loss" in events.Tags()["scalars"]


def test_sft_validation_logs_the_held_out_answer_loss_of_the_current_weights(tiny_chatglm_dir, tmp_path):
    from solver_ppo.sft.cli import train_sft

    data = write_problems(tmp_path / "train.jsonl", 8, seed=11)
    val = write_problems(tmp_path / "val.jsonl", 4, seed=12)  # one batch of 4
    out = tmp_path / "sft_model"
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, out, tmp_path / "logs", steps=12, **{
        "model.lora.enabled": False, "data.val": val, "trainer.val_every": 6}), schema_cls=SFTConfig)  # fmt: skip
    train_sft(cfg)
    events = EventAccumulator(str(next((tmp_path / "logs" / "sft").glob("version_*"))))
    events.Reload()
    logged = [e.value for e in events.Scalars("sft/val_loss")]
    assert len(logged) == 2 and logged[1] < logged[0], logged
    # the last pass ran on the final weights: the token-mean cross-entropy of the written model
    expected = answer_token_loss(out, val, cfg.data.system_prompt, cfg.data.instruction)
    assert abs(logged[1] - expected) < 1e-4, (logged[1], expected)
    bad = load_config(None, sft_overrides(tiny_chatglm_dir, data, out, tmp_path / "logs", steps=1, **{
        "data.val": val, "trainer.val_every": -1}), schema_cls=SFTConfig)  # fmt: skip
    with pytest.raises(UserError, match=r"trainer.val_every=-1 is outside its allowed range \[0, inf\)"):
        train_sft(bad)


def test_sft_with_lora_merges_into_the_written_checkpoint(tiny_chatglm_dir, tmp_path):
    from solver_ppo.sft.cli import train_sft

    data = write_problems(tmp_path / "train.jsonl", 4, seed=12)
    out = tmp_path / "sft_lora"
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, out, tmp_path / "logs", steps=6,
                                          **{"sft.lr": 1e-2}), schema_cls=SFTConfig)  # fmt: skip
    train_sft(cfg)
    merged = load_model(ModelConfig(family="chatglm", path=str(out))).model.state_dict()
    base = load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir))).model.state_dict()
    assert merged.keys() == base.keys()  # official names, no lora_ leftovers
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert any("query_key_value" in k for k in changed)
    assert not any("word_embeddings" in k for k in changed)  # LoRA does not touch the embeddings


def test_sft_that_can_train_on_nothing_stops_before_writing_a_model(tiny_chatglm_dir, tmp_path, capsys):
    """The issue's `sft` commands at test size: the pyscipopt preset longer than sft.max_length, no
    example short enough, too many too long. Each ends in one line with the numbers, exit 2, no model."""
    data = write_problems(tmp_path / "train.jsonl", 8, seed=11)
    out = tmp_path / "sft_model"
    base = sft_overrides(tiny_chatglm_dir, data, out, tmp_path / "logs", steps=2)
    cases = [
        (["data.instruction=pyscipopt", "sft.max_length=320"],
         "error: sft.max_length=320 cannot hold the prompt's fixed part: the system prompt, instruction 'pyscipopt' "
         "and chat format take "),
        (['data.instruction=""', 'data.system_prompt=""', "sft.max_length=40"],
         f"error: data.train={data}: no example fits sft.max_length=40: the shortest of the first 8 is "),
        (['data.instruction=""', 'data.system_prompt=""', "sft.max_length=300"],
         f"error: data.train={data}: 3 of the first 8 records (38%) would be left out (3 over sft.max_length=300; "),
    ]
    for extra, message in cases:
        assert main(["sft", str(ROOT / "configs" / "quickstart_sft.yaml"), *base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines()[-1].startswith(message) and err.count("error") == 1, err  # after Lightning's INFO lines
        assert not (out / "config.json").exists()


def test_sft_steps_only_on_examples_and_summarizes_the_skipped_ones(tiny_chatglm_dir, tmp_path, capsys):
    """Records 0 and 1 are too long and come first (batch size 1, file order): those two batches are
    no optimizer step; 3 steps follow. One summary line at the end instead of a line per record."""
    from solver_ppo.sft.cli import train_sft

    items = [item.to_json() for item in generate(8, seed=11)]
    for item in items[:2]:
        item["question"] = " ".join([item["question"]] * 30)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, tmp_path / "out", tmp_path / "logs", steps=3, **{
        "sft.batch_size": 1, "data.shuffle_buffer": 1, "model.lora.enabled": False}), schema_cls=SFTConfig)  # fmt: skip
    train_sft(cfg)
    out = capsys.readouterr().out
    assert f"2 of the first 8 examples of data.train={data} (25.0%) are over sft.max_length=2048" in out
    assert "2 examples in steps 1-5 (40.0%) are over sft.max_length=2048 and left out: " in out
    assert "(first: train-00000, train-00001)" in out and "skipped" not in out
    assert f"SFT model written to {tmp_path / 'out'} (3 optimizer steps)" in out
    events = EventAccumulator(str(next((tmp_path / "logs" / "sft").glob("version_*"))))
    events.Reload()
    assert events.Scalars("sft/skipped_steps")[-1].value == 2.0  # the running count of steps without examples
    assert len(events.Scalars("sft/loss")) == 3


def test_sft_reads_prompt_completion_messages_and_alpaca_records(tiny_chatglm_dir, tmp_path, capsys):
    """The field's SFT formats, auto-detected per record: the prompt as written (a messages system
    turn kept, no instruction appended), the completion / assistant turn / output as the target,
    the prompt masked out of the loss. Without an answer such records train SFT only: `train` refuses them."""
    from solver_ppo.sft.module import SFTModule

    completion = "```lp\nmaximize\n obj: x\nsubject to\n c: x <= 4\nend\n```\nOptimal value: 4"
    records = [
        {"prompt": "Maximize x with x at most 4.", "completion": completion},
        {"messages": [{"role": "system", "content": "You write LP models."},
                      {"role": "user", "content": "Maximize y with y at most 2."},
                      {"role": "assistant", "content": completion.replace("x", "y").replace("4", "2")}]},
        {"instruction": "Write the model.", "input": "Maximize z, z at most 3.", "output": completion.replace("4", "3")},
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = list(iter_problems(data))
    assert [p.question for p in problems] == ["Maximize x with x at most 4.", "Maximize y with y at most 2.",
                                              "Write the model.\n\nMaximize z, z at most 3."]
    assert [p.system for p in problems] == [None, "You write LP models.", None]
    assert all(p.as_written and not p.scorable for p in problems)
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, tmp_path / "out", tmp_path / "logs", steps=2,
                                          **{"data.instruction": "lp"}), schema_cls=SFTConfig)  # fmt: skip
    module = SFTModule(cfg, load_model(cfg.model))
    input_ids, _, labels = module.encode(problems)
    for problem, ids, row in zip(problems, input_ids, labels):
        answer = row != -100
        assert module.tokenizer.decode(row[answer].tolist()[:-1]) == problem.demonstration
        prompt = module.tokenizer.decode(ids[~answer].tolist())
        assert problem.question in prompt and "fenced block" not in prompt
        assert ("You write LP models." in prompt) == (problem.system is not None)
    assert main(["sft", *sft_overrides(tiny_chatglm_dir, data, tmp_path / "out", tmp_path / "logs", steps=2)]) == 0
    assert (tmp_path / "out" / "config.json").is_file()
    argv = ["train", f"model.path={tmp_path / 'out'}", f"data.train={data}", f"trainer.root_dir={tmp_path / 'logs'}"]
    assert main(argv) == 2
    assert (f"error: data.train={data}: no usable record among the first 3 (3 without an answer to score "
            "(SFT-only records))") in capsys.readouterr().err


@pytest.mark.parametrize(("turns", "labels"), [(1, "reference"), (2, "votes")])
def test_shortened_quickstart_runs_end_to_end(turns, labels, tiny_chatglm_dir, tmp_path, capsys):
    data = write_problems(tmp_path / "sft.jsonl", 4, seed=13)
    starter = tmp_path / "starter"
    assert main(["sft", *sft_overrides(tiny_chatglm_dir, data, starter, tmp_path / "logs", steps=3)]) == 0
    out = tmp_path / "quickstart"
    code = main([
        "quickstart", f"model.path={starter}", "trainer.max_steps=2", "trainer.checkpoint_every=1",
        "sampling.max_new_tokens=12", "ppo.prompts_per_step=2", "ppo.samples_per_prompt=2", "ppo.minibatch_size=4",
        "evaluation.workers=1", "trainer.enable_progress_bar=false",
        "trainer.val_every=1", "--heldout", "4", "--train-problems", "8", "--starter-problems", "8", "--out", str(out),
        f"rollout.turns={turns}", "rollout.end=turns", f"evaluation.labels={labels}",
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == labels
    for side in ("sft", "ppo"):
        assert set(results[side]) == {"accuracy", "solved_rate", "format_rate", "graph_distance", "reward",
                                      "accuracy_by_turn", "headroom"}
        assert 0.0 <= results[side]["reward"] <= 1.0 and len(results[side]["accuracy_by_turn"]) == turns
        room = results[side]["headroom"]  # the first answers: wrong = exposed + silent, out of the held-out 4
        assert room["n"] == 4 and room["wrong"] == room["exposed"] + room["silent"]
        assert room["wrong"] == round(4 * (1 - results[side]["accuracy_by_turn"][0]))
    assert results["sft"]["accuracy"] == results["sft"]["accuracy_by_turn"][0]  # the starter: its first answer
    assert results["ppo"]["accuracy"] == results["ppo"]["accuracy_by_turn"][-1]  # the PPO policy: its last
    assert results["policy_tokens"] > 0
    run_dir = Path(results["run_dir"])
    assert run_dir.parent == out / "quickstart"  # --out holds the run too: OUT/run_name/version_N
    assert (run_dir / "curves.png").stat().st_size > 1000
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert len(events.Scalars("val/accuracy")) == 2  # the held-out set, validated after each PPO step
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    if labels == "votes":  # every step's groups counted; label accuracy only where a group got a label
        assert len(events.Scalars("votes/labelled")) == 2
        labelled = "votes/label_accuracy" in events.Tags()["scalars"]
        assert (results["vote_label_accuracy"] is not None) == labelled
    else:
        assert results["vote_label_accuracy"] is None
    rows = [json.loads(line) for line in open(out / "ppo_heldout.jsonl")]
    assert len(rows) == 4 and all(row["status"] and row["reason"] for row in rows)  # scored by the evaluator
    assert all(len(row.get("turns", [None])) == turns for row in rows)
    if turns > 1:
        assert len(events.Scalars("val/acc@2")) == 2 and len(events.Scalars("turns/acc@2")) == 2
    heldout = {p.id for p in iter_problems(out / "data" / "heldout.jsonl")}
    assert {row["id"] for row in rows} == heldout
    if turns > 1:
        return
    # the starter, the run directory and its export, evaluated without prompt flags, answer as the
    # quick start's own evaluation did (the starter was trained on the question alone, not on eval's defaults)
    from solver_ppo.eval_policy import evaluate_policy
    from solver_ppo.models.export import export

    common = {"max_new_tokens": 12, "batch_size": 50}
    exported = export(starter, run_dir, tmp_path / "exported")
    for side, model, adapter in (("sft", starter, None), ("ppo", starter, str(run_dir / "trainable.pt")),
                                 ("ppo", exported, None)):
        summary, again = evaluate_policy(str(model), str(out / "data" / "heldout.jsonl"), adapter=adapter, **common)
        quickstart_rows = [json.loads(line) for line in open(out / f"{side}_heldout.jsonl")]
        assert [r["response"] for r in again] == [r["response"] for r in quickstart_rows], (side, model)
        assert summary["reward"] == pytest.approx(results[side]["reward"])
    default_prompts, _ = evaluate_policy(str(starter), str(out / "data" / "heldout.jsonl"), instruction="lp", **common)
    assert "--instruction='lp' overrides the instruction" in capsys.readouterr().err


def test_quickstart_ppo_prompts_are_new_to_the_starter(tmp_path):
    """PPO prompts share no problem with the held-out set or with the starter's SFT data, which
    the quick start rebuilds from the seed exactly as `make-data` drew it."""
    from solver_ppo.data.synthetic import Item, make_splits, signature
    from solver_ppo.quickstart import make_data

    train_path, heldout_path = make_data(tmp_path, 120, 12, 0, "easy", starter_problems=300)
    read = lambda path: [Item(**json.loads(line)) for line in open(path)]  # noqa: E731
    ppo, heldout = read(train_path), read(heldout_path)
    starter, starter_heldout = make_splits(300, 12, 0, "easy")
    assert [i.id for i in heldout] == [i.id for i in starter_heldout] and len(ppo) == 120
    seen = {signature(i) for i in starter + heldout}
    assert not any(signature(i) in seen for i in ppo)
    # without the exclusion this stream would repeat some of the starter's problems
    from solver_ppo.data.synthetic import generate

    plain = generate(120, 0, "easy", split="ppo")
    assert any(signature(i) in seen for i in plain)


def test_sft_imitates_the_teachers_demonstration_where_a_record_has_one(tiny_chatglm_dir, tmp_path):
    from solver_ppo.sft.module import SFTModule

    items = generate(6, seed=3)
    assert imperfect_teacher(items, seed=3, flip_rate=1.0) >= 2  # diet and staffing state requirements
    data = tmp_path / "train.jsonl"
    write_jsonl(data, items)
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, tmp_path / "out", tmp_path / "logs", steps=1,
                                          **{"sft.max_length": 1024}),
                      schema_cls=SFTConfig)
    module = SFTModule(cfg, load_model(cfg.model))
    problems = list(iter_problems(data))
    _, _, labels = module.encode(problems)
    for problem, row in zip(problems, labels):
        target = row[row != -100].tolist()[:-1]  # the answer tokens, less the stop token
        text = module.tokenizer.decode(target)
        assert text == (problem.demonstration or answer_text(problem)), problem.id
        if problem.demonstration:
            assert " <= " in text and " >= " not in text


def test_sft_revision_demonstrations_put_the_first_answer_and_its_feedback_before_the_target(tiny_chatglm_dir, tmp_path):
    from solver_ppo.data.synthetic import revision_demonstrations
    from solver_ppo.evaluation import EvaluationConfig, Reference, feedback_message, score_answer
    from solver_ppo.sft.module import SFTModule

    items = generate(4, seed=3)
    flipped = imperfect_teacher(items, seed=3, flip_rate=1.0)
    teacher = {item.id: item.demonstration for item in items}
    assert flipped >= 1 and revision_demonstrations(items, seed=3, fraction=1.0, workers=1) == 4
    data = tmp_path / "train.jsonl"
    write_jsonl(data, items)
    cfg = load_config(None, sft_overrides(tiny_chatglm_dir, data, tmp_path / "out", tmp_path / "logs", steps=1,
                                          **{"sft.max_length": 4096}), schema_cls=SFTConfig)
    module = SFTModule(cfg, load_model(cfg.model))
    problems = list(iter_problems(data))
    input_ids, _, labels = module.encode(problems)
    for problem, ids, row in zip(problems, input_ids, labels):
        first = teacher[problem.id] or answer_text(problem)  # the teacher's answer, flawed where it flipped
        assert problem.revision["answer"] == first and problem.demonstration is None
        # the feedback is the evaluation's own message on that first answer
        result = score_answer(first, Reference.from_answer(problem.answer, problem.reference_model),
                              EvaluationConfig(feedback=True))
        assert problem.revision["feedback"] == feedback_message(result)
        # the context ends as a 2-turn rollout's does: first answer, its stop token, the observation message
        tok, eos = module.tokenizer, module.chat.stop_token_ids[0]
        turn = tok.encode(first, add_special_tokens=False) + [eos]
        turn += module.chat.encode_feedback(tok, problem.revision["feedback"], eos)
        context = ids[row == -100].tolist()
        assert context[-len(turn) :] == turn
        assert tok.decode(turn[-3:], skip_special_tokens=False).endswith("<|assistant|>")
        assert module.tokenizer.decode(row[row != -100].tolist()[:-1]) == answer_text(problem)  # the target: the reference


def test_revision_demonstrations_with_done_answer_a_sound_first_model_with_the_done_reply(tmp_path, capsys):
    """make-data --revisions 1 --revisions-done: a revision of a flipped (flawed) first answer
    targets the reference, one of a sound first answer the done reply, which the evaluation reads
    as an answer without a model (what rollout.end=done ends an episode on); SFT's target is it."""
    from solver_ppo.data.synthetic import DONE_REPLY
    from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer

    out = tmp_path / "data"
    args = ["make-data", "--out", str(out), "--train", "12", "--heldout", "0", "--seed", "3", "--teacher-flip", "0.6",
            "--revisions", "1"]
    assert main([*args, "--revisions-done"]) == 0
    problems = list(iter_problems(out / "train.jsonl"))
    flawed = [p for p in problems if p.revision["answer"] != answer_text(p)]  # the teacher flipped it
    sound = [p for p in problems if p not in flawed]
    assert flawed and sound and all(p.revision for p in problems)
    assert all(p.demonstration is None for p in flawed) and all(p.demonstration == DONE_REPLY for p in sound)
    done = score_answer(DONE_REPLY, Reference.from_answer(sound[0].answer, sound[0].reference_model), EvaluationConfig())
    assert done.status == "no_model"
    assert sft_target(sound[0]) == DONE_REPLY and sft_target(flawed[0]) == answer_text(flawed[0])
    assert all(" <= " in p.revision["answer"] and " >= " not in p.revision["answer"] for p in flawed)
    capsys.readouterr()
    assert main(["make-data", "--out", str(tmp_path / "none"), "--train", "2", "--heldout", "0", "--revisions-done"]) == 2
    assert "--revisions is 0: give --revisions F too" in capsys.readouterr().err


def test_ppo_unlearns_the_starters_teacher_error_on_new_problems(tmp_path):
    """The quick start's claim, shortened: the committed starter (SFT on an imperfect teacher)
    writes staffing requirements as upper bounds; a few PPO steps against SCIP on other staffing
    problems make it write `>=` on held-out ones."""
    from solver_ppo.data.prompts import build_messages
    from solver_ppo.eval_policy import answer, load_trained
    from solver_ppo.models.config import SamplingConfig
    from solver_ppo.ppo.train import train
    from solver_ppo.quickstart import FORMATS

    train_path, heldout_path = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    write_jsonl(train_path, generate(160, seed=5, families=["staffing"], split="ppo"))
    write_jsonl(heldout_path, generate(16, seed=5, families=["staffing"], split="heldout"))
    starter = str(ROOT / "checkpoints" / "quickstart-sft")
    cfg = load_config(FORMATS["lp"][0], [
        f"model.path={starter}", f"data.train={train_path}", "trainer.max_steps=20",
        "trainer.val_every=0", "trainer.checkpoint_every=0", "trainer.sample_log_every=0",
        f"trainer.root_dir={tmp_path / 'logs'}", "trainer.enable_progress_bar=false",
    ])  # fmt: skip
    _, trainer = train(cfg)

    def requirements_written_as_lower_bounds(adapter: str | None) -> int:
        """Greedy answers with as many `>=` rows as the reference (every period's staffing need)."""
        loaded, model = load_trained(starter, adapter=adapter)
        problems = list(iter_problems(heldout_path))
        prompts = [loaded.chat.encode_prompt(loaded.tokenizer, build_messages(p, "", "")) for p in problems]
        greedy = SamplingConfig(max_new_tokens=cfg.sampling.max_new_tokens, do_sample=False)
        texts = answer(loaded, model, prompts, greedy)
        return sum(text.count(" >= ") == p.reference_model.count(" >= ") for text, p in zip(texts, problems))

    before = requirements_written_as_lower_bounds(None)
    after = requirements_written_as_lower_bounds(str(Path(trainer.log_dir) / "trainable.pt"))
    assert before <= 4 and after >= 12, (before, after)


def test_code_answer_quickstart_runs_its_programs_through_the_sandbox(tmp_path):
    """`quickstart --answer-format pyscipopt`, shortened: the committed code starter answers with
    pyscipopt programs; each runs in the sandbox, and the model it built is solved and compared."""
    out = tmp_path / "quickstart"
    code = main([
        "quickstart", "--answer-format", "pyscipopt", "trainer.max_steps=2", "trainer.checkpoint_every=0",
        "ppo.prompts_per_step=2", "ppo.samples_per_prompt=2", "ppo.minibatch_size=4", "evaluation.workers=1",
        f"trainer.root_dir={tmp_path / 'logs'}", "trainer.enable_progress_bar=false", "trainer.val_every=0",
        "--heldout", "6", "--train-problems", "8", "--out", str(out),
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert Path(results["run_dir"]).parent.name == "quickstart_pyscipopt"  # configs/quickstart_pyscipopt.yaml ran
    for side in ("sft", "ppo"):
        rows = [json.loads(line) for line in open(out / f"{side}_heldout.jsonl")]
        assert len(rows) == 6 and all("```python" in r["response"] and "pyscipopt" in r["response"] for r in rows)
        built = [r for r in rows if r["status"] in ("optimal", "infeasible")]  # captured from the program, solved
        assert len(built) >= 4 and all(r["n_vars"] > 0 and r["graph_distance"] is not None for r in built), rows
        assert results[side]["format_rate"] == pytest.approx(sum(r["breakdown"]["format"] for r in rows) / 6)
        assert results[side]["solved_rate"] == pytest.approx(sum(r["breakdown"]["solved"] for r in rows) / 6)
        assert results[side]["solved_rate"] > 0
    # the rows' rewards are the evaluation's of each program run in this process's sandbox, and a
    # known right program (the reference model as pyscipopt code) earns the full reward that way
    from solver_ppo.data.code_answers import code_answer
    from solver_ppo.evaluation import EvaluationConfig, Reference, score_answer

    heldout = list(iter_problems(out / "data" / "heldout.jsonl"))
    for row, problem in zip(rows, heldout):
        again = score_answer(row["response"], Reference.from_answer(problem.answer, problem.reference_model), EvaluationConfig())
        assert (again.reward, again.status) == (row["reward"], row["status"])
    right = score_answer(code_answer(heldout[0].reference_model, "pyscipopt"),
                         Reference.from_answer(heldout[0].answer, heldout[0].reference_model), EvaluationConfig())
    assert right.matched and right.reward == pytest.approx(1.0) and right.graph_distance == pytest.approx(0.0)
