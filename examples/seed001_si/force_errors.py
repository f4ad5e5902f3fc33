"""Energy and force errors of the four Si models on work/test.db (README table).

python force_errors.py
"""

from __future__ import annotations

import numpy as np

from mlipbias.calculators import MLIPCalculator
from mlipbias.datasets import load_dataset
from mlipbias.models.gnn import GNNCalculator

MODELS = {
    "bpnn_energy": lambda: MLIPCalculator("work/bpnn_energy/bpnn.mlip"),
    "bpnn_forces": lambda: MLIPCalculator("work/bpnn_forces/bpnn.mlip"),
    "gnn_energy": lambda: GNNCalculator("work/gnn_energy.pt"),
    "gnn_forces": lambda: GNNCalculator("work/gnn_forces.pt"),
}


def main() -> None:
    rows = load_dataset("work/test.db")
    e_ref = np.array([a.get_potential_energy() / len(a) for a in rows])
    f_ref = np.concatenate([a.get_forces().ravel() for a in rows])
    print(f"{len(rows)} test structures; force components: rms {np.sqrt(np.mean(f_ref**2)):.3f} eV/A")
    print("model          energy RMSE (meV/atom)   force RMSE (eV/A)")
    for name, make in MODELS.items():
        calc, e, f = make(), [], []
        for a in rows:
            b = a.copy()
            b.calc = calc
            e.append(b.get_potential_energy() / len(b))
            f.append(b.get_forces().ravel())
        e_rmse = 1000 * np.sqrt(np.mean((np.array(e) - e_ref) ** 2))
        f_rmse = np.sqrt(np.mean((np.concatenate(f) - f_ref) ** 2))
        print(f"{name:14s} {e_rmse:22.2f} {f_rmse:19.3f}")


if __name__ == "__main__":
    main()
