"""``mlipbias data``: generate labelled datasets (ase.db) and summarise them.

Every option can be given as a flag or as a key of a YAML config (``--config``); flags win
over the config, the config over the defaults. ``mlipbias data template`` prints a commented
config to start from. Rerunning the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

# Options of the run that are not GenerationSettings: (key, default, help).
RUN_OPTIONS = [
    ("output", None, "the ase.db SQLite file to write (created if missing, resumed if present)"),
    (
        "structure",
        "sio2-amorphous-96",
        "starting structure: a file (extxyz, cif, POSCAR, ...), molecule:NAME (ASE G2), or a shipped name "
        "(sio2-amorphous-96, alpha-quartz, si-diamond-64)",
    ),
    ("repeat", None, "repeat the structure NX NY NZ times"),
    ("oracle", "bks", "reference calculator: bks, gfn1-xtb, gfn2-xtb, emt, lammps, pyscf, openmm"),
    (
        "oracle_options",
        {},
        "options of the oracle, e.g. accuracy: 0.1 for xTB (flag: --oracle-option KEY=VALUE)",
    ),
    (
        "md_driver",
        None,
        "mode md: a cheaper calculator (same names as oracle) that integrates the MD; the oracle then only "
        "labels the snapshots. Default: the oracle drives the MD",
    ),
    (
        "md_driver_options",
        {},
        "options of the MD driver, e.g. {pair_style: sw, pair_coeff: '* * Si.sw Si', elements: [Si]} for "
        "lammps (flag: --md-driver-option KEY=VALUE)",
    ),
]


def register(sub) -> None:
    from mlipbias.datasets import GenerationSettings

    data = sub.add_parser("data", help="generate labelled datasets and summarise them")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    gen = data_sub.add_parser(
        "generate",
        help="label structures with an oracle into an ase.db (resumable)",
        description=(
            "Make a dataset as in Cubuk & Schoenholz (2020): `displacements` relaxes the structure with "
            "the oracle, then "
            "displaces all atoms along a Gaussian direction by a total L2 norm uniform in "
            "[min_norm, max_norm] A; `md` samples Langevin NVT snapshots at each temperature, with the "
            "oracle or a cheaper --md-driver integrating the trajectories. Each structure is labelled by "
            "the oracle (energy, forces, stress) and written as one row as soon as it is done; rerunning "
            "the same command resumes without recomputing. Units: A, eV, K, fs."
        ),
        argument_default=argparse.SUPPRESS,
    )
    gen.add_argument(
        "-c",
        "--config",
        help="YAML file with any of the options below (keys as the long flags, "
        "with _ for -); flags override it. See `mlipbias data template`",
    )
    gen.add_argument("-o", "--out", "--output", dest="output", help=_help(RUN_OPTIONS[0]))
    gen.add_argument("--structure", help=_help(RUN_OPTIONS[1]))
    gen.add_argument("--repeat", nargs=3, type=int, metavar=("NX", "NY", "NZ"), help=_help(RUN_OPTIONS[2]))
    gen.add_argument("--oracle", help=_help(RUN_OPTIONS[3]))
    gen.add_argument(
        "--oracle-option",
        dest="oracle_options",
        action="append",
        metavar="KEY=VALUE",
        help="an oracle option (repeatable), VALUE read as YAML, e.g. --oracle-option accuracy=0.1",
    )
    gen.add_argument("--md-driver", help=_help(RUN_OPTIONS[5]))
    gen.add_argument(
        "--md-driver-option",
        dest="md_driver_options",
        action="append",
        metavar="KEY=VALUE",
        help="an MD driver option (repeatable), VALUE read as YAML, e.g. --md-driver-option pair_style=sw",
    )
    for f in dataclasses.fields(GenerationSettings):
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} (default: {_show(f.default)}"
        text += "; only for mode " + f.metadata["modes"][0] + ")" if len(f.metadata["modes"]) == 1 else ")"
        if f.name == "mode":
            gen.add_argument(flag, choices=["displacements", "md"], help=text)
        elif f.type in ("bool", bool):
            gen.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif f.name == "temperatures":
            gen.add_argument(flag, nargs="+", type=float, metavar="K", help=text)
        else:
            gen.add_argument(flag, type=int if f.type in ("int", int) else float, help=text)
    gen.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    gen.set_defaults(func=run_generate)

    summary = data_sub.add_parser("summary", help="print counts, composition, energy and force statistics")
    summary.add_argument("database", help="an ase.db file")
    summary.add_argument("--selection", default=None, help="ase.db query, e.g. 'mode=md,temperature>500'")
    summary.add_argument("--json", action="store_true", help="print as JSON")
    summary.set_defaults(func=run_summary)

    template = data_sub.add_parser("template", help="print a commented YAML config for `data generate`")
    template.set_defaults(func=run_template)


def _help(option) -> str:
    key, default, text = option
    return text if default in (None, {}) else f"{text} (default: {_show(default)})"


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def resolve_options(args: argparse.Namespace) -> dict:
    """Defaults, then the YAML config, then the flags given: one dict of run options and settings."""
    from mlipbias.datasets import GenerationSettings

    options = {key: default for key, default, _ in RUN_OPTIONS}
    options.update(GenerationSettings().to_dict())
    if getattr(args, "config", None):
        options.update(_read_config(args.config, set(options)))
    given = {
        k: v for k, v in vars(args).items() if k not in ("config", "func", "command", "data_command", "debug")
    }
    for key in ("oracle_options", "md_driver_options"):
        if key in given:
            flag = "--" + key.replace("_", "-")[:-1]
            given[key] = {**options[key], **_parse_pairs(given[key], flag)}
    given.pop("progress", None)
    options.update(given)
    if not options["output"]:
        raise ValueError("no output database: give -o/--output or `output:` in the config")
    for key in ("oracle_options", "md_driver_options"):
        if not isinstance(options[key], dict):
            raise ValueError(f"{key} must be a mapping, got {options[key]!r}")
    return options


def _read_config(path: str, known: set[str]) -> dict:
    import yaml

    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"config {path} is not a text (UTF-8) YAML file") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path} is not valid YAML: {exc}") from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"config {path} must be a mapping of option: value, got {type(config).__name__}")
    config = {str(k).replace("-", "_"): v for k, v in config.items()}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"config {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return config


def _parse_pairs(pairs: list[str], flag: str = "--oracle-option") -> dict:
    import yaml

    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed[key.strip()] = value  # e.g. a LAMMPS pair_coeff "* * Si.sw Si" is not YAML
    return parsed


def run_generate(args) -> int:
    from mlipbias.datasets import GenerationSettings, format_summary, generate, summarize
    from mlipbias.oracles import OracleError
    from mlipbias.structures import load_structure

    options = resolve_options(args)
    run_keys = {key for key, _, _ in RUN_OPTIONS}
    settings = GenerationSettings.from_dict({k: v for k, v in options.items() if k not in run_keys})
    structure = load_structure(str(options["structure"]), options["repeat"])
    name = str(options["structure"])
    if options["repeat"]:
        name += "x" + "x".join(str(r) for r in options["repeat"])
    try:
        result = generate(
            options["output"],
            structure,
            options["oracle"],
            settings,
            oracle_options=options["oracle_options"],
            md_driver=options["md_driver"],
            md_driver_options=options["md_driver_options"] or None,
            structure_name=name,
            progress=getattr(args, "progress", True),
        )
    except OracleError as exc:
        print(f"mlipbias data generate: oracle error: {exc}", file=sys.stderr)
        print("rows labelled so far are kept; rerun the same command to resume", file=sys.stderr)
        return 1
    by_others = result.n_requested - result.n_existing - result.n_written
    print(
        f"{result.path}: {result.n_written} new {result.mode} structures labelled, "
        f"{result.n_existing} already present, "
        + (f"{by_others} labelled meanwhile by another process, " if by_others else "")
        + f"{result.n_requested} requested"
    )
    print(format_summary(summarize(result.path)))
    return 0


def run_summary(args) -> int:
    from mlipbias.datasets import format_summary, summarize

    summary = summarize(args.database, args.selection)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def run_template(args) -> int:
    print(template_text())
    return 0


def template_text() -> str:
    """A commented YAML config with every option at its default."""
    from mlipbias.datasets import GenerationSettings

    lines = [
        "# mlipbias data generate --config THIS_FILE",
        "# Units: A, eV, K, fs. Flags override these values.",
        "",
    ]
    for key, default, text in RUN_OPTIONS:
        lines.append(f"# {text}")
        value = "dataset.db" if key == "output" else default
        lines.append(f"{key}: {_yaml_value(value)}")
    lines.append("")
    for f in dataclasses.fields(GenerationSettings):
        modes = f" [{f.metadata['modes'][0]} only]" if len(f.metadata["modes"]) == 1 else ""
        lines.append(f"# {f.metadata['help']}{modes}")
        lines.append(f"{f.name}: {_yaml_value(f.default)}")
    return "\n".join(lines)


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)
