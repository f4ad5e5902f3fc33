"""Displaced copies of a Cu38 cluster, sampled the way Cubuk & Schoenholz (2020) sample their SiO2 test set.

Relaxes the truncated-octahedron Cu38 cluster with EMT (the reference model of this example), then writes
300 copies displaced in Gaussian random directions with a total L2 norm drawn uniformly in [0, 1] A to
cu38_displaced.db, each with the key-value pairs the adversarial analysis reads:
e_min (EMT energy of the relaxed cluster, eV) and minimum_id.

    python make_dataset.py [N_CONFIGS]
"""

import sys

import ase.db
import numpy as np
from ase.calculators.emt import EMT
from ase.cluster import Octahedron
from ase.optimize import FIRE


def main(n_configs: int = 300, path: str = "cu38_displaced.db") -> None:
    minimum = Octahedron("Cu", 4, cutoff=1)
    minimum.calc = EMT()
    FIRE(minimum, logfile=None).run(fmax=1e-4)
    e_min = minimum.get_potential_energy()
    rng = np.random.default_rng(0)
    with ase.db.connect(path, append=False) as db:
        for _ in range(n_configs):
            atoms = minimum.copy()
            direction = rng.standard_normal(atoms.positions.shape)
            atoms.positions += direction * rng.uniform(0.0, 1.0) / np.linalg.norm(direction)
            db.write(atoms, e_min=e_min, minimum_id="cu38-octahedron")
    print(f"wrote {n_configs} configurations to {path} (E_min = {e_min:.6f} eV)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
