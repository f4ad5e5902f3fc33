"""ASE calculator for mlipbias models, with uncertainties and uncertainty-biased forces and stress.

    from mlipbias.calculators import MLIPCalculator
    atoms.calc = MLIPCalculator("model.mlip", uncertainty="ensemble", tau=0.5, rescale=True)
    atoms.get_forces()                       # biased forces drive MD toward uncertain regions
    atoms.calc.results["uncertainty"]        # U (eV)

Results (eV, Angstrom; stress in eV/A^3 with ASE's sign and Voigt order):

- ``energy``, ``free_energy``: the biased energy ``E - tau_eff U`` (``E`` when tau = 0);
  ``energies``: atomic energies, with the bias energy shared evenly over the atoms.
- ``forces``: ``F + tau_(Z_i) dU/dx_i``; ``stress``: model stress plus the bias stress
  ``-(tau_stress_eff / V) dU/dstrain`` (fully periodic cells only).
- ``uncertainty`` U (eV), ``atom_uncertainty`` U_i (eV/A), ``uncertainty_gradient`` dU/dx (eV/A, when
  a bias is active or the property is asked for), ``bias_energy`` ``-tau_eff U``, ``bias_forces``,
  ``bias_stress``, ``model_energy``, ``model_forces``, ``model_stress`` (unbiased), ``member_energies``,
  ``tau_effective``, ``tau_stress_effective``.

The bias follows ``docs/model_file.md`` "Bias" and the LAMMPS ``pair_style mlip/bias``, so both drive
dynamics identically: with one ``tau`` for every species and no rescaling the biased forces are
conservative (the biased energy is conserved in NVE); ``rescale=True`` applies seed 002 Eq. 8 with
running sums over every call of this calculator (one call per MD step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

BACKENDS = ("auto", "torch", "cpp")
# Methods the C++ inference (cpp/model.hpp) implements.
CPP_METHODS = ("ensemble", "posterior", "distance")


class BiasState:
    """Effective bias strengths with the running-ratio rescaling of seed 002 Eq. 8.

    ``tau_eff = tau * sum_t |F_t| / sum_t |dU/dx_t|`` over the steps so far (norms of 3N-vectors);
    ``tau_stress`` the same with the Frobenius norms of the model virial and of the uncertainty
    virial. Without rescaling the strengths are constant. Mirrors ``mlipbias::BiasState`` of
    ``cpp/model.hpp``.
    """

    def __init__(
        self, tau: float, tau_stress: float, rescale: bool = False, species_tau: np.ndarray | None = None
    ):
        self.tau = float(tau)
        self.tau_stress = float(tau_stress)
        self.rescale = bool(rescale)
        self.species_tau = None if species_tau is None else np.asarray(species_tau, dtype=float)
        self.sums = np.zeros(4)  # |F|, |dU/dx|, |W|, |W_U| summed over steps
        self.steps = 0

    def update(
        self, force_norm: float, gradient_norm: float, virial_norm: float, gradient_virial_norm: float
    ) -> None:
        self.sums += [force_norm, gradient_norm, virial_norm, gradient_virial_norm]
        self.steps += 1

    def _ratio(self, numerator: float, denominator: float) -> float:
        if not self.rescale:
            return 1.0
        return numerator / denominator if denominator > 0 else 0.0

    def tau_effective(self, species: np.ndarray | None = None):
        """The energy strength, or with ``species`` (model element indices) the per-atom force strengths."""
        ratio = self._ratio(self.sums[0], self.sums[1])
        if species is None:
            return self.tau * ratio
        base = self.species_tau[species] if self.species_tau is not None else np.full(len(species), self.tau)
        return base * ratio

    def tau_stress_effective(self) -> float:
        return self.tau_stress * self._ratio(self.sums[2], self.sums[3])


class MLIPCalculator(Calculator):
    """An ASE calculator for a ``.mlip`` model (or an :class:`mlipbias.models.MLIPModel`).

    Args:
        model_or_path: a model file path or a loaded model.
        uncertainty: the uncertainty method (``ensemble``, ``mve``, ``evidential``, ``gmm``,
            ``posterior``, ``distance``), ``"none"``, or None for the model's default (its first
            method, none when it has none).
        backend: ``"torch"``, ``"cpp"`` (the C++ inference of ``mlipbias._core``) or ``"auto"``.
        tau: bias strength for energy and forces (dimensionless; U in eV).
        tau_stress: strength of the bias stress (default: ``tau``).
        rescale: rescale both strengths by seed 002 Eq. 8.
        species_tau: ``{symbol: tau}`` bias-force strength per element (elements not listed keep tau).
        atom_uncertainty: compute U_i at every call.
        device: torch device of the torch backend.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "uncertainty",
        "atom_uncertainty",
        "uncertainty_gradient",
        "bias_energy",
    ]

    def __init__(
        self,
        model_or_path,
        uncertainty: str | None = None,
        backend: str = "auto",
        tau: float = 0.0,
        tau_stress: float | None = None,
        rescale: bool = False,
        species_tau: Mapping[str, float] | None = None,
        atom_uncertainty: bool = True,
        device: str = "cpu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        from mlipbias.models import MLIPModel, load_model

        if isinstance(model_or_path, MLIPModel):
            self.model, self.model_path = model_or_path, None
        elif isinstance(model_or_path, (str, os.PathLike)):
            self.model_path = os.fspath(model_or_path)
            self.model = load_model(self.model_path, device=device)
        else:
            raise ValueError(
                f"model_or_path must be a .mlip path or an MLIPModel, got {type(model_or_path).__name__}"
            )
        if uncertainty is None:
            uncertainty = self.model.default_method
        elif uncertainty == "none":
            uncertainty = None
        elif uncertainty not in self.model.methods:
            available = ", ".join(self.model.methods) or "none"
            raise ValueError(f"uncertainty {uncertainty!r} is not in this model; it has: {available}")
        self.uncertainty = uncertainty
        for name, value in (("tau", tau), ("tau_stress", tau_stress)):
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        tau_stress = tau if tau_stress is None else tau_stress
        if (tau > 0 or tau_stress > 0 or species_tau) and uncertainty is None:
            raise ValueError("a bias (tau, tau_stress or species_tau > 0) needs an uncertainty method")
        species = None
        if species_tau:
            unknown = [el for el in species_tau if el not in self.model.elements]
            if unknown:
                raise ValueError(
                    f"species_tau names element(s) {unknown} that the model does not have "
                    f"({list(self.model.elements)})"
                )
            species = np.array([float(species_tau.get(el, tau)) for el in self.model.elements])
            if not (np.isfinite(species).all() and (species >= 0).all()):
                raise ValueError(f"species_tau values must be finite and >= 0, got {dict(species_tau)}")
        self.bias = BiasState(tau, tau_stress, rescale, species)
        self.want_atom_uncertainty = bool(atom_uncertainty)
        self.backend = _select_backend(backend, self.uncertainty, self.model_path)

    @property
    def bias_active(self) -> bool:
        b = self.bias
        return b.tau > 0 or b.tau_stress > 0 or (b.species_tau is not None and (b.species_tau > 0).any())

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        method = self.uncertainty
        gradient = method is not None and (self.bias_active or "uncertainty_gradient" in properties)
        data = self.model.prepare([atoms], labels=False)
        batch = data.batch([0], self.model.device)
        p = self.model.evaluate(
            batch,
            method,
            forces=True,
            atom_uncertainty=method is not None
            and (self.want_atom_uncertainty or "atom_uncertainty" in properties),
            gradient=gradient,
        )
        periodic = bool(atoms.pbc.all())
        energy, forces, n = float(p.energy[0]), p.forces, len(atoms)
        r = {"model_energy": energy, "model_forces": forces, "member_energies": p.member_energies[:, 0]}
        if periodic:
            r["model_stress"] = p.stress[0]
        bias_energy, bias_forces, bias_stress = 0.0, np.zeros_like(forces), np.zeros(6)
        if method is not None:
            U = float(p.uncertainty[0])
            r["uncertainty"] = U
            if p.atom_uncertainty is not None:
                r["atom_uncertainty"] = p.atom_uncertainty
        if gradient:
            grad, grad_virial = p.uncertainty_gradient, p.uncertainty_virial[0]
            r["uncertainty_gradient"] = grad
            self.bias.update(
                float(np.linalg.norm(forces)),
                float(np.linalg.norm(grad)),
                float(np.linalg.norm(p.virial[0])),
                float(np.linalg.norm(grad_virial)),
            )
            tau = self.bias.tau_effective()
            tau_atoms = self.bias.tau_effective(batch.species.cpu().numpy())
            bias_energy = -tau * U
            bias_forces = tau_atoms[:, None] * grad
            if periodic:
                # W_bias = tau_stress sum r (x) dU/dr; stress = -W / V (ASE sign), symmetrised, Voigt.
                w = self.bias.tau_stress_effective() * grad_virial
                w = 0.5 * (w + w.T)
                bias_stress = (
                    -np.array([w[0, 0], w[1, 1], w[2, 2], w[1, 2], w[0, 2], w[0, 1]]) / atoms.get_volume()
                )
            r["tau_effective"] = tau
            r["tau_stress_effective"] = self.bias.tau_stress_effective()
        r["bias_energy"] = bias_energy
        r["bias_forces"] = bias_forces
        r["energy"] = r["free_energy"] = energy + bias_energy
        r["energies"] = p.atom_energies + bias_energy / n
        r["forces"] = forces + bias_forces
        if periodic:
            r["bias_stress"] = bias_stress
            r["stress"] = p.stress[0] + bias_stress
        self.results = r


def _select_backend(backend: str, method: str | None, path: str | None) -> str:
    """THE dispatch point between the torch model and the C++ inference (``mlipbias._core.Model``).

    The C++ inference (cpp/model.hpp) is written in parallel; until its bindings are wired in here
    every model runs on the torch backend, and ``backend="cpp"`` says why it cannot be used. Wiring
    it: return ``"cpp"`` for a model loaded from ``path`` whose method is in ``CPP_METHODS`` and
    evaluate with ``_core.Evaluator`` / ``_core.BiasState`` in :meth:`MLIPCalculator.calculate`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cpp":
        from mlipbias import _core

        if not (hasattr(_core, "Model") and hasattr(_core, "Evaluator")):
            why = "this build of mlipbias has no C++ model inference (mlipbias._core.Model)"
        elif path is None:
            why = "the C++ inference loads models from a .mlip path, not from an MLIPModel object"
        elif method is not None and method not in CPP_METHODS:
            why = f"the C++ inference implements {', '.join(CPP_METHODS)}, not {method!r}"
        else:
            why = "MLIPCalculator does not drive the C++ Evaluator yet; use backend='torch' or 'auto'"
        raise ValueError(f"backend='cpp' is not available: {why}")
    return "torch"
