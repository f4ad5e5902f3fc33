"""A trained model: the network, its uncertainty methods and their calibration, and the ``.mlip`` file.

:class:`MLIPModel` evaluates energies, forces, stresses, the uncertainty U of a method, the per-atom
uncertainties U_i and the gradient of U with respect to positions and strain, for batches of
structures. Derivatives with respect to positions go through the symmetry-function vector-Jacobian
product of the C++ core (one call for all members and the uncertainty), so no descriptor second
derivatives are ever needed.

Uncertainties are standard deviations, ``U`` in eV (total energy) and ``U_i`` in eV/A (force
component), multiplied by the conformal factors ``c_E``, ``c_F`` of the model file (1 when absent);
see ``docs/model_file.md`` "Uncertainties" and :mod:`mlipbias.uq`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from mlipbias.descriptors import atom_forces, pair_gradients, virial
from mlipbias.models.data import AtomsData, Batch, structure_sum, voigt_stress
from mlipbias.models.gmnn import GMNN
from mlipbias.models.network import BPNN
from mlipbias.uq import ensemble, evidential, mve
from mlipbias.uq.gmm import GMMUncertainty
from mlipbias.uq.gradient_features import GradientFeatures

METHODS = ("ensemble", "mve", "evidential", "gmm", "posterior", "distance")


@contextmanager
def one_torch_thread():
    """Run torch on one intra-op thread, then restore the previous count.

    BP-NN layers are a few tens of neurons wide: extra threads only add synchronisation (training
    on 2 cores took 2.7x more CPU time and wall time with two threads than with one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


GRADIENT_METHODS = ("posterior", "distance")


@dataclass
class Predictions:
    """Results for a batch of structures (numpy, atoms concatenated in structure order).

    ``energy`` (S,) eV, ensemble mean; ``member_energies`` (M, S); ``atom_energies`` (n,);
    ``forces`` (n, 3) eV/A; ``member_forces`` (M, n, 3); ``virial`` (S, 3, 3) eV, ``W = -sum r_ij (x)
    dE/dr_ij``; ``stress`` (S, 6) eV/A^3, ASE Voigt order and sign (NaN for non-periodic structures);
    ``uncertainty`` (S,) U in eV; ``atom_uncertainty`` (n,) U_i in eV/A; ``uncertainty_gradient``
    (n, 3) dU/dx in eV/A; ``uncertainty_virial`` (S, 3, 3) ``+sum r_ij (x) dU/dr_ij`` in eV (the
    virial of the potential -U); ``score`` (S,) and ``atom_score`` (n,) the raw GMM scores. Entries
    that were not asked for are None.
    """

    energy: np.ndarray
    member_energies: np.ndarray
    atom_energies: np.ndarray
    n_atoms: np.ndarray
    forces: np.ndarray | None = None
    member_forces: np.ndarray | None = None
    virial: np.ndarray | None = None
    stress: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    atom_uncertainty: np.ndarray | None = None
    uncertainty_gradient: np.ndarray | None = None
    uncertainty_virial: np.ndarray | None = None
    score: np.ndarray | None = None
    atom_score: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: Sequence[Predictions]) -> Predictions:
        """One Predictions from batches in order (member axes are the first axis of member_*)."""
        values = {}
        for name in cls.__dataclass_fields__:
            arrays = [getattr(p, name) for p in parts]
            if arrays[0] is None:
                values[name] = None
            else:
                axis = 1 if name.startswith("member_") else 0
                values[name] = np.concatenate(arrays, axis=axis)
        return cls(**values)


