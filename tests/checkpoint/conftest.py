"""Fixtures of the checkpoint tests."""
from pathlib import Path

import pytest

from tests.checkpoint.harness import run_uninterrupted


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(layout)`: the run directory of a finished, never interrupted run with the harness's
    `RUN` settings in that layout. Made once per session and shared; read it, never write."""
    made: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in made:
            made[layout] = run_uninterrupted(layout, tmp_path_factory.mktemp("uninterrupted") / layout)
        return made[layout]

    return get
