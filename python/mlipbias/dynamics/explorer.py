"""The explorer interface: what every walker of the active-learning loop takes and returns.

An explorer is a function ``explore(model_path, start, settings, seed, training=None) ->
Exploration``: it runs from the structure ``start`` under the model in ``model_path`` (a model
file, so it can run in another process or on another machine), records candidate structures with
the model's calibrated uncertainty ``U`` (eV) and per-atom uncertainties ``U_i`` (eV/A), and says
why it stopped. ``training`` (:class:`TrainingData`) names the labelled structures the model was
trained on, for explorers that need them (adversarial sampling); the others ignore it.
:data:`EXPLORERS` maps names to explorers; a new one is one more entry. Every explorer is a pure
function of its arguments and the seed, so a task that is retried on another worker returns the
same candidates.

Stop rule of the MD explorers (seed 002, Results): the walker stops at the first step where the
largest calibrated per-atom uncertainty ``max_i U_i`` reaches ``threshold`` (1.5 eV/A for
alanine dipeptide, 1.0 eV/A for MIL-53(Al) in seed 002) or after ``max_steps`` (20,000).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

ENGINES = ("ase", "lammps")
ENSEMBLES = ("nvt", "npt")
CELL_FLUCTUATIONS = ("iso", "full")

# Why a walker stopped.
STOP_THRESHOLD = "threshold"  # max_i U_i reached the threshold
STOP_MAX_STEPS = "max_steps"
STOP_DONE = "done"  # a non-MD explorer produced all its samples
STOP_FAILED = "failed"  # the dynamics broke down (non-finite values, atoms too close); see detail


@dataclass
class ExplorerSettings:
    """Settings shared by every explorer (units: K, GPa, fs, eV/A, A).

    MD: ``engine`` ase (any system) or lammps (periodic cells, ``pair_style mlip/bias``);
    ``ensemble`` nvt (Langevin, ``friction`` in 1/fs) or npt (Nose-Hoover chains with the MTK
    barostat, characteristic times ``thermostat_time`` and ``barostat_time`` in fs, ``pressure``
    in GPa, ``cell_fluctuations`` iso or full); ``tau``/``tau_stress``/``tau_species``/``rescale``/
    ``rescale_window`` the bias of :class:`mlipbias.calculators.MLIPCalculator`; ``uncertainty``
    the method (None: the model's default). A frame is recorded every ``record_interval`` steps
    and at the stop. ``trajectory_interval`` > 0 (ase engine) also keeps the positions and U_i of
    every that many steps (:attr:`Exploration.trajectory`; seed 002's autocorrelation times and
    coverage against MD time need the trajectory, not only the candidates); 0 keeps none.
    Perturbations (seed 002 Eqs. 32-34): ``n_samples`` structures with position shifts uniform in
    ``[-position_amplitude, position_amplitude]`` and strain components uniform in
    ``[-strain_amplitude, strain_amplitude]`` (periodic cells). ``options``: settings of other
    explorers (adversarial: :mod:`mlipbias.dynamics.adversarial`), which validate them themselves.
    """

    engine: str = "ase"
    ensemble: str = "nvt"
    temperature: float = 300.0
    pressure: float = 0.0
    timestep: float = 0.5
    friction: float = 0.002  # seed 002's code: 0.02 in ASE time units = 0.00196 1/fs
    thermostat_time: float = 100.0
    barostat_time: float = 1000.0
    cell_fluctuations: str = "full"
    tau: float = 0.25  # seed 002's code, alanine dipeptide (docs/active_learning.md)
    tau_stress: float | None = None
    tau_species: dict[str, float] = field(default_factory=dict)
    rescale: bool = True
    rescale_window: int = 100  # seed 002's code (forces_burn_in_period): burn-in and window, steps
    uncertainty: str | None = None
    threshold: float = 1.5
    max_steps: int = 20000
    record_interval: int = 200  # seed 002's code (eval_sampling_step)
    trajectory_interval: int = 0
    min_distance: float = 0.5
    n_samples: int = 8
    position_amplitude: float = 0.05
    strain_amplitude: float = 0.05
    options: dict = field(default_factory=dict)

    def check(self, prefix: str = "explore") -> None:
        """ValueError naming the key (``prefix.key``) of the first bad setting."""

        def fail(key, allowed):
            raise ValueError(f"config key {prefix}.{key} = {getattr(self, key)!r}: {allowed}")

        if self.engine not in ENGINES:
            fail("engine", f"expected one of {', '.join(ENGINES)}")
        if self.ensemble not in ENSEMBLES:
            fail("ensemble", f"expected one of {', '.join(ENSEMBLES)}")
        if self.cell_fluctuations not in CELL_FLUCTUATIONS:
            fail("cell_fluctuations", f"expected one of {', '.join(CELL_FLUCTUATIONS)}")
        for key in ("temperature", "timestep", "friction", "thermostat_time", "barostat_time", "threshold"):
            value = getattr(self, key)
            if not (np.isfinite(value) and value > 0):
                fail(key, "expected a finite number > 0")
        for key in ("tau", "min_distance", "position_amplitude", "strain_amplitude"):
            value = getattr(self, key)
            if not (np.isfinite(value) and value >= 0):
                fail(key, "expected a finite number >= 0")
        if self.tau_stress is not None and not (np.isfinite(self.tau_stress) and self.tau_stress >= 0):
            fail("tau_stress", "expected null or a finite number >= 0")
        if not np.isfinite(self.pressure):
            fail("pressure", "expected a finite number (GPa)")
        for key in ("max_steps", "record_interval", "n_samples", "rescale_window"):
            if getattr(self, key) < 1:
                fail(key, "expected an integer >= 1")
        if self.trajectory_interval < 0:
            fail("trajectory_interval", "expected an integer >= 0 (0: no trajectory)")
        if self.trajectory_interval and self.engine != "ase":
            fail("trajectory_interval", f"the {self.engine} engine keeps no trajectory; use engine ase or 0")
        for symbol, value in self.tau_species.items():
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(
                    f"config key {prefix}.tau_species.{symbol} = {value!r}: expected a number >= 0"
                )

    @property
    def biased(self) -> bool:
        return self.tau > 0 or bool(self.tau_stress) or any(v > 0 for v in self.tau_species.values())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Exploration:
    """What a walker returns: candidates (each with ``info["uncertainty"]`` U in eV,
    ``info["step"]`` and ``arrays["atom_uncertainty"]`` U_i in eV/A), why it stopped
    (:data:`STOP_THRESHOLD`, :data:`STOP_MAX_STEPS`, :data:`STOP_DONE`, :data:`STOP_FAILED`),
    a sentence of detail, the MD steps run and the largest U_i seen. ``trajectory``: with
    ``trajectory_interval``, arrays ``step`` (T,), ``positions`` (T, N, 3) and ``atom_uncertainty``
    (T, N) of the start (step 0) and every ``trajectory_interval``-th step, else None."""

    candidates: list[Atoms]
    stop_reason: str
    steps: int = 0
    detail: str = ""
    max_atom_uncertainty: float = 0.0
    seconds: float = 0.0
    trajectory: dict | None = None

    def summary(self) -> dict:
        return {
            "n_candidates": len(self.candidates),
            "stop_reason": self.stop_reason,
            "steps": self.steps,
            "detail": self.detail,
            "max_atom_uncertainty": self.max_atom_uncertainty,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class TrainingData:
    """The labelled structures a model was trained on: rows of the ase.db ``path`` matching
    ``selection`` (the loop: ``al_generation<G`` for generation G's model)."""

    path: str
    selection: str | None = None


# explore(model_path, start, settings, seed, training=None)
Explorer = Callable[..., Exploration]


def candidate(atoms: Atoms, uncertainty: float, atom_uncertainty, step: int) -> Atoms:
    """A bare copy of ``atoms`` (no calculator, no velocities) carrying U, U_i and the step."""
    out = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info["uncertainty"] = float(uncertainty)
    out.info["step"] = int(step)
    out.arrays["atom_uncertainty"] = np.asarray(atom_uncertainty, dtype=float).copy()
    return out


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream for (seed, key...), e.g. (seed, generation, walker)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))
