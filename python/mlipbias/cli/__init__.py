"""The ``mlipbias`` command line.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed arguments, returns an exit
code). Heavy imports (torch, ase.db) happen inside ``func`` so ``mlipbias --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order of ``mlipbias --help``.
COMMAND_MODULES = [
    "mlipbias.cli.demo",
    "mlipbias.cli.data",
    "mlipbias.cli.train",
    "mlipbias.cli.evaluate",
    "mlipbias.cli.inspect",
    "mlipbias.cli.adversarial",
    "mlipbias.cli.al",
    "mlipbias.cli.info",
]

# Errors that mean "the user's input is wrong": printed as one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlipbias",
        description=(
            "Uncertainty-aware machine-learned interatomic potentials: datasets, BP-NN training with "
            "uncertainties, UQ metrics, adversarial directions, uncertainty-biased MD in ASE and LAMMPS."
        ),
        epilog="Run `mlipbias COMMAND --help` for the options of a command. Units: eV, Angstrom, fs.",
    )
    from mlipbias import __version__

    parser.add_argument("--version", action="version", version=f"mlipbias {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader of the output stopped (`mlipbias inspect --json | head`): end quietly, as Unix tools
        # do; stdout goes to /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("mlipbias: interrupted; work written so far is kept and a rerun resumes it", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"mlipbias {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