@dataclass
class MLIPModel:
    """A BP-NN or GM-NN with its uncertainty methods and calibration (what a ``.mlip`` file holds).

    ``methods`` lists the uncertainty methods the model supports (``uq/methods``);
    ``calibration`` holds the ``calibration/...`` records (conformal factors, alpha and the
    ``[a, b, min_variance]`` variance recalibrations).
    """

    network: BPNN | GMNN
    methods: tuple[str, ...] = ()
    gmm: GMMUncertainty | None = None
    gradient: GradientFeatures | None = None
    calibration: dict[str, np.ndarray] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        self.methods = tuple(self.methods)
        for method in self.methods:
            self._check_supported(method)

    # ---------------------------------------------------------------- properties

    @property
    def elements(self) -> tuple[str, ...]:
        return self.network.elements

    @property
    def descriptor(self):
        return self.network.descriptor

    @property
    def cutoff(self) -> float:
        return self.network.descriptor.cutoff

    @property
    def default_method(self) -> str | None:
        """The first method of ``methods`` (training lists the ensemble first), or None."""
        return self.methods[0] if self.methods else None

    def _check_supported(self, method: str) -> None:
        net = self.network
        if method not in METHODS:
            raise ValueError(f"unknown uncertainty method {method!r}; known: {', '.join(METHODS)}")
        problem = None
        if method == "ensemble" and net.n_members < 2:
            problem = f"the model has {net.n_members} member (an ensemble needs at least 2)"
        elif method in ("mve", "evidential") and net.head != method:
            problem = f"the network has no {method} head (head: {net.head})"
        elif method == "gmm" and self.gmm is None:
            problem = "the model has no Gaussian mixture (uq/gmm records)"
        elif method == "gmm" and not all(
            f"calibration/nll/{q}/gmm" in self.calibration for q in ("energy", "force")
        ):
            problem = (
                "the GMM score needs the records calibration/nll/energy/gmm and calibration/nll/force/gmm"
            )
        elif method in GRADIENT_METHODS and (self.gradient is None or self.gradient.precision_energy is None):
            problem = "the model has no fitted gradient features (uq/gradient records)"
        if problem:
            raise ValueError(f"uncertainty {method!r} is not available: {problem}")

    def supports(self, method: str) -> bool:
        return method in self.methods

    def factor(self, quantity: str, method: str) -> float:
        """Conformal factor c_E (``quantity="energy"``) or c_F (``"force"``) of a method, 1 when absent."""
        return float(np.ravel(self.calibration.get(f"calibration/{quantity}/{method}", [1.0]))[0])

    def _recalibration(self, quantity: str, method: str) -> tuple[float, float, float]:
        a, b, min_variance = np.ravel(self.calibration[f"calibration/nll/{quantity}/{method}"])
        return float(a), float(b), float(min_variance)

    def to(self, device) -> MLIPModel:
        self.network.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.network.energy_scale.device

    # ---------------------------------------------------------------- data

    def prepare(
        self,
        structures: Sequence[Atoms],
        *,
        labels: bool = True,
        progress: bool | None = None,
        neighbours: bool = True,
    ) -> AtomsData:
        """Descriptors (and labels) of structures for :meth:`predict`."""
        return AtomsData(
            structures, self.descriptor, keep_neighbours=neighbours, labels=labels, progress=progress
        )

    # ---------------------------------------------------------------- evaluation

    def evaluate(
        self,
        batch: Batch,
        method: str | None = None,
        *,
        forces: bool = True,
        atom_uncertainty: bool = False,
        gradient: bool = False,
    ) -> Predictions:
        """Energies, forces, stresses and the uncertainty of ``method`` for one batch.

        ``atom_uncertainty`` adds U_i; ``gradient`` adds dU/dx and the uncertainty virial (needs
        ``method``). Forces, stresses and gradients need the batch's neighbour pairs.
        """
        if method is not None and method not in self.methods:
            self._check_supported(method)
            raise ValueError(f"uncertainty {method!r} is not in this model's methods {list(self.methods)}")
        if gradient and method is None:
            raise ValueError("an uncertainty gradient needs an uncertainty method")
        if atom_uncertainty and method == "ensemble":
            forces = True
        if (forces or gradient) and batch.neighbours is None:
            raise ValueError("forces and uncertainty gradients need the neighbour pairs of the batch")
        net = self.network
        M, S, n = net.n_members, batch.n_structures, batch.G.shape[0]
        need_grad = forces or gradient
        with torch.set_grad_enabled(need_grad):
            sketch = self.gradient.sketch(batch.G) if method in GRADIENT_METHODS else None
            if isinstance(net, GMNN):  # descriptors from the pair vectors: differentiate those
                G = net.pair_vectors(batch, need_grad)
                out = net(G, batch, hidden=method == "gmm", sketch=sketch)
            else:
                G = (
                    batch.G.detach().unsqueeze(0).repeat(M, 1, 1).requires_grad_(True)
                    if need_grad
                    else batch.G
                )
                out = net(G, batch.species, hidden=method == "gmm", sketch=sketch)
            member_energies = structure_sum(out.energy, batch.structure, S)
            U, U_i, score, atom_score = self._uncertainty(
                method, out, batch, member_energies, atom_uncertainty
            )
            rhs = []
            if forces:
                rhs.append(torch.autograd.grad(member_energies.sum(), G, retain_graph=gradient)[0])
            if gradient:
                rhs.append(torch.autograd.grad(U.sum(), G)[0].sum(dim=0, keepdim=True))
        result = Predictions(
            energy=_np(member_energies.mean(dim=0)),
            member_energies=_np(member_energies),
            atom_energies=_np(out.energy.mean(dim=0)),
            n_atoms=_np(batch.n_atoms).astype(np.int64),
        )
        if U is not None:
            result.uncertainty = _np(U)
        if U_i is not None:
            result.atom_uncertainty = _np(U_i)
        if score is not None:
            result.score, result.atom_score = _np(score), _np(atom_score)
        if not rhs:
            return result
        nb = batch.neighbours
        grads = torch.cat(rhs).detach()
        if not isinstance(net, GMNN):
            grads = pair_gradients(grads, net.descriptor, nb)
        pair_structure = torch.as_tensor(nb.pair_structure, device=grads.device)
        all_forces = atom_forces(grads, nb.i, nb.j, n)  # -d(.)/dx of every right-hand side
        all_virials = virial(grads, nb.D, pair_structure, S)
        if forces:
            member_forces = all_forces[:M]
            result.forces = _np(member_forces.mean(dim=0))
            result.member_forces = _np(member_forces)
            result.virial = _np(all_virials[:M].mean(dim=0))
            stress = _np(voigt_stress(all_virials[:M].mean(dim=0), batch.volume))
            stress[_np(batch.volume) <= 0] = np.nan
            result.stress = stress
            if atom_uncertainty and method == "ensemble":
                result.atom_uncertainty = _np(
                    self.factor("force", method) * ensemble.atom_uncertainty(member_forces)
                )
        if gradient:
            result.uncertainty_gradient = -_np(all_forces[-1])
            result.uncertainty_virial = -_np(all_virials[-1])
        return result

    def _uncertainty(self, method, out, batch: Batch, member_energies, atom_uncertainty: bool):
        """(U, U_i, score, atom_score) as tensors, calibrated; U_i of the ensemble comes later."""
        if method is None:
            return None, None, None, None
        net = self.network
        S = batch.n_structures
        c_E, c_F = self.factor("energy", method), self.factor("force", method)
        U = U_i = score = atom_score = None
        if method == "ensemble":
            U = ensemble.energy_uncertainty(member_energies)
        elif method in ("mve", "evidential"):
            module = mve if method == "mve" else evidential
            raw, scale = out.head[0], net.head_scale[0]
            U = module.energy_uncertainty(raw, scale, batch.structure, S)
            if atom_uncertainty:
                U_i = module.atom_uncertainty(raw, scale)
        elif method == "gmm":
            atom_score = self.gmm.atom_scores(out.hidden[0], batch.species)
            score = structure_sum(atom_score, batch.structure, S) / batch.n_atoms
            U = _recalibrated(score, *self._recalibration("energy", method))
            if atom_uncertainty:
                U_i = _recalibrated(atom_score, *self._recalibration("force", method))
        else:
            phi = out.features
            Phi = structure_sum(phi.T, batch.structure, S).T
            if method == "posterior":
                U = self.gradient.posterior_energy(Phi)
                if atom_uncertainty:
                    U_i = self.gradient.posterior_atom(phi)
            else:
                U = self.gradient.distance_energy(Phi, batch.n_atoms)
                if atom_uncertainty:
                    U_i = self.gradient.distance_atom(phi)
        U = c_E * U
        if U_i is not None:
            U_i = c_F * U_i
        if score is not None:
            score, atom_score = score.detach(), atom_score.detach()
        return U, U_i, score, atom_score

    def predict(
        self,
        data: AtomsData,
        method: str | None = None,
        *,
        forces: bool = True,
        atom_uncertainty: bool = False,
        gradient: bool = False,
        batch_size: int = 16,
        indices: Sequence[int] | None = None,
        progress: bool = False,
    ) -> Predictions:
        """:meth:`evaluate` over prepared data (all structures, or ``indices``), in batches."""
        from tqdm import tqdm

        need_pairs = forces or gradient or (atom_uncertainty and method == "ensemble")
        parts = []
        groups = data.batches(batch_size, indices)
        with one_torch_thread():
            for group in tqdm(groups, desc="evaluating", disable=None if progress else True, unit="batch"):
                batch = data.batch(group, self.device, neighbours=need_pairs)
                parts.append(
                    self.evaluate(
                        batch, method, forces=forces, atom_uncertainty=atom_uncertainty, gradient=gradient
                    )
                )
        return Predictions.concatenate(parts)

    # ---------------------------------------------------------------- records

    def to_records(self) -> dict[str, np.ndarray | str]:
        from mlipbias import __version__

        records: dict[str, np.ndarray | str] = {
            "meta/format": "mlipbias-model",
            "meta/mlipbias_version": __version__,
            "meta/units": "eV Angstrom",
            "meta/description": self.description,
        }
        records.update(self.network.to_records())
        records["uq/methods"] = " ".join(self.methods)
        if self.gmm is not None:
            records.update(self.gmm.to_records())
        if self.gradient is not None:
            records.update(self.gradient.to_records())
        records.update(self.calibration)
        return records

    @classmethod
    def from_records(cls, records: Mapping) -> MLIPModel:
        from mlipbias.modelfile import validate_model_records

        validate_model_records(records)
        kind = str(records.get("model/kind", "bpnn"))
        network = GMNN.from_records(records) if kind == GMNN.kind else BPNN.from_records(records)
        methods = tuple(str(records.get("uq/methods", "")).split())
        gmm = GMMUncertainty.from_records(records, network.elements) if "gmm" in methods else None
        gradient = None
        if any(name.startswith("uq/gradient/") for name in records):
            gradient = GradientFeatures.from_records(records, network.elements, network.n_layers)
        calibration = {
            k: np.asarray(v, dtype=float) for k, v in records.items() if k.startswith("calibration/")
        }
        return cls(network, methods, gmm, gradient, calibration, str(records.get("meta/description", "")))


def save_model(model: MLIPModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to a ``.mlip`` file (schema-checked, atomic)."""
    from mlipbias.modelfile import validate_model_records, write_model_file

    records = model.to_records()
    validate_model_records(records)
    return write_model_file(path, records)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> MLIPModel:
    """Read a ``.mlip`` file; errors name the file and the problem."""
    from mlipbias.modelfile import read_model_file

    records = read_model_file(path)
    try:
        model = MLIPModel.from_records(records)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    model.network.eval()
    return model.to(device)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _recalibrated(score: torch.Tensor, a: float, b: float, min_variance: float) -> torch.Tensor:
    """sqrt(max(a s + b, min_variance)) (Tan et al. 2023, Eq. 13)."""
    return torch.sqrt(torch.clamp(a * score + b, min=min_variance))
