"""`python cli.py eval`: the rollout protocol without the live view (plain log lines for scripts/CI)."""

from dfm_vla.evaluation.command import add_eval_arguments as add_arguments
from dfm_vla.evaluation.command import main

__all__ = ["add_arguments", "main"]
