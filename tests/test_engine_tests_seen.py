"""The engine tests are seen from the main suite: without TRL and OpenRLHF (no .venv-engines) the
summary shows them skipped, with the command that builds their venv and runs them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(bool(importlib.util.find_spec("trl") and importlib.util.find_spec("openrlhf")),
                    reason="TRL and OpenRLHF are installed here: the engine tests run instead of skipping")
def test_engine_tests_without_their_venv_are_a_skip_naming_the_command():
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/engines"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out.stdout[-2000:]  # the whole module skipped
    files = sorted(p.name for p in (ROOT / "tests" / "engines").glob("test_*.py"))
    assert f"collected 0 items / {len(files)} skipped" in out.stdout
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]  # pytest's -ra summary
    assert sorted(line.split("tests/engines/")[1].split(":")[0] for line in skips) == files, out.stdout[-2000:]
    assert all("`bash tools/ci_engines.sh` builds .venv-engines" in line for line in skips)
