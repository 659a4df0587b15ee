"""Engine end-to-end tests: they run inside .venv-engines (tools/setup_engine_venv.sh, called by
tools/ci_engines.sh), where TRL and OpenRLHF are installed; the main suite's venv has neither."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("trl") and importlib.util.find_spec("openrlhf") else ["test_engines.py"]
