"""Adversarial sampling of uncertain structures (seed 003 section 2.4, Eqs. 15-16; Schwalbe-Koda et al. 2021).

A displacement delta (and optionally a symmetric strain epsilon) of a training structure x0 is
updated by gradient ascent to maximise the Boltzmann-weighted uncertainty

    f(delta, epsilon) = p(x) U(x),     x = (x0 + delta)(1 + epsilon),  cell = cell0 (1 + epsilon)   (Eq. 15)
    p(x) = exp(-E_hat(x) / (N kT)) / sum_(x' in train) exp(-E(x') / (N' kT))                      (Eq. 16)

with E_hat the model's energy, E(x') the reference energies of the training structures and kT a
temperature per atom (seed 003 gives kT in kcal/mol/atom, so energies enter per atom: N and N'
are the structures' atom counts). U is the adversary's uncertainty (:mod:`mlipbias.sampling.adversaries`);
the gradient is

    df/dx = p (dU/dx - U / (N kT) dE_hat/dx),   df/ddelta = (df/dx)(1 + epsilon)^T,
    df/depsilon = (1 + epsilon)^-T p (dU/deta - U / (N kT) dE_hat/deta), symmetrised.

The ascent uses Adam, as Schwalbe-Koda et al.'s code does (``robust/schnet/attacker.py`` of
learningmatter-mit/Atomistic-Adversarial-Attacks: delta starts as 0.01 A x normal noise, Adam on
-p U). Adam is invariant to a constant scale of the objective except through its epsilon, so f is
divided by |f| at the start: the steps are those of Adam on f itself, without p (often 1e-10 or
less) falling below Adam's epsilon.

Seed 003's settings (SI section III): 80 iterations, kT = 0.7 kcal/mol/atom, learning rates 5e-5
(ammonia) and 3e-5 (silica), 20 samples per generation (ammonia) or 100 (silica), energy cutoffs
100 kcal/mol (ammonia), 5000 and 10000 kcal/mol (silica, generations 2 and 3). A sample is accepted
when its predicted energy is at most ``energy_cutoff`` above ``N min_train(E / N)`` (the lowest
training energy per atom times its atom count: the ground state for one composition).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from mlipbias.sampling.adversaries import Adversary, EnergyUncertainty, as_adversary

KCAL_PER_MOL = units.kcal / units.mol  # eV


@dataclass(frozen=True)
class AdversarialSamplingSettings:
    """Settings of :func:`adversarial_samples` (defaults: seed 003's ammonia study).

    ``iterations`` Adam steps per sample; ``kT`` in eV per atom; ``learning_rate`` Adam's step (A,
    and strain units); ``n_samples`` accepted samples per call (one generation); ``energy_cutoff``
    in eV above the training minimum (None: accept all); ``strain`` also optimises a symmetric cell
    strain (periodic cells); ``initial_displacement`` the standard deviation of delta's random
    start (A); ``max_displacement`` a bound on every component of delta (A, None: no bound);
    ``max_attempts`` starting structures tried at most (default 5 n_samples); ``seed``.
    """

    iterations: int = 80
    kT: float = 0.7 * KCAL_PER_MOL
    learning_rate: float = 5e-5
    n_samples: int = 20
    energy_cutoff: float | None = 100.0 * KCAL_PER_MOL
    strain: bool = False
    initial_displacement: float = 0.01
    max_displacement: float | None = None
    max_attempts: int | None = None
    seed: int = 0

    def __post_init__(self):
        for key in ("iterations", "n_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"adversarial sampling {key} = {value!r}: expected a positive integer")
        for key in ("kT", "learning_rate"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"adversarial sampling {key} = {value!r}: expected a finite number > 0")
        for key in ("energy_cutoff", "max_displacement"):
            value = getattr(self, key)
            if value is not None and not (
                isinstance(value, (int, float)) and math.isfinite(value) and value > 0
            ):
                raise ValueError(
                    f"adversarial sampling {key} = {value!r}: expected a finite number > 0 or None"
                )
        if not (math.isfinite(self.initial_displacement) and self.initial_displacement >= 0):
            raise ValueError(
                f"adversarial sampling initial_displacement = {self.initial_displacement!r}: expected >= 0"
            )
        if self.max_attempts is not None and self.max_attempts < self.n_samples:
            raise ValueError(
                f"adversarial sampling max_attempts = {self.max_attempts!r}: expected >= n_samples "
                f"({self.n_samples})"
            )


# Seed 003's settings (SI section III) for its two active-learning studies.
SEED003_AMMONIA = AdversarialSamplingSettings()
SEED003_SILICA = AdversarialSamplingSettings(
    learning_rate=3e-5, n_samples=100, energy_cutoff=5000.0 * KCAL_PER_MOL
)  # generation 2; generation 3 raises energy_cutoff to 10000 kcal/mol


@dataclass
class AdversarialSample:
    """One sample: ``atoms`` (x0 + delta, strained cell; ``info`` holds the values below),
    ``uncertainty`` U, ``energy`` the predicted energy (eV), ``objective`` p U, ``start`` the index
    of the start structure (by default the training structure) it started from, ``history`` the
    objective at every iteration."""

    atoms: Atoms
    uncertainty: float
    energy: float
    objective: float
    start: int
    history: list[float] = field(default_factory=list)


@dataclass
class AdversarialResult:
    """Accepted samples and why others were rejected (``rejected``: reason per tried start index)."""

    samples: list[AdversarialSample]
    rejected: dict[int, str]
    settings: AdversarialSamplingSettings


def log_partition(train_energies: np.ndarray, train_atoms: np.ndarray, kT: float) -> float:
    """log sum_train exp(-E / (N kT)) of Eq. 16 (energies in eV, kT in eV per atom)."""
    from scipy.special import logsumexp

    e = np.asarray(train_energies, dtype=float) / np.asarray(train_atoms, dtype=float)
    return float(logsumexp(-e / kT))


def deformed(atoms0: Atoms, delta: np.ndarray, strain: np.ndarray | None) -> Atoms:
    """x = (x0 + delta)(1 + strain), cell = cell0 (1 + strain)."""
    atoms = atoms0.copy()
    atoms.calc = None
    positions = atoms0.positions + delta
    if strain is not None:
        F = np.eye(3) + strain
        atoms.set_cell(atoms0.cell.array @ F, scale_atoms=False)
        positions = positions @ F
    atoms.positions = positions
    return atoms


def objective(
    adversary: Adversary,
    atoms0: Atoms,
    delta: np.ndarray,
    strain: np.ndarray | None,
    log_z: float,
    kT: float,
) -> tuple[float, np.ndarray, np.ndarray | None, EnergyUncertainty]:
    """(f = p U, df/ddelta (n, 3), df/dstrain (3, 3) symmetrised or None, the adversary's values)."""
    atoms = deformed(atoms0, delta, strain)
    value = adversary(atoms)
    n = len(atoms)
    for name in ("energy", "uncertainty"):
        if not math.isfinite(getattr(value, name)):
            raise FloatingPointError(f"the model's {name} is not finite")
    p = math.exp(-value.energy / (n * kT) - log_z)
    U = value.uncertainty
    f = p * U
    g_x = p * (value.uncertainty_gradient - U / (n * kT) * value.energy_gradient)
    if strain is None:
        return f, g_x, None, value
    F = np.eye(3) + strain
    g_eta = p * (value.uncertainty_strain - U / (n * kT) * value.energy_strain)
    g_strain = np.linalg.solve(F, g_eta)  # F^-T g_eta with F symmetric
    return f, g_x @ F.T, 0.5 * (g_strain + g_strain.T), value


class _Adam:
    """Adam (Kingma and Ba) ascending the objective, on numpy arrays."""

    def __init__(self, shapes, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps, self.t = lr, beta1, beta2, eps, 0
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]

    def step(self, params, grads) -> None:
        self.t += 1
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g**2
            m_hat = m / (1 - self.beta1**self.t)
            v_hat = v / (1 - self.beta2**self.t)
            p += self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def ascend(
    adversary: Adversary,
    atoms0: Atoms,
    log_z: float,
    settings: AdversarialSamplingSettings,
    rng: np.random.Generator,
) -> tuple[Atoms, EnergyUncertainty, float, list[float]]:
    """Gradient ascent of p U from ``atoms0``: (final structure, its values, its p U, p U per iteration)."""
    s = settings
    periodic = bool(atoms0.pbc.all())
    if s.strain and not periodic:
        raise ValueError("adversarial sampling with strain needs a fully periodic cell")
    delta = s.initial_displacement * rng.standard_normal((len(atoms0), 3))
    strain = np.zeros((3, 3)) if s.strain else None
    params = [delta] + ([strain] if strain is not None else [])
    adam = _Adam([p.shape for p in params], s.learning_rate)
    scale, history = None, []
    for _ in range(s.iterations):
        f, g_delta, g_strain, _ = objective(adversary, atoms0, delta, strain, log_z, s.kT)
        history.append(f)
        scale = scale or (abs(f) if f != 0 else 1.0)
        grads = [g_delta / scale] + ([g_strain / scale] if strain is not None else [])
        adam.step(params, grads)
        if s.max_displacement is not None:
            np.clip(delta, -s.max_displacement, s.max_displacement, out=delta)
    f, _, _, value = objective(adversary, atoms0, delta, strain, log_z, s.kT)
    history.append(f)
    return deformed(atoms0, delta, strain), value, f, history


def adversarial_samples(
    model,
    train_structures: Sequence[Atoms],
    *,
    method: str | None = None,
    settings: AdversarialSamplingSettings | None = None,
    train_energies: Sequence[float] | None = None,
    starts: Sequence[Atoms] | None = None,
    output: str | Path | None = None,
    progress: bool = True,
) -> AdversarialResult:
    """One generation of adversarial samples (module docstring).

    ``model``: a PaiNN model, an MLIPModel, a list of GNNs, a model file or an adversary
    (:func:`mlipbias.sampling.adversaries.as_adversary`); ``method`` its uncertainty. Starting
    structures are drawn at random (without repetition while possible) from ``starts`` (default:
    ``train_structures``; each attempt has its own random initial displacement), and
    ``train_structures``' reference energies (``train_energies``, default: each structure's
    ``get_potential_energy()``) make the denominator of Eq. 16 and the cutoff's minimum. Each
    accepted sample is appended to ``output`` (extended XYZ) as soon as it is found. A sample whose
    energy or uncertainty becomes non-finite is rejected, with the reason in ``rejected``.
    """
    from tqdm import tqdm

    s = settings or AdversarialSamplingSettings()
    adversary = as_adversary(model, method)
    if not train_structures:
        raise ValueError("adversarial sampling needs training structures to start from")
    if train_energies is None:
        try:
            train_energies = [float(a.get_potential_energy()) for a in train_structures]
        except Exception as exc:
            raise ValueError(
                f"adversarial sampling needs the training structures' reference energies ({exc}); "
                "give train_energies"
            ) from exc
    energies = np.asarray(train_energies, dtype=float)
    n_train = np.array([len(a) for a in train_structures])
    if energies.shape != (len(train_structures),) or not np.isfinite(energies).all():
        raise ValueError(
            f"train_energies must be {len(train_structures)} finite energies, one per training structure"
        )
    log_z = log_partition(energies, n_train, s.kT)
    minimum_per_atom = float(np.min(energies / n_train))
    starts = list(train_structures) if starts is None else list(starts)
    if not starts:
        raise ValueError("adversarial sampling needs at least one start structure")
    rng = np.random.default_rng(s.seed)
    attempts = s.max_attempts or 5 * s.n_samples
    rounds = attempts // len(starts) + 1
    order = np.concatenate([rng.permutation(len(starts)) for _ in range(rounds)])[:attempts]
    samples: list[AdversarialSample] = []
    rejected: dict[int, str] = {}
    bar = tqdm(total=s.n_samples, desc="adversarial samples", unit="sample", disable=not progress)
    for attempt, start in enumerate(order):
        if len(samples) == s.n_samples:
            break
        atoms0 = starts[int(start)]
        try:
            atoms, value, f, history = ascend(
                adversary, atoms0, log_z, s, np.random.default_rng([s.seed, attempt])
            )
        except FloatingPointError as exc:
            rejected[attempt] = f"start {int(start)}: {exc}"
            continue
        excess = value.energy - len(atoms) * minimum_per_atom
        if s.energy_cutoff is not None and excess > s.energy_cutoff:
            rejected[attempt] = (
                f"start {int(start)}: predicted energy {excess:.4g} eV above the minimum, over the cutoff "
                f"{s.energy_cutoff:.4g} eV"
            )
            bar.set_postfix(rejected=len(rejected))
            continue
        atoms.info.update(
            adversarial_uncertainty=value.uncertainty,
            adversarial_energy=value.energy,
            adversarial_objective=f,
            adversarial_start=int(start),
        )
        sample = AdversarialSample(atoms, value.uncertainty, value.energy, f, int(start), history)
        samples.append(sample)
        if output is not None:
            from ase.io import write

            write(output, atoms, format="extxyz", append=True)
        bar.update(1)
        bar.set_postfix(U=f"{value.uncertainty:.3g}", rejected=len(rejected))
    bar.close()
    return AdversarialResult(samples, rejected, s)
