"""The ``mlipbias train`` configuration: schema, defaults, validation and the commented template.

One YAML file describes a run (sections ``data``, ``descriptor``, ``model``, ``uncertainty``,
``training``, ``output``). :func:`load_config` checks it against the dataclasses below and the
settings of :mod:`mlipbias.models.training`, and every problem is a ValueError naming the exact key,
the value and what is allowed. ``mlipbias train --template`` writes :data:`TEMPLATE`, which is
checked by the tests to load into the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlipbias.models.training import ModelSettings, TrainingSettings, UncertaintySettings, check_settings

DESCRIPTOR_PRESETS = ("auto", "SiO2", "SiO2-fast", "Si", "molecules")


@dataclass
class DataSettings:
    """Where the labelled structures come from and how they are split."""

    path: str = ""
    selection: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    validation_path: str | None = None
    test_path: str | None = None
    seed: int = 0
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"

    @property
    def label_keys(self):
        from mlipbias.datasets import LabelKeys

        return LabelKeys(self.energy_key, self.forces_key, self.stress_key)


@dataclass
class DescriptorSettings:
    """Symmetry functions: a preset, or elements with explicit G2/G4/G5 parameters."""

    preset: str | None = "auto"
    elements: list[str] | None = None
    g2: list[list[float]] = field(default_factory=list)
    g4: list[list[float]] = field(default_factory=list)
    g5: list[list[float]] = field(default_factory=list)
    angular_cutoff: float | None = None  # A: the preset's G4/G5 at this cutoff


@dataclass
class OutputSettings:
    directory: str = "run"
    model: str = "model.mlip"
    tensorboard: bool = False


@dataclass
class TrainConfig:
    data: DataSettings = field(default_factory=DataSettings)
    descriptor: DescriptorSettings = field(default_factory=DescriptorSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    uncertainty: UncertaintySettings = field(default_factory=UncertaintySettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    @property
    def model_path(self) -> Path:
        return Path(self.output.directory) / self.output.model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}

TEMPLATE = """\
# mlipbias train configuration. Units: eV, Angstrom. Every key is optional except data.path;
# the values shown are the defaults. Check with `mlipbias train CONFIG.yaml --check`. Relative
# paths (data files, output.directory) are taken from the folder of this file, not the working one.

data:
  path: dataset.db              # ase.db (`mlipbias data generate`), rMD17 .npz or ase.io formats (extxyz...)
  selection: null               # ase.db selection, e.g. "mode=displacements" (ase.db files only)
  validation_fraction: 0.1      # of data.path, for early stopping and calibration
  test_fraction: 0.1            # of data.path, held out; its metrics are printed at the end
  validation_path: null         # a separate validation file instead of the fraction
  test_path: null               # a separate test file instead of the fraction
  seed: 0                       # seed of the random split (ids in output.directory/split.json)
  energy_key: energy            # label names in the files: energy (eV) and stress (eV/A^3) in
  forces_key: forces            # atoms.info, forces (eV/A) in atoms.arrays; e.g. REF_energy,
  stress_key: stress            # REF_forces, REF_stress for MACE-style extxyz

descriptor:
  preset: auto                  # auto (shells and cutoffs from the data's distances), SiO2, SiO2-fast
                                # (SiO2 with G4/G5 at 3.5 A: ~10x faster), Si or molecules
  angular_cutoff: null          # A: the preset's G4/G5 at this shorter cutoff (fewer triplets, faster)
  # or explicit symmetry functions (set preset: null):
  # elements: [Si, O]
  # g2: [[eta, rs, rc], ...]             # eta in 1/A^2, rs and rc in A
  # g4: [[eta, zeta, lambda, rc], ...]
  # g5: [[eta, zeta, lambda, rc], ...]

