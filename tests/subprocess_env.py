"""The environment of the tests' subprocesses: they import the mlipbias that the test run imported
(the installed package under `make test`, the source tree with its in-place build under
`PYTHONPATH=python`), never a source tree without its compiled extension."""

import os
from pathlib import Path

import mlipbias

MLIPBIAS_PARENT = str(Path(mlipbias.__file__).resolve().parents[1])


def mlipbias_env(**extra: str) -> dict:
    """``os.environ`` with the folder holding this run's ``mlipbias`` first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (MLIPBIAS_PARENT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
