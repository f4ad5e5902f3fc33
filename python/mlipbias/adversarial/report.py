"""The report of a diagnosis: results.json, report.md and two PNG figures laid out like the
panels of Cubuk & Schoenholz (2020).

- ``fig1_alignment.png`` (Fig. 1/3/4): a) E_app against E_acc per atom, b) histogram density of cos(theta)
  with the random-vector scale +-1/sqrt(3N), c) mean abs(cos theta) against the energy above the minimum.
- ``fig2_rollout.png`` (Fig. 2): a) percent change of the error after one Newton step against cos(theta),
  b) RMSE per atom along the gradient-descent roll-out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .experiments import write_json

FIGURE_1 = "fig1_alignment.png"
FIGURE_2 = "fig2_rollout.png"
# The roll-out panel draws at most this many single trajectories behind the RMSE.
MAX_TRAJECTORIES = 50


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and the figures into out_dir; returns their paths by name.

    Parts of the diagnosis that were not run (an experiment left out) are marked "not run", so a report can be
    written from the partial results of an interrupted run too.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "markdown": out / "report.md",
        "figure1": out / FIGURE_1,
        "figure2": out / FIGURE_2,
    }
    write_json(results, paths["json"])
    _figure_alignment(results, paths["figure1"])
    _figure_rollout(results, paths["figure2"])
    paths["markdown"].write_text(markdown_report(results))
    return paths


# -- markdown -----------------------------------------------------------------------------------------------


def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_report(results: dict) -> str:
    """The markdown text of report.md (errors in meV/atom)."""
    s = results["summary"]
    models = results["models"]
    lines = [
        "# Adversarial directions (Cubuk & Schoenholz 2020)",
        "",
        f"- approximate model: `{models['approx']}`",
        f"- accurate model: `{models['accurate']}`",
        f"- dataset: `{results['dataset']['path'] or 'given in memory'}`, {s['n_configs']} configurations",
        f"- energy offset: {results['energy_offset']['mode']}",
        f"- complete: {'yes' if results.get('complete') else 'no (partial results of an interrupted run)'}",
    ]
    failures = results.get("failures") or []
    if failures:
        stages = sorted({f["stage"] for f in failures})
        lines += [
            f"- failed model evaluations: {len(failures)} (stages {', '.join(stages)}; "
            "listed in results.json, left out of those experiments)",
        ]
    lines += ["", "## Accuracy and alignment (Fig. 1a, 1b)", ""]
    lines += _table(
        ["quantity", "value"],
        [
            ["RMSE per atom (meV/atom)", _f(s["rmse"])],
            ["MAE per atom (meV/atom)", _f(s["mae"])],
            ["mean error (meV/atom)", _f(s["mean_error"])],
            ["mean abs(cos theta)", _f(s["mean_abs_cos"], 3)],
            ["median abs(cos theta)", _f(s["median_abs_cos"], 3)],
            ["fraction with abs(cos theta) > 0.5", _f(s["fraction_abs_cos_above_0.5"], 3)],
            ["fraction with cos theta > 0", _f(s["fraction_positive_cos"], 3)],
            ["random 3N-vectors: rms cos = 1/sqrt(3N)", _f(s["random_baseline"], 3)],
            ["random 3N-vectors: mean abs(cos)", _f(s["random_mean_abs_cos"], 3)],
        ],
    )
    if s["n_undefined_cos"]:
        lines += ["", f"{s['n_undefined_cos']} configurations have A = 0 or F_app = 0: cos theta undefined."]
    if abs(s["mean_error"]) > 3 * max(s["rmse"] ** 2 - s["mean_error"] ** 2, 0.0) ** 0.5 and (
        results["energy_offset"]["mode"] == "none"
    ):
        lines += [
            "",
            "The mean error dominates its spread: the two models probably have different energy zeros, "
            "which sets the sign of A for every configuration. Consider `energy_offset = per-element`.",
        ]

    lines += ["", "## Error after distortion along A and along a random direction (Table 1)", ""]
    d = results.get("distortion")
    if d:
        sign = "+A" if d["direction_sign"] > 0 else "-A"
        lines += _table(
            ["RMSE per atom (meV/atom)"] + [f"eps = {e:g} A" for e in d["eps"]],
            [
                ["Random direction"] + [_f(v) for v in d["random_rmse"]],
                [f"Adversarial direction ({sign})"] + [_f(v) for v in d["adversarial_rmse"]],
            ],
        )
        lines += ["", f"{d['n_configs']} configurations; eps is the total L2 norm of the distortion over 3N."]
        if d["n_excluded"]:
            lines += [f"{d['n_excluded']} configurations with A = 0 left out."]
        if d.get("failed"):  # absent in results written before failed evaluations were counted apart
            n_failed = len(d["failed"])
            lines += [f"{n_failed} configurations left out: an evaluation failed (listed in results.json)."]
    else:
        lines += ["not run"]

    lines += ["", "## Error change after one Newton step under F_app (Fig. 2a)", ""]
    n = results.get("newton")
    if n:
        rows = []
        for name, label in (("cos_positive", "cos theta > 0"), ("cos_negative", "cos theta < 0")):
            g = n["summary"][name]
            rows.append(
                [label, str(g["n"]), _f(g["fraction_error_increased"], 3), _f(g["median_relative_change"])]
            )
        lines += _table(["configurations", "n", "fraction whose error grew", "median change (%)"], rows)
        displacement = np.nanmax(n["max_displacement"]) if n["max_displacement"] else float("nan")
        lines += [
            "",
            f"Step dt = {n['dt_fs']:g} fs from "
            f"{'rest' if n['velocities'] == 'rest' else 'the dataset velocities'}; "
            f"largest atomic displacement {_f(displacement, 5)} A.",
        ]
    else:
        lines += ["not run"]

    lines += ["", "## Error along gradient descent on E_app (Fig. 2b)", ""]
    g = results.get("gd")
    if g:
        steps = sorted({0, 1, 2, 5, 10, 20, g["n_steps"]} & set(range(g["n_steps"] + 1)))
        lines += _table(
            ["step"] + [str(k) for k in steps],
            [
                ["RMSE per atom (meV/atom)"] + [_f(g["rmse"][k]) for k in steps],
                ["RMSE / RMSE at step 0"]
                + [_f(g["rmse"][k] / g["rmse"][0]) if g["rmse"][0] else "n/a" for k in steps],
            ],
        )
        lines += [
            "",
            f"{len(g['errors'])} configurations, step size {g['step_size']:g} A^2/eV; "
            f"largest displacement after {g['n_steps']} steps "
            f"{_f(max(g['max_displacement'], default=float('nan')), 3)} A.",
        ]
        if g["n_e_app_increased"]:
            lines += [
                f"E_app rose at some step in {g['n_e_app_increased']} roll-outs: the step size may be too "
                "large for stable gradient descent."
            ]
    else:
        lines += ["not run"]

    lines += ["", "## Mean abs(cos theta) against the energy above the local minimum (Fig. 1c)", ""]
    c = results.get("cos_vs_energy")
    if c:
        lines += [
            f"E_min from: {results['energy_above_minimum']['description']}; bins of {c['bin_size']}.",
            "",
        ]
        lines += _table(
            ["Delta E range (meV/atom)", "n", "mean abs(cos theta)", "standard error"],
            [
                [
                    f"{_f(b['delta_e_min'])} .. {_f(b['delta_e_max'])}",
                    str(b["n"]),
                    _f(b["mean"], 3),
                    _f(b["sem"], 3),
                ]
                for b in c["bins"]
            ],
        )
        bad = results["energy_above_minimum"]["n_relaxations_not_converged"]
        if bad:
            lines += ["", f"{bad} relaxations did not converge."]
    else:
        lines += ["not run"]

    lines += ["", f"![Fig. 1]({FIGURE_1})", "", f"![Fig. 2]({FIGURE_2})", ""]
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------------------


def _not_run(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _label(ax, letter: str) -> None:
    ax.text(-0.14, 1.04, letter, transform=ax.transAxes, fontweight="bold", fontsize=12)


def _figure_alignment(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    cfg = results["configs"]
    n_atoms = np.array(cfg["n_atoms"], float)
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_a, ax_b, ax_c = fig.subplots(1, 3)

    e_acc = np.array(cfg["e_acc"], float) / n_atoms
    e_app = np.array(cfg["e_app"], float) / n_atoms
    ax_a.scatter(e_acc, e_app, s=6, alpha=0.6)
    lo, hi = min(e_acc.min(), e_app.min()), max(e_acc.max(), e_app.max())
    ax_a.plot([lo, hi], [lo, hi], "r--", lw=1)
    ax_a.set_xlabel("E_acc (eV/atom)")
    ax_a.set_ylabel("E_app (eV/atom)")
    ax_a.set_title(f"RMSE {_f(results['summary']['rmse'])} meV/atom", fontsize=10)
    _label(ax_a, "a")

    cos = np.array([np.nan if c is None else c for c in cfg["cos_theta"]], float)
    if np.isfinite(cos).any():
        ax_b.hist(cos[np.isfinite(cos)], bins=np.linspace(-1, 1, 41), density=True, alpha=0.8)
    else:
        ax_b.text(0.5, 0.5, "cos theta undefined\n(A = 0 everywhere)", ha="center", transform=ax_b.transAxes)
    baseline = results["summary"]["random_baseline"]
    for x in (-baseline, baseline):
        ax_b.axvline(x, color="k", ls=":", lw=1)
    ax_b.plot([], [], "k:", label=f"random, 1/sqrt(3N) = {baseline:.3f}")
    ax_b.legend(fontsize=8, loc="upper center")
    ax_b.set_xlim(-1, 1)
    ax_b.set_xlabel("cos theta (A, F_app)")
    ax_b.set_ylabel("density")
    _label(ax_b, "b")

    bins = (results.get("cos_vs_energy") or {}).get("bins")
    if bins:
        ax_c.errorbar(
            [b["delta_e_mean"] for b in bins],
            [b["mean"] for b in bins],
            yerr=[0.0 if not np.isfinite(b["sem"] or np.nan) else b["sem"] for b in bins],
            fmt="o-",
            ms=4,
            capsize=2,
        )
        ax_c.axhline(
            results["summary"]["random_mean_abs_cos"], color="k", ls=":", lw=1, label="random vectors"
        )
        ax_c.legend(fontsize=8, loc="lower left")
        ax_c.set_ylim(0, 1.03)
        ax_c.set_xlabel("Delta E above the local minimum (meV/atom)")
        ax_c.set_ylabel("mean abs(cos theta)")
    else:
        _not_run(ax_c, "abs(cos) vs Delta E")
    _label(ax_c, "c")
    fig.savefig(path, dpi=120)


def _figure_rollout(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 3.8), layout="constrained")
    ax_a, ax_b = fig.subplots(1, 2)

    n = results.get("newton")
    if n:
        cos = np.array([np.nan if c is None else c for c in n["cos_theta"]], float)
        change = np.array([np.nan if c is None else c for c in n["relative_change"]], float)
        ax_a.scatter(cos, change, s=6, alpha=0.6)
        ax_a.axhline(0.0, color="r", lw=1)
        finite = change[np.isfinite(change)]
        if finite.size and np.abs(finite).max() > 1000.0:  # errors that grow tenfold would squash the rest
            from matplotlib.ticker import FuncFormatter

            ax_a.set_yscale("symlog", linthresh=100.0)
            ax_a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_a.set_xlim(-1.05, 1.05)
        ax_a.set_xlabel("cos theta (A, F_app)")
        ax_a.set_ylabel(f"error change after {n['dt_fs']:g} fs (%)")
    else:
        _not_run(ax_a, "Newton step")
    _label(ax_a, "a")

    g = results.get("gd")
    if g and g["errors"]:
        steps = np.arange(g["n_steps"] + 1)
        for errors in g["errors"][:MAX_TRAJECTORIES]:
            ax_b.plot(steps, np.abs(np.array(errors, float)), color="0.7", lw=0.5)
        ax_b.plot(steps, g["rmse"], "o-", ms=3, color="C0", label="RMSE")
        ax_b.plot([], [], color="0.7", lw=0.5, label="abs(error) of single roll-outs")
        ax_b.legend(fontsize=8)
        from matplotlib.ticker import MaxNLocator

        ax_b.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_b.set_xlabel("gradient-descent step")
        ax_b.set_ylabel("energy error (meV/atom)")
    else:
        _not_run(ax_b, "gradient descent")
    _label(ax_b, "b")
    fig.savefig(path, dpi=120)
