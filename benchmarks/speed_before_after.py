"""pair_style mlip/bias of this tree against an earlier build of the plugin (before the fused BP-NN pass),
with LAMMPS ML-IAP NN as the common peer, in one run: one rank, one thread, 2,592 SiO2 atoms (the cases
of ``speed.py``), least CPU time per atom-step over interleaved rounds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_before_after.py --before DIR

DIR holds the earlier ``mlipbiasplugin.so`` (e.g. a copy of main's ``python/mlipbias/lammps``); it is
the only plugin LAMMPS sees in the "before" runs.

``--preset fast``: the fast preset (``examples/sio2_fast``, gradient features fitted on the 96-atom cell as
in ``peers.py``) plain and with the gradient-feature bias, before and after, beside LAMMPS' floor
(``pair_style zero`` on the same cell), SNAP Ta06A and ML-IAP NN; each run's steps sized for ``--seconds``
of loop from the previous round's time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine
from speed import FLOOR, OURS, PEERS, PER_ATOM_STEP

import lammps_plugin

RESULTS = lammps_plugin.ROOT / "benchmarks" / "results" / "speed_before_after.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="folder of the earlier mlipbiasplugin.so")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the least, with --seconds)")
    parser.add_argument("--preset", choices=("shipped", "fast"), default="shipped")
    parser.add_argument("--seconds", type=float, default=0.0, help="loop time to aim for per run")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not (Path(args.before) / "mlipbiasplugin.so").is_file():
        raise SystemExit(f"{args.before} has no mlipbiasplugin.so")

    own = lammps_plugin.environment

    def before(base=None):
        env = own(base)
        env["LAMMPS_PLUGIN_PATH"] = str(Path(args.before).resolve())
        return env

    root = lammps_plugin.ROOT
    models = {
        "gradient": str(root / "examples/lammps/sio2_gradient.mlip"),
        "ensemble": str(root / "examples/lammps/sio2_ensemble.mlip"),
    }
    cases = [("ML-IAP NN Cu", PEERS[0], own)]
    ours = (OURS[0], OURS[3], OURS[1])  # plain, ensemble bias, gradient-feature bias
    if args.preset == "fast":
        from peers import OURS as PEER_CASES

        cases += [(FLOOR.name, FLOOR, own), (PEERS[1].name, PEERS[1], own)]
        ours = [c for c in PEER_CASES if c.model == "fast" and "ensemble" not in c.name]
    for case in ours:
        cases += [(f"after: {case.name}", case, own), (f"before: {case.name}", case, before)]
    best: dict = {}
    with tempfile.TemporaryDirectory(prefix="mlipbias_before_after_") as tmp:
        folder = Path(tmp)
        if args.preset == "fast":
            from peers import fast_posterior

            models["fast"] = fast_posterior(folder)
        data, n_atoms = lammps_plugin.sio2_data(folder, 3, charges=False)
        for _ in range(args.rounds):
            for name, case, environment in cases:
                lammps_plugin.environment = environment  # what measure() runs lmp with
                guess = 20e-6 if case.model == "fast" else PER_ATOM_STEP[case.kind]
                per_step = 1e-6 * best[name]["us_per_atom_step"] if name in best else guess
                steps = max(args.steps, math.ceil(args.seconds / (per_step * n_atoms)))
                r = lammps_plugin.measure(case, 1, data, n_atoms, models, steps, folder)
                if name not in best or r["cpu_us_per_atom_step"] < best[name]["cpu_us_per_atom_step"]:
                    best[name] = r
                print(
                    f"{name:48s} {r['cpu_us_per_atom_step']:8.2f} CPU us/atom-step, {steps} steps, load "
                    f"{os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    lammps_plugin.environment = own
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "command": " ".join(sys.argv)}
    meta["load_after"] = os.getloadavg()
    Path(args.output).write_text(json.dumps({"meta": meta, "results": best}, indent=1))
    mliap = best["ML-IAP NN Cu"]["cpu_us_per_atom_step"]
    print("| case | CPU us / atom-step | / ML-IAP NN |\n|---|---:|---:|")
    for name, r in best.items():
        print(f"| {name} | {r['cpu_us_per_atom_step']:.2f} | {r['cpu_us_per_atom_step'] / mliap:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
