"""Streaming prompt data: formats, bad lines, the JSON-array parser, sharding, shuffling, resume, memory."""

import itertools
import json
import random
import re
import tracemalloc
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from solver_ppo.config import DataSettings
from solver_ppo.data.datamodule import PromptDataModule, PromptDataset, _as_is, shuffle_buffer
from solver_ppo.data.formats import BadRecord, Problem, iter_problems, iter_records, normalize_record
from solver_ppo.data.prompts import INSTRUCTION, build_messages
from solver_ppo.errors import UserError


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def numbered(tmp_path: Path, n: int, name: str = "items.jsonl") -> Path:
    return write_jsonl(tmp_path / name, [{"id": f"q{i}", "question": f"question {i}", "answer": i} for i in range(n)])


# ---- formats ----


def test_every_format_normalizes():
    project = {"id": "a1", "question": "Q?", "answer": 3.5, "reference_model": "Maximize\n obj: x\nEnd"}
    assert normalize_record(project, "project", "f:1", "f:1") == Problem("a1", "Q?", "3.5", "Maximize\n obj: x\nEnd")
    sirl = {"en_question": "Q2", "en_answer": "219816.0"}
    assert normalize_record(sirl, "sirl", "f:2", "train:2") == Problem("train:2", "Q2", "219816.0", None)
    mamo = {"id": 7, "Question": "Q3", "Answer": "10000", "Category": "optimization"}
    assert normalize_record(mamo, "mamo", "f:3", "f:3") == Problem("7", "Q3", "10000", None)
    optibench = {
        "index": 0,
        "question": "Q4",
        "results": {"Number of sled dog trips": "0.0", "Maximized number of fish": "3000.0"},
        "type": "linear",
    }
    assert normalize_record(optibench, "optibench", "f:4", "f:4") == Problem("0", "Q4", "3000.0", None)
    # the objective is found by its label even when it comes first; without a named one, the last value
    first = {"question": "Q5", "results": {"The optimal number of stations is": "2.0", "Build in city 1": "0.0"}}
    assert normalize_record(first, "optibench", "f:5", "bench:5").answer == "2.0"
    unnamed = {"question": "Q6", "results": {"The length": "10", "The perimeter": "40"}}
    assert normalize_record(unnamed, "optibench", "f:6", "bench:6") == Problem("bench:6", "Q6", "40", None)
    assert normalize_record({"question": "Q7", "results": {}}, "optibench", "f:7", "b:7").answer is None


def test_auto_detects_per_line(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "p", "question": "project q", "answer": "1"},
            {"en_question": "sirl q", "en_answer": "2"},
            {"id": 3, "Question": "mamo q", "Answer": "3"},
            {"question": "bench q", "results": {"Total cost": "4"}},
        ],
    )
    problems = list(iter_problems(path))
    assert [(p.id, p.question, p.answer) for p in problems] == [
        ("p", "project q", "1"),
        ("mixed:2", "sirl q", "2"),
        ("3", "mamo q", "3"),
        ("mixed:4", "bench q", "4"),
    ]


BAD_FILE = [
    {"id": "ok1", "question": "fine", "answer": "1"},
    '{"id": "broken", "question": ',  # line 2: bad JSON
    "",  # line 3: blank, ignored
    {"id": "nq", "answer": "5"},  # line 4: no question
    "[1, 2, 3]",  # line 5: not an object
    {"id": "t", "question": ["a", "list"]},  # line 6: wrong type
    {"id": "ok2", "question": "also fine", "answer": None},
    {"question": "   "},  # line 8: empty question
]


def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", BAD_FILE)
    messages = []
    problems = list(iter_problems(path, on_bad_line="skip", report=messages.append))
    assert [p.id for p in problems] == ["ok1", "ok2"]
    assert [m.split(": ")[0] for m in messages] == [f"{path}:{n}" for n in (2, 4, 5, 6, 8)]
    assert "not valid JSON" in messages[0]
    assert "no question field" in messages[1]
    assert "expected a JSON object, got list" in messages[2]
    assert "'question' must be a string or a number, got list" in messages[3]
    assert "'question' is empty" in messages[4]


