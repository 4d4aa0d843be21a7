"""Staged context extension: a stages file resolved into ordinary runs (stages.py), run in order with
restore-then-resume, evaluation and gates (runner.py). CLI: tools/extend_context.py."""
from .runner import GATED, run_plan
from .stages import Plan, Stage, load_plan

__all__ = ["GATED", "Plan", "Stage", "load_plan", "run_plan"]
