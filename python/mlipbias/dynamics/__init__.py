"""Explorers for active learning: walkers that find where a model is uncertain.

:data:`EXPLORERS` maps a name to an explorer (see :mod:`mlipbias.dynamics.explorer` for the
interface: ``explore(model_path, start, settings, seed) -> Exploration``):

- ``md``: molecular dynamics, biased or not, NVT (Langevin) or NPT (Nose-Hoover chains + MTK), in
  ASE for any system (``engine: ase``) or in LAMMPS with ``pair_style mlip/bias`` for periodic
  cells (``engine: lammps``), stopping at a calibrated per-atom uncertainty threshold;
- ``perturb``: random perturbations of positions and cell (seed 002 Eqs. 32-34).

A new explorer (e.g. seed 003's adversarial sampling) is a function with the same signature
added to :data:`EXPLORERS`.
"""

from __future__ import annotations

from mlipbias.dynamics.explorer import Exploration, Explorer, ExplorerSettings


def explore_md(model_path: str, start, settings: ExplorerSettings, seed: int) -> Exploration:
    """MD in the engine of ``settings`` (ase or lammps)."""
    settings.check("settings")
    if settings.engine == "lammps":
        from mlipbias.dynamics.lammps_md import explore_lammps_md

        return explore_lammps_md(model_path, start, settings, seed)
    from mlipbias.dynamics.ase_md import explore_ase_md

    return explore_ase_md(model_path, start, settings, seed)


def explore_perturbations(model_path: str, start, settings: ExplorerSettings, seed: int) -> Exploration:
    """Random perturbations (seed 002 Eqs. 32-34)."""
    settings.check("settings")
    from mlipbias.dynamics.perturb import explore_perturbations as run

    return run(model_path, start, settings, seed)


EXPLORERS: dict[str, Explorer] = {"md": explore_md, "perturb": explore_perturbations}


def get_explorer(name: str) -> Explorer:
    """The explorer called ``name``, or a ValueError listing the known ones."""
    if name not in EXPLORERS:
        raise ValueError(f"unknown explorer {name!r}; known: {', '.join(EXPLORERS)}")
    return EXPLORERS[name]


__all__ = ["EXPLORERS", "Exploration", "Explorer", "ExplorerSettings", "explore_md", "get_explorer"]
