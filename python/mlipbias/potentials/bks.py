"""The BKS potential for silica as an ASE calculator, on the C++ core (and CUDA on device arrays).

See :class:`BKS` for the functional form, the parameters and the references.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import atomic_numbers
from ase.stress import full_3x3_to_voigt_6_stress

from mlipbias import _core
from mlipbias.neighbors import neighbor_list

#: e^2 / (4 pi eps0) in eV A as LAMMPS ``units metal`` defines it (``qqr2e``); the CODATA value
#: is 14.3996454784, 3e-8 away, so the default follows LAMMPS to keep the two comparable.
LAMMPS_METAL_COULOMB_CONSTANT = 14.399645

#: BKS 1990 charges (e).
BKS_CHARGES: dict[str, float] = {"Si": 2.4, "O": -1.2}

#: Pair parameters: A (eV), rho (A), C (eV A^6) of BKS 1990 and the wall D (eV A^24) of
#: Carré et al. 2016. Si-Si has no Buckingham term in BKS, only Coulomb and the wall.
BKS_PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("O", "Si"): {"A": 18003.7572, "rho": 1.0 / 4.87318, "C": 133.5381, "D": 29.0},
    ("O", "O"): {"A": 1388.7730, "rho": 1.0 / 2.76000, "C": 175.0000, "D": 113.0},
    ("Si", "Si"): {"A": 0.0, "rho": 1.0, "C": 0.0, "D": 3423200.0},
}

_PAIR_KEYS = ("A", "rho", "C", "D")
_EMPTY_PAIR = {"A": 0.0, "rho": 1.0, "C": 0.0, "D": 0.0}


def _pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half pair list within ``cutoff``: i, j and D = x_j - x_i + S.cell, each pair once."""
    i, j, D = neighbor_list("ijD", atoms, cutoff, half=True)
    return i, j, np.ascontiguousarray(D)


def _pair_key(key: Any) -> tuple[str, str]:
    if isinstance(key, str):
        parts = key.split("-")
    else:
        parts = list(key)
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"BKS: pair key {key!r} must be 'El1-El2' or a pair of element symbols")
    return tuple(sorted(parts))  # type: ignore[return-value]