model:
  kind: bpnn                    # bpnn (symmetry functions of `descriptor`, one network per element),
                                # gmnn (Gaussian moments, one network; `descriptor` is not used) or painn
  hidden: null                  # hidden layer widths; null: [30, 30] (bpnn), [512, 512] (gmnn)
  activation: null              # tanh or silu; null: tanh (bpnn), silu (gmnn, its only choice)
  # GM-NN only (Zaverkin et al.'s settings); train it with training.learning_rate 0.03 and force_weight 4:
  cutoff: null                  # A; null: 6 when every training structure is periodic, else 5
  n_basis: 7                    # Gaussians per species pair
  n_radial: 5                   # radial functions (trainable species-pair coefficients)
  n_contractions: 8             # contraction groups kept, 1..8 (360 features with 5 radial functions)
  painn: {}                     # painn: cutoff (5.0 A), features (128), layers (3), radial_basis (20),
                                # readout ([64, 64]), energy_scale (null: fitted, eV/atom); the defaults
                                # are Tan et al.'s (docs/painn.md)

uncertainty:
  methods: [ensemble]           # any of: ensemble, mve, evidential, gmm, posterior, distance
                                # (mve, evidential and ensemble exclude each other)
  n_members: 3                  # ensemble size (used with ensemble)
  sketch_size: 32               # k, random projections per layer (posterior, distance)
  posterior_lambda: 1.0e-06     # regularisation of the posterior precision matrices
  atom_subset: 20000            # distance, per atom: all training atoms up to this many (K x 8 bytes
                                # each in the model file), else a greedy max-dist subset of this size
  gmm_max_components: 8         # largest mixture tried; the size is chosen by BIC
  alpha: 0.05                   # conformal miscoverage: P(error <= c U) >= 1 - alpha (Zaverkin et al. 2024)
  evidential_regularization: 0.2
  head_training: joint          # mve/evidential heads: joint (Tan et al.: the force NLL trains the
                                # mean network too; with loss mae, energy_weight 0.1, force_weight 0,
                                # nll_weight 1 it is Tan et al.'s loss), detached (heads fitted by their
                                # NLL every step on detached inputs and residuals) or post_hoc (heads
                                # fitted alone on the trained network's residuals: the cost of an
                                # energy-only training plus one force pass)
  head_epochs: 300              # post_hoc: most epochs of the head fit (early stopping on validation)
  head_energy_nll: true         # false (PaiNN): the NLL on forces alone, as Tan et al. (no energy head term)
  nll_beta: 0.5                 # joint MVE: beta-NLL weight stop_grad(v)^beta on the force NLL (Seitzer
                                # et al. 2022); 0 is Tan et al.'s plain NLL, which learns forces ~2x slower
  warmup_epochs: 0              # joint heads, PaiNN: first epochs train the mean by the accuracy loss
                                # (force weight >= 1) and the heads on detached residuals, then joint

training:
  epochs: 500
  batch_size: 16                # structures per mini-batch
  learning_rate: 0.001          # Adam
  schedule: plateau             # plateau (on the validation loss), exponential or none
  decay_factor: 0.5             # plateau: lr *= decay_factor ...
  decay_patience: 25            # ... after this many epochs without improvement
  decay_rate: 0.995             # exponential: lr *= decay_rate every epoch
  min_learning_rate: 1.0e-05
  early_stopping_patience: 80   # stop when no member improved for this many epochs
  loss: mse                     # mse or mae
  # Loss weights (docs/models.md, "Loss weights"): energy per atom and force components 1:1, as
  # nequip's tutorial (MACE: 1:100; DeePMD-kit ends at 1:1 on total energy^2 / N, N times more on
  # energies; Tan et al. 2023: 0.1:1 on absolute errors of total energies and forces). Forces
  # make a model fit for MD; an epoch costs ~100x the CPU time of an energy-only one
  # (benchmarks/RESULTS.md). Energies only:
  # force_weight: 0 and stress_weight: 0.
  energy_weight: 1.0            # on the energy per atom (eV/atom)
  force_weight: 1.0             # on force components (eV/A)
  stress_weight: 1.0            # on stress components (eV/A^3), as MACE; used for the periodic
                                # structures that have a stress, ignored when none has
  nll_weight: 1.0               # on the negative log-likelihood of mve / evidential heads
  seed: 0
  device: auto                  # auto (CUDA when torch sees it), cpu or cuda:N

