"""Tan et al.'s (2023) adversarial sampling as an explorer of the active-learning loop.

The walker ascends p(x) U(x) (Eqs. 15-16, :func:`mlipbias.sampling.adversarial_samples`) from its
start structure, with labelled structures as the Boltzmann reference of Eq. 16: their reference
energies make the denominator of p and the minimum of the energy cutoff. ``reference: training``
(default) takes every structure the generation's model was trained on; ``reference: initial`` only
those of generation 0 (``al_generation = 0``), as Tan et al.'s Eq. 16 sums over "the initial
training data set". Every attempt starts from the walker's structure with its own random initial
displacement (Tan et al. draw the starts among the training structures; the loop's walkers start
from the start structures and from structures selected in earlier generations). Accepted samples
become candidates with the model calculator's calibrated U and U_i, as those of the other
explorers, so selection treats them alike.

``explore.options`` takes ``reference`` and the keys of
:class:`mlipbias.sampling.AdversarialSamplingSettings` except ``seed`` (the walker's seed is used);
units eV and A; defaults Tan et al.'s ammonia settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipbias.dynamics.explorer import STOP_DONE, Exploration, ExplorerSettings, TrainingData, candidate

REFERENCES = ("training", "initial")
NULLABLE = ("energy_cutoff", "max_displacement", "max_attempts")


def option_keys() -> list[str]:
    """The keys of ``explore.options`` for this explorer."""
    from mlipbias.sampling import AdversarialSamplingSettings

    return ["reference"] + [
        f.name for f in dataclasses.fields(AdversarialSamplingSettings) if f.name != "seed"
    ]


def adversarial_settings(options: dict, seed: int = 0, prefix: str = "explore.options"):
    """(reference, the sampler's settings) from ``options``; ValueError naming ``prefix.key`` of a
    bad one."""
    from mlipbias.sampling import AdversarialSamplingSettings

    known = option_keys()
    options = dict(options)
    reference = options.pop("reference", "training")
    if reference not in REFERENCES:
        raise ValueError(
            f"config key {prefix}.reference = {reference!r}: expected one of {', '.join(REFERENCES)}"
        )
    for key, value in options.items():
        if key not in known:
            raise ValueError(
                f"config key {prefix}.{key}: not a setting of explorer adversarial; known: {', '.join(known)}"
            )
        if key == "strain" and not isinstance(value, bool):
            raise ValueError(f"config key {prefix}.strain = {value!r}: expected true or false")
        if value is None and key not in NULLABLE:
            raise ValueError(f"config key {prefix}.{key} = null: expected a number")
        if key != "strain" and isinstance(value, (str, bool)):
            # PyYAML reads 1e-4 (no dot) as a string.
            raise ValueError(f"config key {prefix}.{key} = {value!r}: expected a number (e.g. 1.0e-4)")
    try:
        return reference, AdversarialSamplingSettings(**options, seed=int(seed))
    except (ValueError, TypeError) as error:
        message = str(error).removeprefix("adversarial sampling ")
        if message.split(" ", 1)[0] in options:
            raise ValueError(f"config key {prefix}.{message}") from None
        raise ValueError(f"config key {prefix}: {message}") from None


def model_calculator(model_path: str, uncertainty: str | None, min_distance: float):
    """The calculator giving candidates their U and U_i: MLIPCalculator for ``.mlip`` files (BP-NN,
    GM-NN), PaiNNCalculator for PaiNN ``.pt`` files."""
    if Path(model_path).suffix == ".pt":
        from mlipbias.models.painn import PaiNNCalculator

        return PaiNNCalculator(model_path, uncertainty=uncertainty)
    from mlipbias.calculators import MLIPCalculator

    return MLIPCalculator(
        model_path, uncertainty=uncertainty, atom_uncertainty=True, min_distance=min_distance
    )


def explore_adversarial(
    model_path: str,
    start: Atoms,
    settings: ExplorerSettings,
    seed: int,
    training: TrainingData | None = None,
) -> Exploration:
    """Adversarial samples from ``start`` against the reference ``training`` (module docstring)."""
    from mlipbias.datasets import load_dataset
    from mlipbias.sampling import adversarial_samples

    settings.check("settings")
    reference_kind, sampling = adversarial_settings(settings.options, seed)
    if training is None:
        raise ValueError(
            "explorer adversarial needs the training structures (training=TrainingData(path, selection)): "
            "they are the Boltzmann reference of Tan et al.'s Eq. 16"
        )
    selection = training.selection
    if reference_kind == "initial":
        selection = ",".join(filter(None, [selection, "al_generation=0"]))
    reference = load_dataset(training.path, selection)
    if not reference:
        raise ValueError(f"{training.path}: no labelled structure matches {selection!r}")
    calc = model_calculator(model_path, settings.uncertainty, settings.min_distance)
    if calc.uncertainty is None:
        raise ValueError(f"{model_path}: the model has no uncertainty method to sample adversarially")
    result = adversarial_samples(
        calc.model, reference, starts=[start], method=calc.uncertainty, settings=sampling, progress=False
    )
    candidates, failed = [], []
    for index, sample in enumerate(result.samples):
        atoms = Atoms(
            sample.atoms.get_chemical_symbols(),
            positions=sample.atoms.positions,
            cell=sample.atoms.cell,
            pbc=sample.atoms.pbc,
        )
        try:
            calc.calculate(atoms, ["energy", "forces"])
        except ValueError as error:  # atoms too close or non-finite output: not a candidate
            failed.append(f"sample {index}: {error}")
            continue
        U, U_i = float(calc.results["uncertainty"]), np.asarray(calc.results["atom_uncertainty"])
        candidates.append(candidate(atoms, U, U_i, index))
    attempts = len(result.samples) + len(result.rejected)
    detail = f"{len(candidates)} adversarial samples of {attempts} attempts"
    reasons = list(result.rejected.values()) + failed
    if reasons:
        detail += f" (first rejected: {reasons[0]})"
    peak = max((float(c.arrays["atom_uncertainty"].max()) for c in candidates), default=0.0)
    return Exploration(candidates, STOP_DONE, 0, detail, peak)