def test_bad_line_is_fatal_when_configured(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", BAD_FILE)
    stream = iter_problems(path, on_bad_line="error")
    assert next(stream).id == "ok1"
    with pytest.raises(BadRecord, match=re.escape(f"{path}:2: not valid JSON")) as err:
        next(stream)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line
    with pytest.raises(UserError, match="data.on_bad_line='ignore'"):
        list(iter_problems(path, on_bad_line="ignore"))
    with pytest.raises(UserError, match="data.format='csv' is not one of"):
        list(iter_problems(path, fmt="csv"))
    with pytest.raises(UserError, match="data file not found"):
        list(iter_problems(tmp_path / "missing.jsonl"))


def test_bytes_that_are_not_utf8_are_a_bad_line_not_a_crash(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"id": "a", "question": "fine"}\n{"id": "b", "question": "caf\xe9"}\n\xff{"question": "c"}\n'
                     b'{"id": "d", "question": "caf\xc3\xa9"}\n')
    messages = []
    problems = list(iter_problems(path, report=messages.append))
    assert [(p.id, p.question) for p in problems] == [("a", "fine"), ("d", "caf\u00e9")]
    assert messages == [f"{path}:2: not valid UTF-8 (byte 0xe9 at column 29) (skipped)",
                        f"{path}:3: not valid UTF-8 (byte 0xff at column 1) (skipped)"]
    array = tmp_path / "mixed.json"
    array.write_bytes(b'[{"question": "a"},\n {"question": "\xff"}]')
    for chunk in (4, 1 << 16):
        with pytest.raises(UserError, match=re.escape(f"{array}:2: not valid UTF-8 (byte 0xff) in the JSON array")):
            list(iter_records(array, chunk_chars=chunk))


# ---- the JSON array (OptiBench) parser ----


def test_json_array_streamed_across_chunk_boundaries(tmp_path):
    elements = [
        {"index": 0, "question": "first, with [brackets] and {braces}", "results": {"Total": "1.5"}},
        12345,  # a number cut by a chunk end must not be read short
        {"question": "quote \" and ] inside", "results": {"Max profit": "2"}, "index": 1},
        "text",
        {"question": "unicode é ✓", "results": {"Total cost": "-3e2"}, "index": 2},
    ]
    text = json.dumps(elements, indent=4, ensure_ascii=False)
    path = tmp_path / "bench.json"
    path.write_text(text, encoding="utf-8")
    starts = [text.count("\n", 0, text.index(marker)) + 1 for marker in ('"index": 0', "12345", '"question": "quote', '"text"', '"question": "unicode')]
    starts[0] -= 1  # an object starts on the line of its '{', one above its first key
    starts[2] -= 1
    starts[4] -= 1
    for chunk in (1, 2, 3, 5, 8, 13, 64, 1 << 16):
        records = list(iter_records(path, chunk_chars=chunk))
        assert [value for _, value in records] == elements, chunk
        assert [line for line, _ in records] == starts, chunk
    messages = []
    problems = list(iter_problems(path, report=messages.append))
    assert [(p.id, p.answer) for p in problems] == [("0", "1.5"), ("1", "2"), ("2", "-3e2")]
    assert [m.split(": ")[0] for m in messages] == [f"{path}:{starts[1]}", f"{path}:{starts[3]}"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"question": "a"}, {"question": ', "not valid JSON in the array"),
        ('[{"question": "a"} {"question": "b"}]', "expected ',' or ']'"),
        ('[{"question": "a"},\n', "not closed"),
    ],
)
def test_json_array_syntax_errors_are_fatal(tmp_path, text, message):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        list(iter_records(path, chunk_chars=4))


# ---- sharding, shuffling, resume ----


def ids_of(batches) -> list[str]:
    return [p.id for batch in batches for p in batch]


def test_shards_cover_every_item_once_over_2_ranks_x_2_workers(tmp_path):
    path = numbered(tmp_path, 23)
    per_rank = []
    for rank in range(2):
        dataset = PromptDataset(path, batch_size=3, shuffle_buffer=4, seed=1, rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=2)
        per_rank.append(ids_of(loader))
    everything = per_rank[0] + per_rank[1]
    assert sorted(everything) == sorted(f"q{i}" for i in range(23))  # each exactly once
    assert len(per_rank[0]) in (11, 12) and len(per_rank[1]) in (11, 12)


def test_shuffle_buffer_deterministic_by_seed_and_permutes(tmp_path):
    path = numbered(tmp_path, 40)

    def order(seed):
        return ids_of(PromptDataset(path, batch_size=8, shuffle_buffer=10, seed=seed))

    plain = [f"q{i}" for i in range(40)]
    assert order(3) == order(3)
    assert order(3) != order(4)
    assert order(3) != plain and sorted(order(3)) == sorted(plain)
    assert ids_of(PromptDataset(path, batch_size=8, shuffle_buffer=0)) == plain


