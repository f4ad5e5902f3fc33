"""MD walkers in ASE for any system: Langevin NVT or Nose-Hoover-chain MTK NPT, biased or not.

The forces come from :class:`mlipbias.calculators.MLIPCalculator` (C++ inference for the
ensemble, posterior and distance methods), with the bias of seed 002 Eqs. 5-8 when ``tau`` or
``tau_stress`` is set. After every step the calibrated per-atom uncertainties of the new
positions decide whether the walker stops (:mod:`mlipbias.dynamics.explorer`).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units

from mlipbias.dynamics.explorer import (
    STOP_FAILED,
    STOP_MAX_STEPS,
    STOP_THRESHOLD,
    Exploration,
    ExplorerSettings,
    candidate,
    rng_for,
)


def make_integrator(atoms: Atoms, settings: ExplorerSettings, rng: np.random.Generator):
    """The ASE integrator of ``settings`` (timestep in fs, friction in 1/fs, times in fs, GPa)."""
    s = settings
    dt = s.timestep * units.fs
    if s.ensemble == "nvt":
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        # ASE 3.28+: fixcm=True does not sample NVT exactly; FixCom removes the drift instead.
        atoms.set_constraint(FixCom())
        return Langevin(
            atoms, dt, temperature_K=s.temperature, friction=s.friction / units.fs, fixcm=False, rng=rng
        )
    if not atoms.pbc.all():
        raise ValueError("explore.ensemble = npt needs a cell periodic in all three directions")
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT

    integrator = IsotropicMTKNPT if s.cell_fluctuations == "iso" else MTKNPT
    return integrator(
        atoms,
        dt,
        temperature_K=s.temperature,
        pressure_au=s.pressure * units.GPa,
        tdamp=s.thermostat_time * units.fs,
        pdamp=s.barostat_time * units.fs,
    )


def explore_ase_md(model_path: str, start: Atoms, settings: ExplorerSettings, seed: int) -> Exploration:
    """Run MD from ``start`` until max_i U_i >= threshold or ``max_steps``; candidates every
    ``record_interval`` steps and at the stop (see :class:`ExplorerSettings`)."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from mlipbias.calculators import MLIPCalculator
    from mlipbias.structures import check_structure

    s = settings
    rng = rng_for(seed)
    atoms = Atoms(start.get_chemical_symbols(), positions=start.positions, cell=start.cell, pbc=start.pbc)
    atoms.calc = MLIPCalculator(
        model_path,
        uncertainty=s.uncertainty,
        tau=s.tau,
        tau_stress=s.tau_stress,
        rescale=s.rescale and s.biased,
        rescale_window=s.rescale_window,
        tau_species=s.tau_species or None,
        atom_uncertainty=True,
    )
    if atoms.calc.uncertainty is None:
        raise ValueError(f"{model_path}: the model has no uncertainty method, so no walker can stop on it")
    thermalize_momenta(atoms, temperature_K=s.temperature, rng=rng)
    Stationary(atoms)
    dynamics = make_integrator(atoms, s, rng)
    candidates: list[Atoms] = []
    peak = 0.0

    def uncertainties():
        results = atoms.calc.results
        return float(results["uncertainty"]), np.asarray(results["atom_uncertainty"])

    atoms.get_forces()
    frames: dict[str, list] = {"step": [], "positions": [], "atom_uncertainty": []}
    step, reason, detail = 0, STOP_MAX_STEPS, ""
    try:
        for _ in dynamics.irun(steps=s.max_steps):
            step = dynamics.nsteps
            U, U_i = uncertainties()
            if s.trajectory_interval and step % s.trajectory_interval == 0:
                frames["step"].append(step)
                frames["positions"].append(atoms.positions.astype(np.float32))
                frames["atom_uncertainty"].append(U_i.astype(np.float32))
            if step == 0:
                continue
            if not (np.isfinite(U) and np.isfinite(U_i).all() and np.isfinite(atoms.positions).all()):
                reason, detail = STOP_FAILED, f"non-finite positions or uncertainty at step {step}"
                break
            peak = max(peak, float(U_i.max()))
            if U_i.max() >= s.threshold:
                candidates.append(candidate(atoms, U, U_i, step))
                reason = STOP_THRESHOLD
                detail = f"max U_i = {U_i.max():.3g} eV/A >= {s.threshold:g} on atom {int(U_i.argmax())}"
                break
            if step % s.record_interval == 0 or step == s.max_steps:
                check_structure(atoms, s.min_distance, f"walker at step {step}")
                candidates.append(candidate(atoms, U, U_i, step))
    except (ValueError, FloatingPointError) as error:
        # A broken-down trajectory (atoms too close, no neighbours) ends the walker, not the loop.
        reason, detail = STOP_FAILED, f"step {step}: {error}"
    trajectory = {k: np.asarray(v) for k, v in frames.items()} if s.trajectory_interval else None
    return Exploration(candidates, reason, step, detail, peak, trajectory=trajectory)
