"""One name per option across commands: every command that writes somewhere takes -o, --out and --output."""

from __future__ import annotations

import pytest
from subprocess_env import mlipbias_env

from mlipbias.cli import build_parser

# (arguments before the output option, the attribute the output lands in)
COMMANDS = {
    "data generate": (["data", "generate"], "output"),
    "evaluate": (["evaluate", "--model", "m.mlip", "--data", "d.db"], "out"),
    "adversarial": (["adversarial", "--approx", "bks", "--accurate", "bks", "--data", "d.db"], "out"),
    "demo": (["demo"], "output_dir"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["-o", "--out", "--output"])
def test_every_command_takes_o_out_and_output(command, flag):
    argv, dest = COMMANDS[command]
    args = build_parser().parse_args([*argv, flag, "somewhere"])
    assert getattr(args, dest) == "somewhere"


def test_inspect_is_listed():
    assert "inspect" in build_parser().format_help()


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`mlipbias ... | head`: the reader closes the pipe before the command writes. The command stops
    as Unix tools do (no traceback, no "Exception ignored" at exit), with the exit code of SIGPIPE."""
    import os
    import subprocess
    import sys

    env = mlipbias_env()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command starts writing
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mlipbias", "train", "--template"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