def test_shuffle_buffer_bounded_window():
    out = list(shuffle_buffer(range(100), 5, random.Random(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    # with a buffer of 5, item i cannot come out before output position i - 4 (it has not arrived yet)
    assert all(out.index(i) >= i - 4 for i in range(100))


def take(iterable, n):
    out = []
    for batch in iterable:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_same_stream(tmp_path, workers):
    path = numbered(tmp_path, 7)  # batches of 3 straddle passes; passes reshuffle

    def loader(start):
        dataset = PromptDataset(path, batch_size=3, shuffle_buffer=3, seed=9, loop=True, start_batch=start)
        return DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=workers)

    full = [[p.id for p in b] for b in take(loader(0), 30)]
    for start in (1, 4, 17):  # 17 batches skip whole passes without reading them
        resumed = [[p.id for p in b] for b in take(loader(start), 30 - start)]
        assert resumed == full[start:], start
    # every pass over a shard yields each of its items once
    if workers == 0:
        flat = [i for b in full for i in b]
        for k in range(0, 84, 7):
            assert sorted(flat[k : k + 7]) == sorted(f"q{i}" for i in range(7))


def test_loop_with_an_empty_shard_is_an_error(tmp_path):
    path = numbered(tmp_path, 1)
    dataset = PromptDataset(path, batch_size=1, loop=True, rank=1, world_size=2)
    with pytest.raises(UserError, match="shard 1 of 2"):
        next(iter(dataset))


def test_streaming_50k_lines_holds_no_file_in_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        for i in range(50_000):
            fh.write(json.dumps({"id": f"q{i}", "question": f"question {i} " + "x" * 100, "answer": str(i)}) + "\n")
    size = path.stat().st_size
    dataset = PromptDataset(path, batch_size=8, shuffle_buffer=64)
    tracemalloc.start()
    count = 0
    for batch in dataset:
        count += len(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 50_000
    assert size > 6_000_000
    assert peak < 1_000_000, f"peak {peak} bytes while streaming a {size}-byte file"
    assert not any(isinstance(v, (list, tuple, dict)) for v in vars(dataset).values() if not isinstance(v, str))


# ---- the LightningDataModule ----


class RecordingModule(pl.LightningModule):
    """Records the problem ids of each training batch; one optimizer step per batch."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append([p.id for p in batch])
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward((self.weight - 1.0).pow(2).sum())
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)


def trainer(tmp_path, max_steps):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_datamodule_batches_and_exact_resume_through_lightning(tmp_path):
    settings = DataSettings(train=str(numbered(tmp_path, 11)), shuffle_buffer=4, num_workers=0)

    def datamodule():
        return PromptDataModule(settings, prompts_per_step=3, seed=5)

    straight = RecordingModule()
    trainer(tmp_path, 8).fit(straight, datamodule())
    assert len(straight.seen) == 8 and all(len(b) == 3 for b in straight.seen)

    first = RecordingModule()
    dm = datamodule()
    t = trainer(tmp_path, 3)
    t.fit(first, dm)
    assert dm.state_dict() == {"train_batches": 3}
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["PromptDataModule"] == {"train_batches": 3}

    second = RecordingModule()
    trainer(tmp_path, 8).fit(second, datamodule(), ckpt_path=ckpt)
    assert first.seen + second.seen == straight.seen


def test_bad_line_in_a_dataloader_worker_still_reads_as_one_line(tmp_path):
    from solver_ppo.errors import user_message

    path = write_jsonl(tmp_path / "bad.jsonl", BAD_FILE)
    settings = DataSettings(train=str(path), on_bad_line="error", num_workers=1, shuffle_buffer=0)
    with pytest.raises(UserError) as err:
        list(itertools.islice(PromptDataModule(settings, prompts_per_step=2).train_dataloader(), 3))
    assert "Original Traceback" in str(err.value)  # how torch re-raises a worker's error
    assert user_message(err.value) == f"{path}:2: not valid JSON (Expecting value at column 1)"


def test_val_dataloader_is_one_ordered_pass(tmp_path):
    settings = DataSettings(train=str(numbered(tmp_path, 5)), val=str(numbered(tmp_path, 5, "val.jsonl")))
    dm = PromptDataModule(settings, prompts_per_step=2)
    assert ids_of(dm.val_dataloader()) == [f"q{i}" for i in range(5)]
    assert [len(b) for b in dm.val_dataloader()] == [2, 2, 1]
    assert PromptDataModule(DataSettings(train=settings.train), prompts_per_step=2).val_dataloader() == []
    with pytest.raises(UserError, match="data.on_bad_line='drop'"):
        PromptDataModule(DataSettings(train=settings.train, on_bad_line="drop"), prompts_per_step=2)


# ---- prompts ----


def test_build_messages():
    problem = Problem("p1", "  Maximize profit of two products.\n", "11")
    messages = build_messages(problem)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"].startswith("Maximize profit of two products.\n\n")
    assert "```lp" in messages[1]["content"] and "Optimal value:" in messages[1]["content"]
    assert build_messages(problem, system_prompt="")[0]["role"] == "user"
    assert build_messages(problem, system_prompt="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_instruction_example_is_a_valid_model_with_the_stated_optimum(tmp_path):
    pyscipopt = pytest.importorskip("pyscipopt")
    lp = re.search(r"```lp\n(.*?)```", INSTRUCTION, re.DOTALL).group(1)
    stated = float(re.search(r"```\nOptimal value: (\S+)", INSTRUCTION).group(1))
    path = tmp_path / "example.lp"
    path.write_text(lp)
    model = pyscipopt.Model()
    model.hideOutput()
    model.readProblem(str(path))
    model.optimize()
    assert model.getStatus() == "optimal"
    assert model.getObjVal() == pytest.approx(stated)


# ---- SFT formats, records left out, prompt settings ----


def test_sft_formats_are_detected_per_record_and_bad_ones_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"id": "c", "prompt": "P?", "completion": "C.", "answer": 4},
        {"messages": [{"role": "user", "content": "U?"}, {"role": "assistant", "content": "A."}]},
        {"instruction": "I", "input": "", "output": "O."},
        {"messages": [{"role": "user", "content": "U?"}]},
        {"prompt": "P?", "completion": ""},
    ])
    bad: list[str] = []
    problems = list(iter_problems(path, report=bad.append))
    assert [(p.id, p.question, p.demonstration, p.answer, p.scorable) for p in problems] == [
        ("c", "P?", "C.", "4", True), ("mixed:2", "U?", "A.", None, False), ("mixed:3", "I", "O.", None, False)]
    assert bad == [f"{path}:4: 'messages' must be [system,] user, assistant turns (one of each), got roles ['user'] (skipped)",
                   f"{path}:5: 'completion' is empty (skipped)"]
    # PPO reads the same file: records with nothing to score are bad records there, with the reason
    bad.clear()
    assert [p.id for p in iter_problems(path, report=bad.append, require_answer=True)] == ["c"]
    assert bad[0] == (f"{path}:2: no answer to score (no 'answer' or reference): an SFT-only record; to train on "
                      "problems without answers, label them by votes (evaluation.labels=votes) (skipped)")


def test_a_run_that_leaves_out_too_much_stops_and_skips_are_summarized(capsys):
    from solver_ppo.data.limits import MIN_RECORDS_FOR_SHARE, SkipCounter

    counter = SkipCounter("data.max_prompt_tokens", 100, max_fraction=0.25, every=2, what="prompt")
    for step in (1, 2):
        for i in range(10):
            counter.fits(f"q{step}-{i}", 90 + 5 * i)  # 90, 95, 100 fit; 105, ..., 135 do not
        counter.end_step(step, counter.read, counter.skipped)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["14 prompts in steps 1-2 (70.0%) are over data.max_prompt_tokens=100 and left out: p50 120, "
                     "p95 135, max 135 tokens; raise data.max_prompt_tokens to keep them (first: q1-3, q1-4, q1-5, "
                     "q1-6, q1-7, ...)"]
    with pytest.raises(UserError, match=r"^\d+ of the \d+ prompts read in \d+ steps \(70%\) were over "
                                        r"data.max_prompt_tokens=100 and left out, more than data.max_skipped_fraction=0.25"):
        for step in range(3, 3 + MIN_RECORDS_FOR_SHARE // 10):
            for i in range(10):
                counter.fits(f"q{step}-{i}", 90 + 5 * i)
            counter.end_step(step, counter.read, counter.skipped)


def test_train_and_sft_take_the_prompt_settings_their_model_was_trained_with(tmp_path, capsys):
    from solver_ppo.config import SFTConfig, load_config
    from solver_ppo.data.prompts import PromptSettings, use_trained_prompt_settings, write_prompt_settings

    write_prompt_settings(tmp_path, PromptSettings("", "pyscipopt", "chatglm3"))
    cfg = load_config(None, [f"model.path={tmp_path}", "data.train=x", "output_dir=y"], schema_cls=SFTConfig)
    use_trained_prompt_settings(cfg)
    assert (cfg.data.system_prompt, cfg.data.instruction, cfg.model.chat_format) == ("", "pyscipopt", "chatglm3")
    assert capsys.readouterr().err == ""
    cfg = load_config(None, [f"model.path={tmp_path}", "data.train=x", "output_dir=y", "data.instruction=lp",
                             'data.system_prompt=""'], schema_cls=SFTConfig)
    use_trained_prompt_settings(cfg)
    assert (cfg.data.system_prompt, cfg.data.instruction) == ("", "lp")
    assert capsys.readouterr().err == (f"data.instruction='lp' overrides the instruction model.path={tmp_path} was "
                                       "trained with ('pyscipopt')\n")