output:
  directory: run                # metrics.jsonl, metrics.csv, learning_curve.png, checkpoint.pt, best.mlip,
                                # split.json, test_metrics.json
  model: model.mlip             # the final model, inside directory
  tensorboard: false            # also write TensorBoard events to directory/tensorboard (needs the
                                # tensorboard package; metrics.csv and learning_curve.png are always written)
"""


def _type_name(value) -> str:
    return type(value).__name__


def _convert(key: str, value, default, annotation: str):
    """The value in the type of the default (int -> float allowed), or a ValueError naming the key."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {key}: null is not allowed (default {default!r})")
    if "bool" in annotation:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key}: expected true or false, got {value!r}")
        return value
    if annotation.startswith(("int", "int |")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if annotation.startswith(("float", "float |")):
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ValueError(f"config key {key}: expected a string, got {value!r} ({_type_name(value)})")
        return value
    if annotation.startswith(("tuple", "list")):
        if isinstance(value, str):
            value = [value] if "str" in annotation else value
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key}: expected a list, got {value!r}")
        return tuple(value) if annotation.startswith("tuple") else list(value)
    return value


def _section(name: str, values, factory):
    settings = factory()
    if values is None:
        return settings
    if not isinstance(values, dict):
        raise ValueError(f"config section {name} must be a mapping of keys to values, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(settings)}
    for key, value in values.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise ValueError(
                f"config key {name}.{key} is unknown{suggestion}; allowed keys in {name}: {', '.join(known)}"
            )
        f = known[key]
        setattr(settings, key, _convert(f"{name}.{key}", value, getattr(settings, key), str(f.type)))
    return settings


def config_from_dict(values: dict, base_dir: str | os.PathLike | None = None) -> TrainConfig:
    """A validated :class:`TrainConfig`; relative paths are taken relative to ``base_dir``."""
    if not isinstance(values, dict):
        raise ValueError(f"the configuration must be a mapping of sections, got {_type_name(values)}")
    for name in values:
        if name not in SECTIONS:
            hint = difflib.get_close_matches(str(name), SECTIONS, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise ValueError(f"config section {name} is unknown{suggestion}; allowed: {', '.join(SECTIONS)}")
    config = TrainConfig(
        **{name: _section(name, values.get(name), factory) for name, factory in SECTIONS.items()}
    )
    _check(config)
    if base_dir is not None:
        base = Path(base_dir)
        for section, key in (
            ("data", "path"),
            ("data", "validation_path"),
            ("data", "test_path"),
            ("output", "directory"),
        ):
            obj = getattr(config, section)
            value = getattr(obj, key)
            if value and not Path(value).is_absolute():
                setattr(obj, key, str(base / value))
    return config


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and validate a YAML configuration file."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such configuration file (`mlipbias train --template` writes one)"
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (UTF-8) YAML file; is it the configuration?") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    try:
        return config_from_dict(values or {}, base_dir=path.parent)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _check(config: TrainConfig) -> None:
    d = config.data
    if not d.path:
        raise ValueError("config key data.path is required: the ase.db file of labelled structures")
    if d.seed < 0:
        raise ValueError(f"config key data.seed = {d.seed}: expected an integer >= 0")
    for key in ("energy_key", "forces_key", "stress_key"):
        if not getattr(d, key):
            raise ValueError(f"config key data.{key} is empty")
    for key in ("validation_fraction", "test_fraction"):
        value = getattr(d, key)
        if not 0 <= value < 1:
            raise ValueError(f"config key data.{key} = {value}: expected 0 <= value < 1")
    if d.validation_path is None and d.validation_fraction == 0:
        raise ValueError(
            "config key data.validation_fraction = 0: give a fraction > 0 or data.validation_path"
        )
    if d.validation_fraction + d.test_fraction >= 1:
        raise ValueError(
            f"config keys data.validation_fraction + data.test_fraction = "
            f"{d.validation_fraction + d.test_fraction:g}: they must leave training data (sum < 1)"
        )
    desc = config.descriptor
    if desc.preset is not None:
        if desc.preset not in DESCRIPTOR_PRESETS:
            raise ValueError(
                f"config key descriptor.preset = {desc.preset!r}: expected one of "
                f"{', '.join(DESCRIPTOR_PRESETS)} "
                "or null with explicit elements and g2/g4/g5"
            )
        if desc.elements or desc.g2 or desc.g4 or desc.g5:
            raise ValueError(
                "config section descriptor: set preset: null to give elements and g2/g4/g5 yourself"
            )
        if desc.angular_cutoff is not None and not 0 < desc.angular_cutoff < float("inf"):
            raise ValueError(
                f"config key descriptor.angular_cutoff = {desc.angular_cutoff!r}: expected a positive "
                "number of A, or null"
            )
    elif desc.angular_cutoff is not None:
        raise ValueError(
            "config key descriptor.angular_cutoff applies to a preset: "
            "with explicit g4/g5 rows give rc in each row"
        )
    elif not desc.elements or not (desc.g2 or desc.g4 or desc.g5):
        raise ValueError(
            "config section descriptor: without a preset, give elements and at least one of g2, g4, g5"
        )
    for key, width in (("g2", 3), ("g4", 4), ("g5", 4)):
        for row in getattr(desc, key):
            if not isinstance(row, (list, tuple)) or len(row) != width:
                raise ValueError(f"config key descriptor.{key}: every row needs {width} numbers, got {row!r}")
    if config.model.kind == "gmnn" and desc.angular_cutoff is not None:
        raise ValueError(
            "config key descriptor.angular_cutoff applies to symmetry functions; "
            "a GM-NN (model.kind: gmnn) has one cutoff, model.cutoff"
        )
    if not config.output.model:
        raise ValueError("config key output.model is empty")
    if config.model.kind == "painn" and config.output.model.endswith(".mlip"):
        raise ValueError(
            f"config key output.model = {config.output.model!r}: a PaiNN model is a torch file, not a .mlip "
            "model (which C++ and LAMMPS read); name it e.g. model.pt"
        )
    check_settings(config.model, config.uncertainty, config.training)


def make_descriptor(
    settings: DescriptorSettings,
    elements_in_data,
    structures=None,
    log=None,
    model: ModelSettings | None = None,
):
    """The descriptor of the settings: symmetry functions, or Gaussian moments for ``model.kind: gmnn``.

    ``auto`` derives shells and cutoffs from the neighbour distances of ``structures`` (the training
    data; ``mlipbias.descriptors.from_data``) and passes what it chose to ``log``; without
    structures it falls back to the recipe of ``SymmetryFunctions.defaults`` for the elements.
    The Gaussian moments take the model settings, for the data's elements; their default cutoff is
    6 A when every one of ``structures`` is periodic, else 5 A.
    """
    from ase.data import atomic_numbers

    from mlipbias.descriptors import SymmetryFunctions, symmetry_functions_from_data

    if model is not None and model.kind == "gmnn":
        from mlipbias.descriptors.gaussian_moments import GaussianMoments

        periodic = structures is not None and all(atoms.pbc.all() for atoms in structures)
        cutoff = model.cutoff if model.cutoff is not None else (6.0 if periodic else 5.0)
        elements = sorted(set(elements_in_data), key=lambda e: atomic_numbers[e])
        return GaussianMoments(
            elements,
            cutoff,
            n_basis=model.n_basis,
            n_radial=model.n_radial,
            n_contractions=model.n_contractions,
        )
    if settings.preset is None:
        return SymmetryFunctions.build(settings.elements, g2=settings.g2, g4=settings.g4, g5=settings.g5)
    if settings.preset == "auto":
        elements = sorted(set(elements_in_data), key=lambda e: atomic_numbers[e])
        if structures is None:
            sf = SymmetryFunctions.defaults(elements)
        else:
            sf, choice = symmetry_functions_from_data(structures, elements)
            if log is not None:
                log(choice.summary())
    else:
        sf = SymmetryFunctions.defaults(settings.preset)
    return sf if settings.angular_cutoff is None else sf.with_angular_cutoff(settings.angular_cutoff)
