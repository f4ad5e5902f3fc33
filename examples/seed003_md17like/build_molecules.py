"""Starting geometries of the MD17-like study: ethanol, malonaldehyde (enol) and aspirin, GFN2-xTB minima.

Ethanol comes from ASE's G2 collection; malonaldehyde and aspirin (not in G2, and no SMILES toolkit is
installed) are laid out by hand from standard bond lengths and 120 degree angles, then all three are
relaxed with GFN2-xTB (BFGS, fmax 0.005 eV/A). The check that the hand-made layouts are the intended
molecules: the bond graph (pairs closer than 1.2 times the sum of the covalent radii) of the relaxed
structure must equal that of the layout; the relaxed bond lengths are printed. Writes ``structures/NAME.xyz``.

    python build_molecules.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import natural_cutoffs
from ase.optimize import BFGS

from mlipbias.oracles import make_oracle

HERE = Path(__file__).resolve().parent


def _polar(radius: float, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([radius * np.cos(angle), radius * np.sin(angle), 0.0])


def malonaldehyde() -> Atoms:
    """(Z)-3-hydroxyprop-2-enal, the enol of MD17's malonaldehyde, with its O-H...O hydrogen bond:
    the five heavy atoms O=C-C=C-O on a hexagon, the proton on O2 pointing at O1 (in the middle
    of the two, the relaxation would stay on the symmetric transition state of the proton transfer)."""
    ring = {"C1": 30, "C2": 90, "C3": 150, "O2": 210, "O1": 330}
    symbols, positions = [], []
    for name, angle in ring.items():
        symbols.append(name[0])
        positions.append(_polar(1.4, angle))
    towards_o1 = positions[4] - positions[3]
    symbols.append("H")
    positions.append(positions[3] + 0.98 * towards_o1 / np.linalg.norm(towards_o1))
    for angle in (30, 90, 150):  # the C-H hydrogens, outwards
        symbols.append("H")
        positions.append(_polar(1.4 + 1.09, angle))
    return Atoms(symbols, positions)


def aspirin() -> Atoms:
    """2-acetoxybenzoic acid: a benzene ring, COOH on C1, the acetoxy O-C(=O)-CH3 on C2 (ortho)."""
    symbols = ["C"] * 6
    positions = [_polar(1.39, 60 * k) for k in range(6)]
    for k in (2, 3, 4, 5):  # ring hydrogens
        symbols.append("H")
        positions.append(_polar(1.39 + 1.08, 60 * k))
    c7 = _polar(1.39 + 1.49, 0)  # carboxyl carbon
    o_carbonyl = c7 + _polar(1.21, -60)
    o_hydroxyl = c7 + _polar(1.34, 60)
    h_hydroxyl = o_hydroxyl + _polar(0.97, 0)
    o_ester = _polar(1.39 + 1.40, 60)
    c_acyl = o_ester + _polar(1.36, 120)
    o_acyl = c_acyl + _polar(1.20, 60)
    c_methyl = c_acyl + _polar(1.50, 180)
    symbols += ["C", "O", "O", "H", "O", "C", "O", "C"]
    positions += [c7, o_carbonyl, o_hydroxyl, h_hydroxyl, o_ester, c_acyl, o_acyl, c_methyl]
    axis = np.array([-1.0, 0.0, 0.0])  # C_acyl -> C_methyl
    for phi in (0.0, 120.0, 240.0):  # tetrahedral methyl hydrogens around that axis
        p = np.radians(phi)
        direction = axis * np.cos(np.radians(180 - 109.5)) + np.sin(np.radians(180 - 109.5)) * np.array(
            [0.0, np.cos(p), np.sin(p)]
        )
        symbols.append("H")
        positions.append(c_methyl + 1.09 * direction)
    return Atoms(symbols, positions)


MOLECULES = {"ethanol": lambda: molecule("CH3CH2OH"), "malonaldehyde": malonaldehyde, "aspirin": aspirin}


def bond_graph(atoms: Atoms) -> set[tuple[int, int]]:
    radii = np.array(natural_cutoffs(atoms, mult=1.2))
    bonded = atoms.get_all_distances() < radii[:, None] + radii[None, :]
    return {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(bonded, 1)), strict=True)}


def main() -> None:
    out = HERE / "structures"
    out.mkdir(exist_ok=True)
    for name, build in MOLECULES.items():
        atoms = build()
        layout = bond_graph(atoms)
        atoms.calc = make_oracle("gfn2-xtb")
        BFGS(atoms, logfile=None).run(fmax=0.005, steps=2000)
        fmax = float(np.abs(atoms.get_forces()).max())
        if fmax > 0.005:
            raise SystemExit(f"{name}: GFN2-xTB relaxation did not converge (max |F| {fmax:.3g} eV/A)")
        relaxed = bond_graph(atoms)
        if relaxed != layout:
            raise SystemExit(
                f"{name}: the bonds changed during the relaxation (lost {sorted(layout - relaxed)}, "
                f"new {sorted(relaxed - layout)}): the layout is not the intended molecule"
            )
        lengths = {}
        for a, b in sorted(relaxed):
            pair = "-".join(sorted((atoms[a].symbol, atoms[b].symbol)))
            lengths.setdefault(pair, []).append(atoms.get_distance(a, b))
        summary = ", ".join(f"{p} {min(v):.3f}-{max(v):.3f}" for p, v in sorted(lengths.items()))
        energy = atoms.get_potential_energy()
        print(
            f"{name} ({atoms.get_chemical_formula()}): E = {energy:.4f} eV, "
            f"{len(relaxed)} bonds; A: {summary}"
        )
        atoms.calc = None
        atoms.write(out / f"{name}.xyz", format="extxyz")


if __name__ == "__main__":
    main()
