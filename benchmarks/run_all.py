"""Run every benchmark of this folder and print one line per benchmark with its headline ratio.

Each benchmark is its own script (a figure of ``benchmarks/RESULTS.md``), run here as a separate
process with the Python that runs this file, so it measures the installed ``mlipbias`` (``make
install``; for an in-place build set ``PYTHONPATH=python``). One thread per code unless
``OMP_NUM_THREADS`` is set. A benchmark that fails is reported with the end of its log and the others
still run; the exit code is 1 when any failed.

    python benchmarks/run_all.py --quick       # small sizes, a few minutes: results/quick/*.json
    python benchmarks/run_all.py               # the sizes of RESULTS.md (tens of minutes): results/*.json
    python benchmarks/run_all.py --quick --only bks descriptors

``make bench`` runs the quick set; ``make bench BENCH_ARGS=`` the full one. Every script writes its
JSON after each case, so an interrupted run keeps what it measured. The logs (``NAME.log``) sit next
to the JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _span(values) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def _neighbors(report: dict) -> str:
    ratios = [
        row["user_ratio_to_vesin"].get("mlipbias") for row in report["rows"] if "user_ratio_to_vesin" in row
    ]
    return f"mlipbias / vesin user CPU time {_span(ratios)} ({len(ratios)} cases)"


def _bks(report: dict) -> str:
    ratios = [case.get("cpp_over_lammps_step") for case in report["cases"]]
    sizes = ", ".join(str(c["n_atoms"]) for c in report["cases"])
    return f"C++ / LAMMPS native time per step {_span(ratios)} (N = {sizes})"


def _descriptors(report: dict) -> str:
    seconds = {(r["atoms"], r["code"]): r["seconds"] for r in report["results"]}
    sizes = sorted({atoms for atoms, _ in seconds})
    speedups = [
        seconds[(n, "dscribe ACSF G")] / seconds[(n, "mlipbias C++ G")]
        for n in sizes
        if (n, "dscribe ACSF G") in seconds and (n, "mlipbias C++ G") in seconds
    ]
    return f"C++ G {_span(speedups)}x faster than dscribe ACSF (atoms {', '.join(map(str, sizes))})"


def _inference(report: dict) -> str:
    cases = report["cases"]
    parts = []
    for name, base in (
        ("posterior bias", "plain"),
        ("ensemble bias", "plain M=4"),
        ("ensemble bias + U_i", "plain M=4"),
    ):
        ratios = [c["cpp"][name] / c["cpp"][base] for c in cases if name in c["cpp"] and base in c["cpp"]]
        if ratios:
            parts.append(f"{name} {statistics.median(ratios):.2f}x")
    return "C++ time / plain model (median): " + ", ".join(parts)


def _lammps_plugin(report: dict) -> str:
    by_case = {}
    for r in report["results"]:
        if r["ranks"] == 1:
            by_case.setdefault(r["case"], []).append(r["us_per_atom_step"])
    parts = [f"{case} {statistics.median(v):.1f}" for case, v in by_case.items()]
    return "us/atom/step on 1 rank: " + ", ".join(parts)


def _training(report: dict) -> str:
    rows = report["rows"]
    return "mlipbias / torch-reference throughput (CPU time): " + ", ".join(
        f"{r['case']} M={r['members']} {r['ratio_cpu']:.0f}x" for r in rows
    )


# name: (full arguments, quick arguments, headline of the JSON report)
BENCHMARKS = {
    "neighbors": ([], ["--max-atoms", "1000", "--min-seconds", "0.2", "--max-repeats", "5"], _neighbors),
    "bks": ([], ["--sizes", "96", "768", "--e2e-max", "96"], _bks),
    "descriptors": ([], ["--max-atoms", "200", "--repeats", "1"], _descriptors),
    "inference": (["--budget", "40"], ["--repeats", "1", "--ref-max", "96", "--budget", "2"], _inference),
    "training": (
        [],
        ["--n-structures", "16", "--steps", "4", "--reference-steps", "1", "--repeats", "1"],
        _training,
    ),
    "lammps_plugin": (
        ["--repeats", "2", "3", "--ranks", "1", "2"],
        ["--repeats", "2", "--ranks", "1", "--cases", "BKS native", "plain (1 model)", "ensemble bias"],
        _lammps_plugin,
    ),
}


def run(name: str, quick: bool, out_dir: Path) -> tuple[bool, float, str]:
    """Run one benchmark; (succeeded, seconds, headline or the end of the log)."""
    full, quick_args, headline = BENCHMARKS[name]
    output = out_dir / f"{name}.json"
    log = out_dir / f"{name}.log"
    command = [
        sys.executable,
        str(HERE / f"{name}.py"),
        *(quick_args if quick else full),
        "--output",
        str(output),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(command) + "\n")
        f.flush()
        code = subprocess.run(
            command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent
        ).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        tail = "\n    ".join(log.read_text().splitlines()[-8:])
        return False, seconds, f"exit code {code}; end of {log}:\n    {tail}"
    try:
        return True, seconds, headline(json.loads(output.read_text()))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        return False, seconds, f"finished, but {output} cannot be summarised: {exc!r}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the JSON results and logs (default: results/quick with --quick, else results)",
    )
    args = parser.parse_args(argv)
    out_dir = args.output or (HERE / "results" / "quick" if args.quick else HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    import mlipbias

    print(f"mlipbias {mlipbias.__version__} from {Path(mlipbias.__file__).parent}; results in {out_dir}")
    failed = []
    for name in args.only or BENCHMARKS:
        print(f"{name} ...", flush=True)
        ok, seconds, text = run(name, args.quick, out_dir)
        print(f"{name:14s} {'ok' if ok else 'FAILED':6s} {seconds:7.1f} s  {text}", flush=True)
        if not ok:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
