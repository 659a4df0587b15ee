"""`python -m app …` in a checkout: hands over to the installed name, so every module is loaded
once, as `solver_ppo.…` (the same entry point as the `solver-ppo` command)."""
import sys

from solver_ppo.cli import main

sys.exit(main())
