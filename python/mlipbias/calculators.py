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

from mlipbias.inference import BiasState, CppModel, virial_to_stress

BACKENDS = ("auto", "torch", "cpp")
# Methods the C++ inference (cpp/model.hpp) implements.
CPP_METHODS = ("ensemble", "posterior", "distance")


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
        self.bias = BiasState(tau, tau_stress, rescale, [] if species is None else list(species))
        self.want_atom_uncertainty = bool(atom_uncertainty)
        self.backend = _select_backend(backend, self.uncertainty, self.model_path)
        self.cpp = CppModel(self.model_path) if self.backend == "cpp" else None

    @property
    def bias_active(self) -> bool:
        s = self.bias.settings
        return s["tau"] > 0 or s["tau_stress"] > 0 or any(t > 0 for t in s["species_tau"])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        method = self.uncertainty
        gradient = method is not None and (self.bias_active or "uncertainty_gradient" in properties)
        atom_u = method is not None and (self.want_atom_uncertainty or "atom_uncertainty" in properties)
        if self.cpp is not None:
            p = self.cpp.evaluate(atoms, method or "none", gradient=gradient, atom_uncertainty=atom_u)
            species = self.cpp.species(atoms)
            energy, atom_energies, virial = p.energy, p.atom_energies, p.virial
            member_energies, U, atom_U = p.member_energies, p.uncertainty, p.atom_uncertainty
            grad, grad_virial = p.uncertainty_gradient, p.uncertainty_virial
        else:
            data = self.model.prepare([atoms], labels=False)
            batch = data.batch([0], self.model.device)
            p = self.model.evaluate(batch, method, forces=True, atom_uncertainty=atom_u, gradient=gradient)
            species = batch.species.cpu().numpy()
            energy, atom_energies, virial = float(p.energy[0]), p.atom_energies, p.virial[0]
            member_energies, atom_U = p.member_energies[:, 0], p.atom_uncertainty
            U = None if method is None else float(p.uncertainty[0])
            grad = p.uncertainty_gradient
            grad_virial = None if p.uncertainty_virial is None else p.uncertainty_virial[0]
        forces, n = p.forces, len(atoms)
        periodic = bool(atoms.pbc.all())
        r = {"model_energy": energy, "model_forces": forces, "member_energies": member_energies}
        if periodic:
            r["model_stress"] = virial_to_stress(virial, atoms.get_volume())
        if U is not None:
            r["uncertainty"] = U
        if atom_U is not None:
            r["atom_uncertainty"] = atom_U
        bias_energy, bias_forces = 0.0, np.zeros_like(forces)
        if gradient:
            r["uncertainty_gradient"] = grad
            # Squared norms, as pair_style mlip/bias records them (Eq. 8 running sums).
            self.bias.update(
                float(np.sum(forces**2)),
                float(np.sum(grad**2)),
                float(np.sum(virial**2)),
                float(np.sum(grad_virial**2)),
            )
            tau = self.bias.tau_effective()
            tau_atoms = np.array([self.bias.tau_effective(int(k)) for k in range(len(self.model.elements))])
            bias_energy = -tau * U
            bias_forces = tau_atoms[species][:, None] * grad
            r["tau_effective"] = tau
            r["tau_stress_effective"] = self.bias.tau_stress_effective()
            if periodic:
                # W_bias = tau_stress sum r (x) dU/dr, symmetrised; stress = -W / V.
                w = self.bias.tau_stress_effective() * grad_virial
                r["bias_stress"] = virial_to_stress(0.5 * (w + w.T), atoms.get_volume())
        elif periodic:
            r["bias_stress"] = np.zeros(6)
        r["bias_energy"] = bias_energy
        r["bias_forces"] = bias_forces
        r["energy"] = r["free_energy"] = energy + bias_energy
        r["energies"] = atom_energies + bias_energy / n
        r["forces"] = forces + bias_forces
        if periodic:
            r["stress"] = r["model_stress"] + r["bias_stress"]
        self.results = r


def _select_backend(backend: str, method: str | None, path: str | None) -> str:
    """Choose between the torch model and the C++ inference (``mlipbias.inference.CppModel``).

    ``auto`` takes C++ (the code of ``pair_style mlip/bias``, no torch in the loop) for a model
    loaded from a file whose method C++ implements, torch otherwise; ``cpp`` says why it cannot
    be used rather than falling back.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    why = None
    if path is None:
        why = "the C++ inference loads models from a .mlip path, not from an MLIPModel object"
    elif method is not None and method not in CPP_METHODS:
        why = f"the C++ inference implements {', '.join(CPP_METHODS)}, not {method!r}"
    if backend == "cpp" and why is not None:
        raise ValueError(f"backend='cpp' is not available: {why}")
    if backend == "torch" or why is not None:
        return "torch"
    return "cpp"
