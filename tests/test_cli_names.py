"""One name per option across commands: every command that writes somewhere takes -o, --out and --output."""

from __future__ import annotations

import pytest

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
