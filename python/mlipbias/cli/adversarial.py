"""``mlipbias adversarial``: the diagnosis of Cubuk & Schoenholz (2020) of an approximate model
against an accurate one.

A model is named by a SPEC:

- ``emt``, ``lj``: ASE's EMT and LennardJones calculators;
- ``PATH.mlip``: an mlipbias model file (``mlipbias.calculators.MLIPCalculator``);
- ``module:attribute``: a calculator object, or a class or factory called to make one (``mypkg.calcs:make``);
- any other name (``bks``, ``gfn1-xtb``, ...) goes to ``mlipbias.oracles.make_oracle``.

Keyword arguments follow in parentheses with Python literal values: ``lj(sigma=3.4, epsilon=0.0104, rc=8.5)``,
``mymod:Model(path="m.pt")``.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import fields

from mlipbias.adversarial.settings import EXPERIMENTS, AdversarialSettings

_SPEC = re.compile(r"^\s*(?P<name>[^()\s]+)\s*(?:\((?P<args>.*)\))?\s*$", re.DOTALL)


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split ``NAME(key=value, ...)`` into NAME and a dict of literal keyword values."""
    match = _SPEC.match(spec)
    if not match:
        raise ValueError(f"calculator spec {spec!r} is not NAME or NAME(key=value, ...)")
    name, args = match["name"], match["args"]
    kwargs = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
        except SyntaxError:
            raise ValueError(f"calculator spec {spec!r}: cannot parse the arguments {args!r}") from None
        if call.args:
            raise ValueError(f"calculator spec {spec!r}: arguments must be given as key=value")
        for keyword in call.keywords:
            try:
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                raise ValueError(
                    f"calculator spec {spec!r}: the value of {keyword.arg} must be a literal "
                    "(number, string, list, dict)"
                ) from None
    return name, kwargs


def _calculator_from_spec(spec: str):
    """The ASE calculator a SPEC names (see the module docstring)."""
    import importlib

    name, kwargs = parse_spec(spec)
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**kwargs)
    if name == "lj":
        from ase.calculators.lj import LennardJones

        return LennardJones(**kwargs)
    if name.endswith(".mlip"):
        from mlipbias.calculators import MLIPCalculator

        return MLIPCalculator(name, **kwargs)
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"calculator spec {spec!r}: cannot import {attribute!r} from {module_name!r}: {exc}"
            ) from exc
        if kwargs and not callable(target):
            raise ValueError(f"calculator spec {spec!r}: {name} is not callable, so it takes no arguments")
        calc = target(**kwargs) if callable(target) else target
        if not hasattr(calc, "get_potential_energy"):
            raise ValueError(f"calculator spec {spec!r} gave {type(calc).__name__}, not an ASE calculator")
        return calc
    try:
        from mlipbias.oracles import make_oracle
    except ImportError:
        raise ValueError(
            f"unknown calculator {name!r}: this installation knows emt, lj, PATH.mlip and module:attribute "
            "(mlipbias.oracles, which provides bks and gfn1-xtb, is not available)"
        ) from None
    return make_oracle(name, **kwargs)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" only where there is a value to show."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def register(sub) -> None:
    defaults = AdversarialSettings()
    p = sub.add_parser(
        "adversarial",
        help="adversarial directions of an approximate model against an accurate one (Cubuk & Schoenholz)",
        description=(
            "Compute, for every configuration of DATASET, the adversarial direction "
            "A = grad (E_acc - E_app)^2 and its cosine with the approximate model's force; the error "
            "after distorting along A or at random (Table 1), after one Newton step (Fig. 2a) and along "
            "gradient descent (Fig. 2b); and mean |cos| against the energy above the local minimum "
            "(Fig. 1c). Writes results.json, report.md and PNG figures to --out. Every model evaluation "
            "is appended to --out/evaluations.jsonl as it is computed: rerunning the same command "
            "resumes an interrupted run."
        ),
        epilog=(
            "SPEC: emt | lj | PATH.mlip | module:attribute | an oracle name (bks, gfn1-xtb, ...), optionally "
            'with keyword arguments: "lj(sigma=3.4, epsilon=0.0104)". Units: eV, Angstrom, fs; errors in '
            "meV/atom. Details: docs/adversarial.md."
        ),
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("--approx", required=True, metavar="SPEC", help="the approximate model")
    p.add_argument("--accurate", required=True, metavar="SPEC", help="the accurate reference model")
    p.add_argument(
        "--data", required=True, metavar="DATASET", help="an ase.db file (*.db) or any file ase.io reads"
    )
    p.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        required=True,
        metavar="DIR",
        help="output directory (created; reused to resume)",
    )
    p.add_argument("--eps", type=float, nargs="+", default=list(defaults.eps), help="distortion norms (A)")
    p.add_argument(
        "--direction-sign",
        type=int,
        choices=(1, -1),
        default=defaults.direction_sign,
        help="distort along +A (error grows) or -A",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random distortion directions")
    p.add_argument("--newton-dt", type=float, default=defaults.newton_dt, help="Newton step (fs)")
    p.add_argument(
        "--newton-velocities",
        choices=("rest", "dataset"),
        default=defaults.newton_velocities,
        help="start the Newton step from rest or from the dataset's velocities",
    )
    p.add_argument("--gd-steps", type=int, default=defaults.gd_steps, help="gradient-descent steps")
    p.add_argument(
        "--gd-step-size",
        type=float,
        default=defaults.gd_step_size,
        help="gradient-descent step gamma in x <- x + gamma F_app (A^2/eV)",
    )
    p.add_argument("--bin-size", type=int, default=defaults.bin_size, help="samples per |cos| vs Delta E bin")
    p.add_argument(
        "--energy-offset",
        choices=("none", "per-element"),
        default=defaults.energy_offset,
        help="fit per-element energies aligning E_app to E_acc first (models with different energy zeros)",
    )
    p.add_argument(
        "--energy-reference",
        choices=("auto", "key", "relax", "lowest"),
        default=defaults.energy_reference,
        help="where the local-minimum energy comes from: the --e-min-key of each configuration, a relaxation "
        "with the accurate model, the lowest energy of its composition, or auto (key if present, else relax)",
    )
    p.add_argument("--e-min-key", default=defaults.e_min_key, help="dataset key of the minimum's energy (eV)")
    p.add_argument(
        "--energy-key",
        default="energy",
        help="name of the reference energy (eV) in atoms.info of a --data file that is not an ase.db, e.g. "
        "REF_energy (default: energy, also ASE's stored results)",
    )
    p.add_argument(
        "--forces-key",
        default="forces",
        help="name of the reference forces (eV/A) in atoms.arrays of such a file (default: forces)",
    )
    p.add_argument(
        "--minimum-key",
        default=defaults.minimum_key,
        help="dataset key naming the minimum a configuration was displaced from (relax one per value)",
    )
    p.add_argument("--relax-fmax", type=float, default=defaults.relax_fmax, help="relaxation fmax (eV/A)")
    p.add_argument("--relax-steps", type=int, default=defaults.relax_steps, help="relaxation step limit")
    p.add_argument(
        "--experiments",
        nargs="+",
        choices=EXPERIMENTS,
        default=list(defaults.experiments),
        help="experiments to run (errors and cos theta are always computed)",
    )
    p.add_argument("--max-configs", type=int, help="use the first N configurations of DATASET (default: all)")
    p.add_argument(
        "--distortion-configs",
        type=int,
        help="first N configurations for the distortion table (default: all)",
    )
    p.add_argument(
        "--newton-configs", type=int, help="first N configurations for the Newton step (default: all)"
    )
    p.add_argument(
        "--gd-configs", type=int, help="first N configurations for the gradient descent (default: all)"
    )
    p.add_argument(
        "--use-dataset-labels",
        action="store_true",
        help="take E_acc, F_acc of the undistorted configurations from the dataset (checked on the first)",
    )
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="when a model evaluation fails (SCF not converged, NaN), leave that configuration out of that "
        "experiment and list it in results.json instead of stopping",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_adversarial)


