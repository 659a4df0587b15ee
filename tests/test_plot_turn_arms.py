"""tools/plot_turn_arms.py: arms read from their TensorBoard events, compared at the policy-token budget."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

TOOL = Path(__file__).resolve().parents[1] / "tools" / "plot_turn_arms.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("plot_turn_arms", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(path: Path, steps: int, tags: dict[str, float]) -> Path:
    with SummaryWriter(str(path)) as writer:
        for step in range(1, steps + 1):
            for tag, value in tags.items():
                writer.add_scalar(tag, value * step if tag == "train/kl" else value, step)
    return path


def test_arms_are_read_and_plotted_and_a_wrong_run_is_named(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    single = write_run(tmp_path / "k1", 6, {"train/policy_tokens": 100.0, "solver/accuracy": 0.5, "train/kl": 0.01})
    feedback = write_run(tmp_path / "k2", 4, {"train/policy_tokens": 150.0, "turns/acc@1": 0.4, "turns/acc@2": 0.6,
                                              "train/kl": 0.02})
    assert tool.scalars(str(feedback))["turns/acc@2"] == pytest.approx([0.6] * 4)
    assert tool.trailing_mean([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    png = tmp_path / "arms.png"
    monkeypatch.setattr("sys.argv", ["plot_turn_arms.py", "--run", f"single-turn={single}", "--run", f"K = 2={feedback}",
                                     "--out", str(png)])
    assert tool.main() == 0 and png.stat().st_size > 10_000
    monkeypatch.setattr("sys.argv", ["plot_turn_arms.py", "--run", f"K = 2={tmp_path / 'none'}", "--out", str(png)])
    with pytest.raises(SystemExit):
        tool.main()
    assert f"--run 'K = 2={tmp_path / 'none'}': give LABEL=RUN_DIR with an existing run directory" in capsys.readouterr().err
