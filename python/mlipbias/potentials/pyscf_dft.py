"""Kohn-Sham DFT with PySCF as an ASE calculator: energy and forces of molecules (no periodicity).

Seed 002 labels its molecules with a classical force field and its MOF with periodic DFT; for
small molecules, :class:`PySCFDFT` is the DFT oracle that runs here. The default level,
BP86/def2-SVP with Grimme's D3(BJ) dispersion (through ``pyscf-dispersion``, the simple-dftd3
library), costs ~1 s per energy+forces call for NH3 on one core.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

#: Dispersion corrections PySCF accepts as ``mf.disp`` (D3 via simple-dftd3, D4 via dftd4).
DISPERSIONS = ("d3bj", "d3zero", "d3bjm", "d3zerom", "d3op", "d4")


class PySCFDFT(Calculator):
    """Kohn-Sham DFT (PySCF) energy (eV) and forces (eV/A) for a molecule, an ASE calculator.

    Parameters (all keywords):

    * ``xc`` - exchange-correlation functional in PySCF/libxc notation (default ``"bp86"``).
    * ``basis`` - basis set name (default ``"def2-svp"``).
    * ``dispersion`` - one of :data:`DISPERSIONS` or None (default ``"d3bj"``: Grimme D3 with
      Becke-Johnson damping, the parameters of ``xc``).
    * ``charge`` (e), ``spin`` (number of unpaired electrons, 2S; default 0): ``spin > 0`` runs
      unrestricted Kohn-Sham.
    * ``conv_tol`` - SCF energy convergence in Hartree (default 1e-10, forces to ~1e-6 eV/A).
    * ``grid_level`` - PySCF's DFT grid level 0-9 (default 3).
    * ``max_cycle`` - SCF iterations before the call fails (default 100).

    The SCF of each call starts from the density of the previous call (PySCF's
    ``nuc_grad_method().as_scanner()``): along an MD trajectory or a batch of similar
    geometries this saves SCF iterations; converged results do not depend on the start beyond
    ``conv_tol``. Periodic cells are rejected (use PySCF's ``pbc`` module or another oracle).
    An SCF that does not converge raises RuntimeError; :func:`mlipbias.oracles.label` turns it
    into an :class:`~mlipbias.oracles.OracleError` naming the structure.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    default_parameters = {
        "xc": "bp86",
        "basis": "def2-svp",
        "dispersion": "d3bj",
        "charge": 0,
        "spin": 0,
        "conv_tol": 1e-10,
        "grid_level": 3,
        "max_cycle": 100,
    }

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise ValueError(
                f"PySCFDFT: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.default_parameters))}"
            )
        dispersion = kwargs.get("dispersion", self.default_parameters["dispersion"])
        if dispersion is not None and str(dispersion).lower() not in DISPERSIONS:
            raise ValueError(
                f"PySCFDFT: dispersion {dispersion!r} is not one of {', '.join(DISPERSIONS)} or None"
            )
        for key in ("charge", "spin", "grid_level", "max_cycle"):
            if key in kwargs and int(kwargs[key]) != kwargs[key]:
                raise ValueError(f"PySCFDFT: {key} must be an integer, got {kwargs[key]!r}")
        if int(kwargs.get("spin", 0)) < 0:
            raise ValueError(f"PySCFDFT: spin (2S) must be >= 0, got {kwargs['spin']}")
        super().__init__(**kwargs)
        # The scanner survives Calculator.reset(), so the next geometry starts from this density.
        self._scanner = None
        self._scanner_key = None

    def _molecule(self, atoms: Atoms):
        from pyscf import gto

        p = self.parameters
        try:
            return gto.M(
                atom=[
                    (s, tuple(x)) for s, x in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
                ],
                unit="Angstrom",
                basis=p["basis"],
                charge=int(p["charge"]),
                spin=int(p["spin"]),
                verbose=0,
            )
        except RuntimeError as exc:  # PySCF reports an impossible charge/spin this way
            raise ValueError(f"PySCFDFT: cannot build {atoms.get_chemical_formula()}: {exc}") from exc

    def _gradient_scanner(self, mol):
        from pyscf import dft

        p = self.parameters
        # A new composition or setting needs a new scanner; a new geometry reuses it.
        key = (tuple(mol.atom_charges()), mol.nelectron, mol.spin, str(p))
        if self._scanner is None or key != self._scanner_key:
            mf = dft.UKS(mol) if int(p["spin"]) > 0 else dft.RKS(mol)
            mf.xc = p["xc"]
            mf.grids.level = int(p["grid_level"])
            mf.conv_tol = float(p["conv_tol"])
            mf.max_cycle = int(p["max_cycle"])
            if p["dispersion"] is not None:
                mf.disp = str(p["dispersion"]).lower()
            self._scanner = mf.nuc_grad_method().as_scanner()
            self._scanner_key = key
        return self._scanner

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("PySCFDFT computes molecules only; the structure is periodic (pbc set)")
        mol = self._molecule(self.atoms)
        scanner = self._gradient_scanner(mol)
        energy, gradient = scanner(mol)
        if not scanner.base.converged:
            raise RuntimeError(
                f"PySCF SCF did not converge in {scanner.base.max_cycle} cycles "
                f"({self.atoms.get_chemical_formula()}, {self.parameters['xc']}/{self.parameters['basis']})"
            )
        energy_ev = float(energy) * units.Hartree
        self.results["energy"] = energy_ev
        self.results["free_energy"] = energy_ev
        self.results["forces"] = -np.asarray(gradient, dtype=float) * (units.Hartree / units.Bohr)