def run_adversarial(args) -> int:
    from pathlib import Path

    from mlipbias.adversarial.evaluator import CalculationError
    from mlipbias.adversarial.experiments import run_diagnosis
    from mlipbias.adversarial.report import write_report
    from mlipbias.datasets import LabelKeys

    names = {f.name for f in fields(AdversarialSettings)}
    settings = AdversarialSettings(**{key: value for key, value in vars(args).items() if key in names})
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"dataset {args.data} does not exist")
    approx = _calculator_from_spec(args.approx)
    accurate = _calculator_from_spec(args.accurate)
    labels = {"approx": args.approx.strip(), "accurate": args.accurate.strip()}
    try:
        keys = LabelKeys(energy=args.energy_key, forces=args.forces_key)
        results = run_diagnosis(
            approx,
            accurate,
            args.data,
            args.out,
            settings,
            labels=labels,
            progress=not args.no_progress,
            label_keys=keys,
        )
    except CalculationError as exc:
        if args.debug:
            raise
        print(
            f"mlipbias adversarial: error: {exc}\nEvery evaluation so far is kept in "
            f"{Path(args.out) / 'evaluations.jsonl'}: rerun to resume, or add --skip-failed to leave "
            "configurations whose evaluation fails out of that experiment.",
            file=sys.stderr,
        )
        return 1
    paths = write_report(results, args.out)
    print_summary(results)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


def print_summary(results: dict) -> None:
    """The headline numbers of a diagnosis: RMSE, alignment, Table 1, gradient descent."""
    s = results["summary"]
    print(f"{s['n_configs']} configurations: RMSE {s['rmse']:.2f} meV/atom")
    print(
        f"mean |cos theta| {s['mean_abs_cos']:.3f} (random 3N-vectors: {s['random_mean_abs_cos']:.3f}), "
        f"|cos| > 0.5 for {100 * s['fraction_abs_cos_above_0.5']:.0f}% of configurations"
    )
    d = results.get("distortion")
    if d:
        print("RMSE (meV/atom) after distortion by eps (A):")
        print("  eps          " + "".join(f"{e:>9g}" for e in d["eps"]))
        print("  random       " + "".join(f"{v:9.2f}" for v in d["random_rmse"]))
        print("  adversarial  " + "".join(f"{v:9.2f}" for v in d["adversarial_rmse"]))
    failures = results.get("failures") or []
    if failures:
        stages = sorted({f["stage"] for f in failures})
        print(f"{len(failures)} evaluations failed and were left out ({', '.join(stages)}); see results.json")
    g = results.get("gd")
    if g and g["rmse"]:
        print(
            f"gradient descent: RMSE {g['rmse'][0]:.2f} -> {g['rmse'][-1]:.2f} meV/atom "
            f"after {g['n_steps']} steps"
        )
