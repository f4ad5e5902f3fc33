"""The ``mlipbias al`` configuration: schema, defaults (Zaverkin et al.'s settings), validation, template.

One YAML file describes a run, in sections ``start``, ``oracle``, ``initial``, ``train``,
``explore``, ``select``, ``stop``, ``test``, ``dask``, ``output`` and a top-level ``seed``.
:func:`load_al_config` checks it and every problem is a ValueError naming the exact key (the
style of :mod:`mlipbias.models.config`, whose helpers it uses; the ``train`` section is checked
by that module). ``mlipbias al --template`` writes :data:`TEMPLATE`, which the tests load into the
defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mlipbias.dynamics.explorer import ExplorerSettings
from mlipbias.models.config import _section, config_from_dict

SELECTION_METHODS = ("max_det", "max_dist", "max_unc", "random")

# Zaverkin et al. 2024 (Methods, "Training"): mini-batches of 32, 1000 epochs with early stopping. Its code
# (docs/active_learning.md): loss weights 1 and 4 on energies and forces, conformal alpha 0.05.
TRAIN_DEFAULTS = {
    "uncertainty": {"methods": ["posterior"], "alpha": 0.05},
    "training": {"epochs": 1000, "batch_size": 32, "energy_weight": 1.0, "force_weight": 4.0},
}


@dataclass
class StartSettings:
    """Where walkers start: a structure file (any format ase.io reads; every frame is a start) or
    the name of a structure shipped with mlipbias (``mlipbias data structures``)."""

    structures: str = ""
    index: str = ":"


@dataclass
class OracleSettings:
    """The reference method (:func:`mlipbias.oracles.make_oracle`)."""

    name: str = ""
    options: dict = field(default_factory=dict)
    min_distance: float = 0.5


@dataclass
class InitialSettings:
    """Generation 0: ``n_structures`` random perturbations of the start structures (Zaverkin et al. (2024)
    Eqs. 32-34), labelled, and/or the labelled rows of an existing ``dataset``."""

    n_structures: int = 8
    position_amplitude: float = 0.02
    strain_amplitude: float = 0.05
    dataset: str | None = None


@dataclass
class TrainSection:
    """The model: the ``descriptor``, ``model``, ``uncertainty`` and ``training`` sections of
    ``mlipbias train`` (same keys and defaults, except those of :data:`TRAIN_DEFAULTS`)."""

    descriptor: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    uncertainty: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    validation_fraction: float = 0.1
    warm_start: bool = True


@dataclass
class ExploreSettings(ExplorerSettings):
    """``explorer`` (md, perturb, adversarial or one added to mlipbias.dynamics.EXPLORERS), ``walkers`` (K,
    run in parallel each generation), ``walker_pressures`` (GPa; walker k runs at
    ``walker_pressures[k % len]`` instead of ``pressure``, e.g. [0, 0.25] for half the walkers at
    each, as seed 002's unbiased MIL-53(Al) runs) and the explorer settings."""

    explorer: str = "md"
    walkers: int = 8
    walker_pressures: list[float] | None = None

    def walker_settings(self, k: int) -> ExplorerSettings:
        """The explorer settings of walker ``k``."""
        values = {
            key: v
            for key, v in self.to_dict().items()
            if key not in ("explorer", "walkers", "walker_pressures")
        }
        if self.walker_pressures:
            values["pressure"] = float(self.walker_pressures[k % len(self.walker_pressures)])
        return ExplorerSettings(**values)


@dataclass
class SelectSettings:
    """Batch selection (Zaverkin et al. Eqs. 24-27) and the force filter of the labels."""

    method: str = "max_det"
    batch_size: int = 8
    max_force: float = 20.0
    max_det_noise: float = 0.0


@dataclass
class StopSettings:
    """The loop ends when the dataset has ``max_size`` structures (training plus validation), the
    force RMSE on the test set reaches ``force_rmse`` (eV/A) or after ``max_generations``."""

    max_size: int = 512
    force_rmse: float | None = None
    max_generations: int | None = None


@dataclass
class TestSettings:
    """A labelled ase.db evaluated after every training (errors in the summary)."""

    path: str | None = None
    selection: str | None = None


@dataclass
class DaskSettings:
    """Walkers and oracle calls run as dask.distributed tasks: ``scheduler`` the address of a
    running cluster, or a LocalCluster of ``workers`` processes (threads with ``processes:
    false``); a task lost with its worker is run again up to ``retries`` times."""

    scheduler: str | None = None
    workers: int = 2
    processes: bool = True
    retries: int = 2


@dataclass
class OutputSettings:
    directory: str = "al_run"
    dataset: str = "dataset.db"


@dataclass
class ALConfig:
    start: StartSettings = field(default_factory=StartSettings)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    initial: InitialSettings = field(default_factory=InitialSettings)
    train: TrainSection = field(default_factory=TrainSection)
    explore: ExploreSettings = field(default_factory=ExploreSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    stop: StopSettings = field(default_factory=StopSettings)
    test: TestSettings = field(default_factory=TestSettings)
    dask: DaskSettings = field(default_factory=DaskSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    seed: int = 0

    @property
    def directory(self) -> Path:
        return Path(self.output.directory)

    @property
    def dataset_path(self) -> Path:
        return self.directory / self.output.dataset

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def train_config(self, data_path, directory, seed: int):
        """The :class:`mlipbias.models.config.TrainConfig` of one generation's training."""
        t = self.train
        values = {name: {**TRAIN_DEFAULTS.get(name, {}), **getattr(t, name)} for name in _TRAIN_PARTS}
        values["training"].setdefault("seed", seed)
        values["data"] = {
            "path": str(data_path),
            "validation_fraction": t.validation_fraction,
            "test_fraction": 0.0,
            "seed": seed,
        }
        values["output"] = {"directory": str(directory), "model": "model.mlip"}
        return config_from_dict(values)


_TRAIN_PARTS = ("descriptor", "model", "uncertainty", "training")
SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(ALConfig) if f.name != "seed"}

TEMPLATE = """\
# mlipbias al configuration: active learning with uncertainty-biased MD (Zaverkin et al. 2024).
# Units: eV, Angstrom, fs, K, GPa. The values shown are the defaults, which follow the paper and its
# authors' code (docs/active_learning.md names the source of each); start.structures and oracle.name
# are required. Check with `mlipbias al CONFIG --check`.
# docs/active_learning.md explains every key and the algorithm.

start:
  structures: start.xyz         # structure file (every frame is a start) or a shipped name (alpha-quartz)
  index: ":"                    # which frames of the file

oracle:
  name: bks                     # bks, emt, lammps, gfn1-xtb, gfn2-xtb, ... (mlipbias.oracles)
  options: {}                   # keyword arguments of the oracle
  min_distance: 0.5             # A; closer pairs are rejected before the oracle call

initial:                        # generation 0
  n_structures: 8               # random perturbations of the start structures (Zaverkin et al.: 8)
  position_amplitude: 0.02      # A; shifts uniform in [-a, a] (Eq. 32; the authors' code, alanine dipeptide)
  strain_amplitude: 0.05        # cell strain components uniform in [-s, s] (Eqs. 33-34; periodic only)
  dataset: null                 # an ase.db whose labelled rows are copied in first

train:                          # the sections of `mlipbias train` (see `mlipbias train --template`)
  descriptor: {}                # e.g. {preset: SiO2}
  model: {}                     # e.g. {hidden: [30, 30]}
  uncertainty: {methods: [posterior], alpha: 0.05}  # conformal: P(error <= c U) >= 95 % (the authors' code)
  training: {epochs: 1000, batch_size: 32, energy_weight: 1.0, force_weight: 4.0}
  validation_fraction: 0.1      # early stopping and conformal calibration (Zaverkin et al.: 90/10)
  warm_start: true              # start from the previous generation's weights

explore:
  explorer: md                  # md, perturb or adversarial (Tan et al. 2023)
  walkers: 8                    # parallel walkers per generation (Zaverkin et al.: 8 alanine, 32 MOF)
  engine: ase                   # ase (any system) or lammps (periodic, pair_style mlip/bias)
  ensemble: nvt                 # nvt (Langevin) or npt (Nose-Hoover chains + MTK barostat)
  temperature: 300.0            # K
  pressure: 0.0                 # GPa (npt)
  walker_pressures: null        # GPa per walker, cycled: walker k at walker_pressures[k % len] (npt)
  timestep: 0.5                 # fs
  friction: 0.002               # 1/fs (Langevin; the authors' code: 0.02 ASE units = 0.00196 1/fs)
  thermostat_time: 100.0        # fs (npt; Zaverkin et al. (2024): 0.1 ps)
  barostat_time: 1000.0         # fs (npt; Zaverkin et al. (2024): 1 ps)
  cell_fluctuations: full       # npt: iso or full
  tau: 0.25                     # bias strength (0: unbiased MD; the authors' code: 0.25)
  tau_stress: null              # bias-stress strength (null: tau)
  tau_species: {}               # per-element bias-force strength (alanine dipeptide in the paper: {H: 0.0})
  rescale: true                 # Zaverkin et al. Eq. 8 rescaling of the bias
  rescale_window: 100           # steps: no bias for these first steps, then the ratio over this window
  uncertainty: null             # method of the stop rule and bias (null: the model's first)
  threshold: 1.5                # eV/A: stop when max_i U_i reaches it (calibrated)
  max_steps: 20000              # MD steps at most per walker
  record_interval: 200          # steps between candidate frames (the authors' code)
  trajectory_interval: 0        # steps between trajectory frames kept (gen_G/walkers/*.traj.npz; 0: none)
  min_distance: 0.5             # A: a walker with closer atoms stops
  n_samples: 8                  # perturb: structures per walker
  position_amplitude: 0.05      # perturb: A
  strain_amplitude: 0.05        # perturb: periodic cells
  options: {}                   # adversarial: {n_samples: 20, iterations: 80, ...} (docs/sampling.md)

select:
  method: max_det               # max_det, max_dist, max_unc or random (Zaverkin et al. Eqs. 24-27)
  batch_size: 8                 # structures selected per generation
  max_force: 20.0               # eV/A: labels with a larger reference force are dropped (as the paper)
  max_det_noise: 0.0            # added to the posterior variance in max_det

stop:
  max_size: 512                 # dataset size, training plus validation (Zaverkin et al. 2024)
  force_rmse: null              # eV/A on test.path: stop when reached
  max_generations: null

test:
  path: null                    # labelled ase.db for the errors in the summary
  selection: null

dask:
  scheduler: null               # address of a running scheduler (e.g. tcp://host:8786)
  workers: 2                    # LocalCluster workers (mlipbias al --workers)
  processes: true               # LocalCluster of processes (false: threads)
  retries: 2                    # reruns of a task whose worker died

output:
  directory: al_run             # state, models, candidates, summary and plots
  dataset: dataset.db           # inside directory

seed: 0
"""


def al_config_from_dict(values: dict, base_dir: str | os.PathLike | None = None) -> ALConfig:
    """A validated :class:`ALConfig`; relative paths are taken relative to ``base_dir``."""
    if not isinstance(values, dict):
        raise ValueError(f"the configuration must be a mapping of sections, got {type(values).__name__}")
    values = dict(values)
    seed = values.pop("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"config key seed: expected an integer, got {seed!r}")
    for name in values:
        if name not in SECTIONS:
            hint = difflib.get_close_matches(str(name), [*SECTIONS, "seed"], n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise ValueError(
                f"config section {name} is unknown{suggestion}; allowed: {', '.join(SECTIONS)}, seed"
            )
    values["explore"] = _renamed_species_tau(values.get("explore"))
    config = ALConfig(
        **{name: _section(name, values.get(name), f) for name, f in SECTIONS.items()}, seed=seed
    )
    if base_dir is not None:
        base = Path(base_dir)
        for section, key in (
            ("start", "structures"),
            ("initial", "dataset"),
            ("test", "path"),
            ("output", "directory"),
        ):
            obj = getattr(config, section)
            value = getattr(obj, key)
            if value and not Path(value).is_absolute() and (section != "start" or (base / value).exists()):
                setattr(obj, key, str(base / value))
    check_al_config(config)
    return config


def _renamed_species_tau(explore):
    """``explore.species_tau``, the key's name before it took that of MLIPCalculator and the LAMMPS
    keyword, read as ``explore.tau_species`` with a DeprecationWarning (state.json of older runs)."""
    if not isinstance(explore, dict) or "species_tau" not in explore:
        return explore
    if "tau_species" in explore:
        raise ValueError("config keys explore.tau_species and explore.species_tau: give tau_species only")
    warnings.warn(
        "config key explore.species_tau is deprecated: use explore.tau_species",
        DeprecationWarning,
        stacklevel=3,
    )
    explore = dict(explore)
    explore["tau_species"] = explore.pop("species_tau")
    return explore


def load_al_config(path: str | os.PathLike) -> ALConfig:
    """Read and validate a YAML configuration file."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such configuration file (`mlipbias al --template` writes one)")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    try:
        return al_config_from_dict(values or {}, base_dir=path.parent)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def check_al_config(config: ALConfig) -> None:
    """ValueError naming the key of the first problem."""
    from mlipbias.dynamics import EXPLORERS, check_options
    from mlipbias.oracles import ORACLE_NAMES

    def fail(key, value, allowed):
        raise ValueError(f"config key {key} = {value!r}: {allowed}")

    if not config.start.structures:
        raise ValueError(
            "config key start.structures is required: a structure file or a shipped structure name"
        )
    if not config.oracle.name:
        raise ValueError(f"config key oracle.name is required: one of {', '.join(ORACLE_NAMES)}")
    if config.oracle.name.lower() not in ORACLE_NAMES:
        fail("oracle.name", config.oracle.name, f"expected one of {', '.join(ORACLE_NAMES)}")
    for section in ("oracle", "train", "explore"):
        obj = getattr(config, section)
        for f in dataclasses.fields(obj):
            if str(f.type).startswith("dict") and not isinstance(getattr(obj, f.name), dict):
                fail(f"{section}.{f.name}", getattr(obj, f.name), "expected a mapping")
    i = config.initial
    if i.n_structures < 0:
        fail("initial.n_structures", i.n_structures, "expected an integer >= 0")
    if i.n_structures == 0 and not i.dataset:
        raise ValueError(
            "config key initial.n_structures = 0 needs initial.dataset: generation 0 would be empty"
        )
    for key in ("position_amplitude", "strain_amplitude"):
        if not getattr(i, key) >= 0:
            fail(f"initial.{key}", getattr(i, key), "expected a number >= 0")
    t = config.train
    if not 0 < t.validation_fraction < 1:
        fail("train.validation_fraction", t.validation_fraction, "expected a number in (0, 1)")
    try:
        config.train_config("dataset.db", "run", config.seed)
    except ValueError as error:
        raise ValueError(f"in section train: {error}") from None
    e = config.explore
    if e.explorer not in EXPLORERS:
        fail("explore.explorer", e.explorer, f"expected one of {', '.join(EXPLORERS)}")
    if e.walkers < 1:
        fail("explore.walkers", e.walkers, "expected an integer >= 1")
    e.check("explore")
    if e.walker_pressures is not None:
        pressures = e.walker_pressures
        if (
            not isinstance(pressures, list)
            or not pressures
            or not all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p)
                for p in pressures
            )
        ):
            fail("explore.walker_pressures", pressures, "expected null or a non-empty list of numbers (GPa)")
    check_options(e.explorer, e.options, "explore.options")
    s = config.select
    if s.method not in SELECTION_METHODS:
        fail("select.method", s.method, f"expected one of {', '.join(SELECTION_METHODS)}")
    if s.batch_size < 1:
        fail("select.batch_size", s.batch_size, "expected an integer >= 1")
    if not s.max_force > 0:
        fail("select.max_force", s.max_force, "expected a number > 0 (eV/A)")
    if not s.max_det_noise >= 0:
        fail("select.max_det_noise", s.max_det_noise, "expected a number >= 0")
    methods = {**TRAIN_DEFAULTS["uncertainty"], **t.uncertainty}.get("methods", [])
    methods = [methods] if isinstance(methods, str) else list(methods)
    need = {"max_det": "posterior", "max_dist": "distance"}.get(s.method)
    if need and need not in methods and "posterior" not in methods and "distance" not in methods:
        raise ValueError(
            f"config key select.method = {s.method}: needs gradient features; add posterior or distance "
            f"to train.uncertainty.methods (now {methods})"
        )
    st = config.stop
    if st.max_size < 2:
        fail("stop.max_size", st.max_size, "expected an integer >= 2")
    if st.force_rmse is not None and not st.force_rmse > 0:
        fail("stop.force_rmse", st.force_rmse, "expected null or a number > 0 (eV/A)")
    if st.force_rmse is not None and not config.test.path:
        raise ValueError("config key stop.force_rmse needs test.path: the error is measured on that test set")
    if st.max_generations is not None and st.max_generations < 1:
        fail("stop.max_generations", st.max_generations, "expected null or an integer >= 1")
    d = config.dask
    if d.workers < 1:
        fail("dask.workers", d.workers, "expected an integer >= 1")
    if d.retries < 0:
        fail("dask.retries", d.retries, "expected an integer >= 0")
    if not config.output.directory:
        fail("output.directory", config.output.directory, "expected a folder name")
