"""tools/make_tiny_chatglm.py: options, corpus files, and that the result loads like a real checkpoint."""

import importlib.util
import json
from pathlib import Path

import pytest

from solver_ppo.models.config import ModelConfig
from solver_ppo.models.loading import load_model

_spec = importlib.util.spec_from_file_location(
    "make_tiny_chatglm", Path(__file__).resolve().parents[1] / "tools" / "make_tiny_chatglm.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_tool_with_corpus_and_sizes(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"question": f"Maximize profit of widget {i} using gizmo time {i * 7}", "id": i} for i in range(200)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\nplain line about gizmo widgets\n")
    out = tmp_path / "ckpt"
    assert tool.main([str(out), "--variant", "chatglm3", "--layers", "3", "--hidden", "32", "--heads", "2",
                      "--kv-groups", "1", "--ffn", "48", "--vocab-size", "400", "--corpus", str(corpus)]) == 0  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert (config["num_layers"], config["hidden_size"], config["kv_channels"], config["multi_query_group_num"],
            config["ffn_hidden_size"], config["padded_vocab_size"]) == (3, 32, 16, 1, 48, 400)  # fmt: skip
    loaded = load_model(ModelConfig(family="chatglm", path=str(out)))
    assert len(loaded.tokenizer) <= 400
    # words of the corpus (JSONL string values) became single pieces; the id field did not count as text
    assert loaded.tokenizer.tokenize(" widget") == ["▁widget"]
    assert loaded.tokenizer.tokenize(" gizmo") == ["▁gizmo"]


@pytest.mark.parametrize("args, message", [(["--corpus", "missing.txt"], "corpus file not found"),
                                           (["--hidden", "60", "--heads", "4"], "head dim divisible by 4")])  # fmt: skip
def test_tool_reports_bad_input(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(tmp_path / "x"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_skipped_keys_teach_the_tokenizer_nothing(tmp_path):
    rows = [{"question": f"widget {i}", "demonstration": "zebra quokka " * 5} for i in range(50)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert tool.read_corpus([str(corpus)], frozenset({"demonstration"})) == [r["question"] for r in rows]
    assert len(tool.read_corpus([str(corpus)])) == 100
