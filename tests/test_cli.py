"""The command line: the installed `solver-ppo` script, --version, every command's help and examples,
--print-config, and the generated config reference (docs/config.md)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from solver_ppo.cli import COMMANDS, EXAMPLES, command_parser, main
from solver_ppo.config import SFTConfig, TrainConfig, load_config
from solver_ppo.config_reference import COMMAND, field_comments, render, schema_keys
from solver_ppo.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "solver-ppo"


def run_script(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"{SCRIPT} is not installed; run: .venv/bin/pip install -e . --no-deps"
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_installed_script_reports_the_package_version():
    proc = run_script("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"solver-ppo {version('solver-ppo')}"


def test_the_installed_scripts_help_names_itself_and_ends_with_examples():
    proc = run_script("score", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: solver-ppo score ")
    examples = proc.stdout.split("examples:\n")[1]
    assert examples.strip().splitlines()[0].startswith("solver-ppo score --data app/evaluation/samples/problems.jsonl")


def test_the_installed_script_scores_the_bundled_samples():
    proc = run_script("score", "--data", "app/evaluation/samples/problems.jsonl",
                      "--answers", "app/evaluation/samples/answers.jsonl", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    problems = (ROOT / "app/evaluation/samples/problems.jsonl").read_text().splitlines()
    assert [row["id"] for row in rows] == [json.loads(line)["id"] for line in problems]
    assert "mean reward" in proc.stderr  # the summary table


@pytest.mark.parametrize("name", COMMANDS)
def test_every_commands_help_ends_with_examples_that_parse(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: python -m app {name}")
    examples = help_text.split("\nexamples:\n")[1].strip()
    assert examples == EXAMPLES[name].format(prog="python -m app").strip()
    # each example is a valid command line for its parser (comments, redirections, continuations aside)
    for line in examples.replace("\\\n", " ").splitlines():
        words = shlex.split(line.split(" # ")[0].split(" > ")[0])
        assert words[:4] == ["python", "-m", "app", name]
        command_parser(name).parse_intermixed_args(words[4:])


def test_version_and_help_of_the_entry_point(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"solver-ppo {version('solver-ppo')}"
    assert main(["--help"], prog="solver-ppo") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: solver-ppo ") and all(name in out for name in COMMANDS)
    assert main([]) == 2


def printed_config(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return OmegaConf.to_container(OmegaConf.create(capsys.readouterr().out))


def test_train_print_config_resolves_defaults_yaml_and_overrides_without_reading_files(capsys, tmp_path):
    argv = ["train", "configs/quickstart.yaml", "ppo.lr=5e-5", "--print-config", "trainer.max_steps=20",
            f"data.train={tmp_path / 'not-written-yet.jsonl'}", f"model.path={tmp_path / 'no-model-here'}"]
    printed = printed_config(capsys, argv)
    assert printed["ppo"]["lr"] == 5e-5 and printed["trainer"]["max_steps"] == 20  # overrides
    assert printed["ppo"]["advantage"] == "reinforce_pp" and printed["sampling"]["temperature"] == 0.7  # the YAML
    assert printed["ppo"]["clip_low"] == 0.2 and printed["evaluation"]["limits"]["time_limit_s"] == 5.0  # defaults
    # the printed YAML is a complete config: loaded back, it is the same run
    (tmp_path / "printed.yaml").write_text(OmegaConf.to_yaml(printed))
    assert load_config(tmp_path / "printed.yaml") == load_config("configs/quickstart.yaml", argv[2:3] + argv[4:])


def test_sft_print_config(capsys, tmp_path):
    printed = printed_config(capsys, ["sft", "configs/quickstart_sft.yaml", "sft.max_steps=200", "--print-config",
                                      f"output_dir={tmp_path / 'out'}"])
    assert printed["sft"]["max_steps"] == 200 and printed["sft"]["batch_size"] == 32
    assert printed["output_dir"] == str(tmp_path / "out") and printed["sft"]["weight_decay"] == 0.0
    assert not (tmp_path / "out").exists()  # nothing written: not even the output directory


def test_print_config_refuses_what_the_run_would_refuse(capsys):
    assert main(["train", "configs/quickstart.yaml", "ppo.cliplow=0.1", "--print-config"]) == 2
    assert "did you mean 'ppo.clip_low'?" in capsys.readouterr().err
    assert main(["train", "configs/quickstart.yaml", "ppo.lr=-1", "--print-config"]) == 2
    assert "ppo.lr=-1.0 is outside its allowed range (0, inf)" in capsys.readouterr().err


def test_docs_config_md_is_the_generated_reference():
    written = (ROOT / "docs" / "config.md").read_text()
    try:
        generated = render()
    except UserError as err:
        pytest.fail(f"{err}; then regenerate docs/config.md with: {COMMAND}")
    assert written == generated, f"docs/config.md is stale; regenerate it with: {COMMAND}"


def test_the_reference_lists_every_key_with_its_default_range_and_meaning():
    text = render()
    keys = {k.name: k for k in schema_keys(TrainConfig)}
    assert len(keys) == text.split("## `sft`")[0].count("\n| `")
    assert keys["ppo.lr"].default == "`1e-05`" and keys["ppo.lr"].allowed == "`(0, inf)`"
    assert keys["ppo.advantage"].allowed.startswith("`gae`, `rloo`")
    assert keys["model.path"].default == "*required*" and keys["model.lora.enabled"].default == "`true`"
    assert keys["ppo.kl.coef"].meaning == "initial beta"
    sft_section = text.split("## `sft`")[1]
    assert "| `output_dir` |" in sft_section and "| `sft.lr` |" in sft_section and "| `model.path` |" not in sft_section
    assert "| `run_name` | str | `\"sft\"` |" in sft_section  # the one shared key whose default differs
    assert {k.name for k in schema_keys(SFTConfig)} >= {"output_dir", "sft.max_length", "trainer.cpu_threads"}


@dataclasses.dataclass
class _Commented:
    trailing: int = 1  # the comment after the field
    # the lines above
    # a field, joined
    above: str = "x"
    bare: float = 0.5


def test_field_meanings_come_from_the_comments_beside_them():
    assert field_comments(_Commented) == {"trailing": "the comment after the field", "above": "the lines above a field, joined"}
    with pytest.raises(UserError, match="config key 'bare' has no comment"):
        list(schema_keys(_Commented))
