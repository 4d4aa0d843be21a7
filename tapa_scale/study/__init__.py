"""Studies: grids of pretrain-then-extend runs over encodings, model sizes, knobs and seeds, with their
evaluations recorded in one results JSON and the tables and figures made from it (docs/study.md)."""
from .execute import run_study
from .figures import write_report
from .grid import load_study

__all__ = ["load_study", "run_study", "write_report"]