class BKS(Calculator):
    r"""BKS silica potential (eV, A) as an ASE calculator, evaluated by the mlipbias C++ core.

    Functional form. For atoms of elements a, b at distance r,

    .. math::

        U_{ab}(r) = \underbrace{A_{ab} e^{-r/\rho_{ab}} - \frac{C_{ab}}{r^6} + \frac{D_{ab}}{r^{24}}
                    - (\ldots)|_{r_s}}_{r < r_s}
                  + \underbrace{k q_a q_b \left[\frac{\operatorname{erfc}(\alpha r)}{r}
                    - e_\mathrm{shift} - f_\mathrm{shift}\, r\right]}_{r < r_c}

    with :math:`f_\mathrm{shift} = -\operatorname{erfc}(\alpha r_c)/r_c^2 - 2\alpha/\sqrt{\pi}\,
    e^{-\alpha^2 r_c^2}/r_c` and :math:`e_\mathrm{shift} = \operatorname{erfc}(\alpha r_c)/r_c
    - f_\mathrm{shift} r_c`, plus a constant self energy per atom
    :math:`-(e_\mathrm{shift}/2 + \alpha/\sqrt\pi)\, k q_a^2`. The total energy is the sum over
    pairs (each once, periodic images included) and atoms.

    * Short range: the Buckingham terms of BKS 1990 [1]_ and a wall D/r^24 against the collapse
      of the Buckingham form at small r, with the D values of Carré et al. 2016 [2]_ (they also
      ship, in kcal/mol, with the BKS of jax-md used by Cubuk & Schoenholz [4]_). Cut at
      ``cutoff_short`` with the energy shifted to zero there (``shift_short``), like LAMMPS
      ``pair_modify shift yes``; the force jumps by ~6e-3 eV/A at r_s (Si-O, O-O).
    * Coulomb: damped shifted force (DSF) [3]_ exactly as LAMMPS ``pair_style coul/dsf``
      defines it, self energy included. ``erfc="lammps"`` evaluates erfc(alpha r) with the
      Abramowitz-Stegun polynomial that LAMMPS uses (|error| < 1.5e-7, so forces differ from
      the gradient of the energy by ~1e-6 relative, and a pair's energy is up to 1e-6 eV off
      zero at r_c);
      ``erfc="exact"`` uses the exact erfc, making the forces the exact gradient.
    * The wall leaves O-O a spurious local minimum at 1.08 A (-7.5 eV) behind a barrier at
      1.44 A, 12 eV above an O-O pair at 2.6 A (isolated pair, default parameters), which no
      physical silica reaches; ``min_distance`` refuses such geometries.

    Defaults (BKS 1990, with D from [2]_):

    =====  ============  ==================  ===============  ==============
    pair   A (eV)        rho (A)             C (eV A^6)       D (eV A^24)
    =====  ============  ==================  ===============  ==============
    Si-O   18003.7572    1/4.87318           133.5381         29
    O-O    1388.7730     1/2.76000           175.0000         113
    Si-Si  0             --                  0                3423200
    =====  ============  ==================  ===============  ==============

    q_Si = 2.4 e, q_O = -1.2 e, k = 14.399645 eV A (LAMMPS ``units metal``), r_s = 5.5 A,
    alpha = 0.2 1/A, r_c = 10 A.

    Parameters
    ----------
    charges:
        Charges (e) by element, merged into the defaults (a new element adds a type).
    pairs:
        Pair parameters by ``"El1-El2"`` (or a tuple), each a dict with any of A (eV), rho (A),
        C (eV A^6), D (eV A^24), merged into the defaults; unspecified pairs of new elements have
        only Coulomb.
    cutoff_short, cutoff_coulomb:
        r_s and r_c (A).
    alpha:
        DSF damping (1/A).
    shift_short:
        Shift the short-range energy to zero at r_s.
    erfc:
        ``"lammps"`` (default, identical to LAMMPS) or ``"exact"``.
    coulomb_constant:
        k = e^2/(4 pi eps0) in eV A.
    min_distance:
        Refuse configurations with two atoms closer than this (A); 0 disables the check. The
        default 1.0 A is far below any Si-O bond in silica (1.5-1.8 A, stishovite included).

    Results: ``energy`` = ``free_energy`` (eV), ``energies`` (per atom, each pair split equally,
    as LAMMPS ``compute pe/atom``), ``forces`` (eV/A) and ``stress`` (eV/A^3, ASE sign and Voigt
    order, for cells with three lattice vectors).

    References
    ----------
    .. [1] B. W. H. van Beest, G. J. Kramer, R. A. van Santen, "Force fields for silicas and
       aluminophosphates based on ab initio calculations", Phys. Rev. Lett. 64, 1955 (1990).
    .. [2] A. Carré, S. Ispas, J. Horbach, W. Kob, "Developing empirical potentials from ab
       initio simulations: the case of amorphous silica", Comput. Mater. Sci. 124, 323 (2016).
    .. [3] C. J. Fennell, J. D. Gezelter, "Is the Ewald summation still necessary? Pairwise
       alternatives to the accepted standard for long-range electrostatics", J. Chem. Phys. 124,
       234104 (2006).
    .. [4] E. D. Cubuk, S. S. Schoenholz, "Adversarial forces of physical models" (2020); jax-md
       ``energy.bks_silica_pair``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters = {
        "charges": None,
        "pairs": None,
        "cutoff_short": 5.5,
        "cutoff_coulomb": 10.0,
        "alpha": 0.2,
        "shift_short": True,
        "erfc": "lammps",
        "coulomb_constant": LAMMPS_METAL_COULOMB_CONSTANT,
        "min_distance": 1.0,
    }

    def __init__(
        self,
        *,
        charges: Mapping[str, float] | None = None,
        pairs: Mapping[Any, Mapping[str, float]] | None = None,
        cutoff_short: float = 5.5,
        cutoff_coulomb: float = 10.0,
        alpha: float = 0.2,
        shift_short: bool = True,
        erfc: str = "lammps",
        coulomb_constant: float = LAMMPS_METAL_COULOMB_CONSTANT,
        min_distance: float = 1.0,
        **kwargs,
    ):
        super().__init__(
            charges=charges,
            pairs=pairs,
            cutoff_short=cutoff_short,
            cutoff_coulomb=cutoff_coulomb,
            alpha=alpha,
            shift_short=shift_short,
            erfc=erfc,
            coulomb_constant=coulomb_constant,
            min_distance=min_distance,
            **kwargs,
        )

    # ------------------------------------------------------------------ parameters
    def set(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise ValueError(f"BKS: unknown parameter(s) {unknown}; known: {sorted(self.default_parameters)}")
        changed = super().set(**kwargs)
        self._build()
        if changed:
            self.reset()  # results of the old parameters must not be served
        return changed

    def _build(self) -> None:
        p = self.parameters
        charges = dict(BKS_CHARGES)
        for element, q in (p["charges"] or {}).items():
            if element not in atomic_numbers:
                raise ValueError(f"BKS: charges has {element!r}, which is not an element symbol")
            charges[element] = float(q)
        elements = list(charges)
        pairs = {key: dict(value) for key, value in BKS_PAIRS.items()}
        for key, values in (p["pairs"] or {}).items():
            a, b = _pair_key(key)
            for element in (a, b):
                if element not in charges:
                    raise ValueError(
                        f"BKS: pair {a}-{b} names {element}, which has no charge; add it to charges"
                    )
            bad = sorted(set(values) - set(_PAIR_KEYS))
            if bad:
                raise ValueError(
                    f"BKS: pair {a}-{b} has unknown parameter(s) {bad}; known: {list(_PAIR_KEYS)}"
                )
            pairs.setdefault((a, b), dict(_EMPTY_PAIR)).update({k: float(v) for k, v in values.items()})
        n = len(elements)
        arrays = {k: np.zeros((n, n)) for k in _PAIR_KEYS}
        for a, ea in enumerate(elements):
            for b, eb in enumerate(elements):
                values = pairs.get(tuple(sorted((ea, eb))), _EMPTY_PAIR)
                for k in _PAIR_KEYS:
                    arrays[k][a, b] = values[k]
        min_distance = p["min_distance"]
        if not (math.isfinite(min_distance) and min_distance >= 0):
            raise ValueError(f"BKS: min_distance = {min_distance} A must be >= 0")
        self._table = _core.bks_table(
            elements,
            [charges[e] for e in elements],
            arrays["A"],
            arrays["rho"],
            arrays["C"],
            arrays["D"],
            float(p["cutoff_short"]),
            float(p["cutoff_coulomb"]),
            float(p["alpha"]),
            float(p["coulomb_constant"]),
            bool(p["shift_short"]),
            str(p["erfc"]),
        )
        self._elements = tuple(elements)
        self._charges = charges
        self._pair_arrays = arrays
        self._type_of_number = {atomic_numbers[e]: t for t, e in enumerate(elements)}

    @property
    def elements(self) -> tuple[str, ...]:
        """Element of each type, in type order (LAMMPS type = index + 1)."""
        return self._elements

    @property
    def lammps_type_map(self) -> dict[str, int]:
        """LAMMPS atom type of each element as used by :meth:`lammps_commands`: {"Si": 1, "O": 2}."""
        return {e: t + 1 for t, e in enumerate(self._elements)}

    @property
    def cutoff(self) -> float:
        """Largest interaction range (A): the pair list must hold every pair closer than this."""
        return max(float(self.parameters["cutoff_short"]), float(self.parameters["cutoff_coulomb"]))

    def types_of(self, atoms: Atoms) -> np.ndarray:
        """Type index (0-based, int64) of every atom; ValueError naming any element BKS lacks."""
        numbers = atoms.numbers
        types = np.fromiter((self._type_of_number.get(int(z), -1) for z in numbers), np.int64, len(numbers))
        unknown = np.flatnonzero(types < 0)
        if unknown.size:
            symbols = sorted({atoms[k].symbol for k in unknown})
            shown = ", ".join(str(k) for k in unknown[:10]) + (", ..." if unknown.size > 10 else "")
            raise ValueError(
                f"BKS has parameters for {', '.join(self._elements)}; the atoms include {', '.join(symbols)} "
                f"(atom indices {shown}). Pass charges= and pairs= to add an element."
            )
        return types

    # ------------------------------------------------------------------ evaluation
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        types = self.types_of(atoms)
        _check_finite(atoms)
        i, j, D = _pairs(atoms, self.cutoff)
        out = _core.bks_compute(self._table, types, i, j, D)
        symbols = atoms.get_chemical_symbols()
        self._check_closest(out["closest_pair"], out["closest_distance"], i, j, symbols.__getitem__)
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "energies": out["energies"],
            "forces": out["forces"],
        }
        if atoms.cell.rank == 3:
            self.results["stress"] = full_3x3_to_voigt_6_stress(-out["virial"] / atoms.get_volume())
        elif "stress" in properties:
            raise PropertyNotImplementedError(
                "BKS: stress needs a cell with three non-zero lattice vectors; this cell has rank "
                f"{atoms.cell.rank}"
            )

    def evaluate_pairs(self, types, i, j, D, *, n_atoms: int | None = None) -> dict:
        """BKS from a prebuilt half pair list, on numpy arrays (C++) or torch tensors (CUDA or CPU).

        types: (n,) type indices from :meth:`types_of`; i, j: (m,) atom indices, each unordered pair
        once; D: (m, 3) r_ij = x_j - x_i + S.cell (A). Torch CUDA tensors run the CUDA kernels on
        their device, on the current stream, and give CUDA tensors back; anything else runs on the
        CPU. Returns a dict of energy (eV, 0-d), energies (n,), forces (n, 3) (eV/A) and virial (3, 3)
        W = sum r_ij (x) f_j (eV; stress = -W / V). ``n_atoms`` defaults to len(types). Raises
        ValueError for out-of-range indices and for pairs closer than ``min_distance``.
        """
        if type(D).__module__.startswith("torch"):
            return self._evaluate_torch(types, i, j, D, n_atoms)
        types = np.asarray(types, dtype=np.int64)
        if n_atoms is not None and n_atoms != len(types):
            raise ValueError(f"BKS: n_atoms = {n_atoms} but types has {len(types)} entries")
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        D = np.asarray(D, dtype=np.float64)
        if not np.isfinite(D).all():
            raise ValueError(
                f"BKS: D has non-finite entries (pair {int(np.flatnonzero(~np.isfinite(D))[0] // 3)})"
            )
        out = _core.bks_compute(self._table, types, i, j, D)
        self._check_closest(
            out["closest_pair"], out["closest_distance"], i, j, lambda a: self._elements[types[a]]
        )
        return {k: out[k] for k in ("energy", "energies", "forces", "virial")}

    def _evaluate_torch(self, types, i, j, D, n_atoms):
        import torch

        if not D.is_cuda:
            arrays = (t.detach().cpu().numpy() for t in (types, i, j, D))
            out = self.evaluate_pairs(*arrays, n_atoms=n_atoms)
            return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in out.items()}
        device = D.device
        if any(not (t.is_cuda and t.device == device) for t in (types, i, j)):
            raise ValueError(f"BKS: types, i, j and D must all be on {device}")
        types = types.to(torch.int64).contiguous()
        i = i.to(torch.int64).contiguous()
        j = j.to(torch.int64).contiguous()
        D = D.detach().to(torch.float64).contiguous()
        n = int(types.shape[0]) if n_atoms is None else int(n_atoms)
        m = int(i.shape[0])
        if types.ndim != 1 or types.shape[0] != n:
            raise ValueError(f"BKS: types must have shape ({n},), got {tuple(types.shape)}")
        if i.shape != (m,) or j.shape != (m,) or D.shape != (m, 3):
            raise ValueError(
                "BKS: i, j must have shape (m,) and D (m, 3); got "
                f"{tuple(i.shape)}, {tuple(j.shape)}, {tuple(D.shape)}"
            )
        if n and (int(types.min()) < 0 or int(types.max()) >= len(self._elements)):
            raise ValueError(f"BKS: type indices must lie in 0..{len(self._elements) - 1}")
        if m and (min(int(i.min()), int(j.min())) < 0 or max(int(i.max()), int(j.max())) >= n):
            raise ValueError(f"BKS: atom indices in i, j must lie in 0..{n - 1}")
        if m:
            if not bool(torch.isfinite(D).all()):
                raise ValueError("BKS: D has non-finite entries")
            distances = torch.linalg.vector_norm(D, dim=1)
            k = int(torch.argmin(distances))
            self._check_closest(k, float(distances[k]), i, j, lambda a: self._elements[int(types[a])])
        energies = torch.zeros(n, dtype=torch.float64, device=device)
        forces = torch.zeros((n, 3), dtype=torch.float64, device=device)
        energy = torch.zeros(1, dtype=torch.float64, device=device)
        virial = torch.zeros(9, dtype=torch.float64, device=device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = torch.cuda.current_stream(device).cuda_stream
        _core.bks_compute_cuda(
            self._table,
            index,
            stream,
            n,
            types.data_ptr(),
            m,
            i.data_ptr(),
            j.data_ptr(),
            D.data_ptr(),
            energies.data_ptr(),
            forces.data_ptr(),
            energy.data_ptr(),
            virial.data_ptr(),
        )
        return {"energy": energy[0], "energies": energies, "forces": forces, "virial": virial.view(3, 3)}

    def _check_closest(self, k: int, distance: float, i, j, element_of) -> None:
        """Refuse the closest pair (index k into i, j; -1 for none) if closer than min_distance.
        element_of(atom) names an atom's element; it and i, j are only read on refusal."""
        limit = float(self.parameters["min_distance"])
        if k < 0 or not distance < limit:
            return
        a, b = int(i[k]), int(j[k])
        who = (
            f"atom {a} ({element_of(a)}) and its own periodic image"
            if a == b
            else f"atoms {a} ({element_of(a)}) and {b} ({element_of(b)})"
        )
        raise ValueError(
            f"BKS: {who} are {distance:.4g} A apart, closer than min_distance = {limit:g} A "
            "(BKS is unphysical there; pass min_distance=0 to evaluate anyway)"
        )

    # ------------------------------------------------------------------ LAMMPS
    def lammps_commands(self, *, charges: bool = True) -> list[str]:
        """LAMMPS commands (``units metal``, ``atom_style charge``) for the same potential.

        ``pair_style hybrid/overlay buck mie/cut coul/dsf`` with ``pair_modify shift yes``: buck
        carries A exp(-r/rho), mie/cut (exponents 24, 6) carries D/r^24 - C/r^6 exactly, and
        ``coul/dsf`` the Coulomb part with its self energy. Types follow :attr:`lammps_type_map`
        (1 = Si, 2 = O by default). With ``charges`` the list ends with ``set type T charge q``
        lines, which need the atoms to exist (issue them after ``read_data``). A coulomb_constant
        other than LAMMPS's becomes a ``dielectric`` command. Matches ``erfc="lammps"`` to
        rounding; ``erfc="exact"`` differs from it by ~1e-7 relative.
        """
        p = self.parameters
        rs, rc = float(p["cutoff_short"]), float(p["cutoff_coulomb"])
        cmds = [
            f"pair_style hybrid/overlay buck {rs!r} mie/cut {rs!r} coul/dsf {float(p['alpha'])!r} {rc!r}",
            "pair_coeff * * coul/dsf",
        ]
        # Mie(24, 6): E = c eps [(sigma/r)^24 - (sigma/r)^6], c = (24/18) (24/6)^(6/18).
        c_mie = (24.0 / 18.0) * 4.0 ** (1.0 / 3.0)
        n = len(self._elements)
        for a in range(n):
            for b in range(a, n):
                A, rho, C, D = (float(self._pair_arrays[k][a, b]) for k in _PAIR_KEYS)
                c_buck = C
                if D > 0:
                    # mie's attraction M6/r^6 takes C where C > 0; otherwise a tiny M6 (sigma = r_s)
                    # that buck cancels exactly.
                    m6 = C if C > 0 else D / rs**18
                    c_buck = C - m6
                    sigma = (D / m6) ** (1.0 / 18.0)
                    epsilon = m6 / (c_mie * sigma**6)
                    cmds.append(f"pair_coeff {a + 1} {b + 1} mie/cut {epsilon!r} {sigma!r} 24.0 6.0")
                if A != 0 or c_buck != 0:
                    rho = rho if A != 0 else 1.0  # unused by LAMMPS then, but must be positive
                    cmds.append(f"pair_coeff {a + 1} {b + 1} buck {A!r} {rho!r} {c_buck!r}")
        if p["shift_short"]:
            cmds.append("pair_modify shift yes")
        k = float(p["coulomb_constant"])
        if k != LAMMPS_METAL_COULOMB_CONSTANT:
            cmds.append(f"dielectric {LAMMPS_METAL_COULOMB_CONSTANT / k!r}")
        if charges:
            cmds += [f"set type {t + 1} charge {self._charges[e]!r}" for t, e in enumerate(self._elements)]
        return cmds

    def write_lammps_data(self, atoms: Atoms, path: str | Path) -> None:
        """Write ``atoms`` as a LAMMPS data file (``atom_style charge``, masses, BKS charges).

        Types follow :attr:`lammps_type_map`. LAMMPS needs the cell in its lower-triangular
        form: a cell that is not (first vector along x, second in the xy plane) is rotated, and
        forces and stresses read back from LAMMPS are then in the rotated frame
        (``ase.calculators.lammps.Prism`` rotates them back).
        """
        from ase.io.lammpsdata import write_lammps_data

        types = self.types_of(atoms)
        copy = atoms.copy()
        copy.set_initial_charges([self._charges[self._elements[t]] for t in types])
        write_lammps_data(
            str(path), copy, specorder=list(self._elements), atom_style="charge", units="metal", masses=True
        )

    def lammps_script(self, data_file: str | Path, *, run: int = 0) -> str:
        """A complete LAMMPS input that evaluates BKS on ``data_file`` (from :meth:`write_lammps_data`).

        Prints pe (eV) and the pressure tensor (bar, virial only) at every thermo step; ``run``
        steps of no motion (add a fix for dynamics).
        """
        lines = [
            "units metal",
            "atom_style charge",
            f"read_data {data_file}",
            *self.lammps_commands(),
            "compute bks_virial all pressure NULL virial",
            "thermo_style custom step pe c_bks_virial[*]",
            "thermo_modify format float %.17g",
            f"run {int(run)}",
        ]
        return "\n".join(lines) + "\n"


def _check_finite(atoms: Atoms) -> None:
    bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"BKS: {bad.size} atom(s) have non-finite positions, first atom {k} ({atoms[k].symbol}) at "
            f"{atoms.positions[k].tolist()}"
        )
    if not np.isfinite(atoms.cell.array).all():
        raise ValueError(f"BKS: the cell has non-finite entries: {atoms.cell.array.tolist()}")
