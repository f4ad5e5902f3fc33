"""``mlipbias al CONFIG.yaml``: active learning with uncertainty-biased MD (Zaverkin et al. 2024).

``--template`` prints a commented configuration with every default, ``--check`` validates one.
A run writes into ``output.directory`` (``state.json``, ``dataset.db``, ``rejects.db``,
``gen_NNN/`` with each generation's model, walkers and selection, ``summary.{jsonl,csv,json}``,
``al_summary.png``); running the same command again resumes it.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "al",
        help="active learning: train, explore with (biased) MD walkers, select, label, retrain",
        description=(
            "Generations of train -> calibrate -> explore with K walkers (uncertainty-biased or plain MD "
            "in ASE or LAMMPS, or random perturbations) -> batch selection -> oracle labels -> retrain, "
            "until the dataset reaches stop.max_size or the test error stop.force_rmse (Zaverkin et al. "
            "2024). Walkers and labels run as dask.distributed tasks. Every label is written the moment it "
            "exists; rerun the same command to resume after an interruption. Start from "
            "`mlipbias al --template > al.yaml`; docs/active_learning.md explains the keys."
        ),
    )
    p.add_argument("config", nargs="?", help="the YAML configuration")
    p.add_argument("--template", action="store_true", help="print a commented default configuration and exit")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers (default: dask.workers)")
    p.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (default: a local cluster)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_al)


def run_al(args) -> int:
    from mlipbias.al.config import TEMPLATE, load_al_config

    if args.template:
        sys.stdout.write(TEMPLATE)
        return 0
    if not args.config:
        raise ValueError("give a configuration file (or --template to print one)")
    config = load_al_config(args.config)
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        config.dask.workers = args.workers
    if args.scheduler:
        config.dask.scheduler = args.scheduler
    if args.check:
        print(f"{args.config}: configuration is valid")
        return 0
    from mlipbias.al import run_active_learning

    def log(message: str) -> None:
        print(message, flush=True)

    rows = run_active_learning(config, progress=args.progress, log=log)
    last = rows[-1] if rows else {}
    print(
        f"active learning finished after generation {last.get('generation', 0)}: "
        f"{last.get('dataset_size', 0)} structures in {config.dataset_path}; "
        f"summary in {config.directory}/summary.csv and al_summary.png"
    )
    return 0
