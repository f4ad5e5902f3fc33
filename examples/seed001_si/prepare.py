"""Split the Si MD dataset into training and test sets, and give every test row its minimum energy.

    python prepare.py                      # work/si_md.db -> work/train.db, work/test.db

- 75 % of the snapshots (all temperatures mixed, split by ``mlipbias.datasets.split_dataset`` with
  seed 0) go to ``work/train.db`` (the trainers hold out their own validation part), 25 % to
  ``work/test.db``, written in a shuffled order, so that the first N test configurations that
  the expensive experiments of ``mlipbias adversarial`` use (``--gd-configs`` ...) mix all four
  temperatures.
- ``e_min`` (eV) of every row is the GFN1-xTB energy of the perfect 64-atom diamond cell the
  trajectories started from (a stationary point by symmetry, at the same fixed cell), and
  ``minimum_id`` is ``"diamond"``: Delta E of Fig. 1c is the energy above the crystal. One xTB
  call, cached in ``work/e_min.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlipbias.datasets import load_dataset, open_dataset, split_dataset
from mlipbias.oracles import label, make_oracle
from mlipbias.structures import default_structure

WORK = Path(__file__).resolve().parent / "work"


def diamond_energy() -> float:
    cache = WORK / "e_min.json"
    if cache.is_file():
        return json.loads(cache.read_text())["e_min"]
    diamond = default_structure("si-diamond-64")
    energy = label(diamond, make_oracle("gfn1-xtb"), name="perfect diamond")["energy"]
    cache.write_text(json.dumps({"e_min": energy, "what": "GFN1-xTB energy of perfect si-diamond-64, eV"}))
    return energy


def write(path: Path, rows, e_min: float) -> None:
    path.unlink(missing_ok=True)
    db = open_dataset(path, create=True)
    with db:
        for atoms in rows:
            keep = (str, int, float, bool)
            pairs = {k: v for k, v in atoms.info.items() if k != "db_id" and isinstance(v, keep)}
            db.write(atoms, key_value_pairs={**pairs, "e_min": e_min, "minimum_id": "diamond"})


def main() -> None:
    rows = load_dataset(WORK / "si_md.db", "mode=md")
    train, test = split_dataset(len(rows), (0.75, 0.25), seed=0)
    test = np.random.default_rng(1).permutation(test)
    e_min = diamond_energy()
    write(WORK / "train.db", [rows[i] for i in train], e_min)
    write(WORK / "test.db", [rows[i] for i in test], e_min)
    temperatures = sorted({a.info["temperature"] for a in rows})
    counts = {t: sum(rows[i].info["temperature"] == t for i in test[:20]) for t in temperatures}
    print(f"{len(train)} training and {len(test)} test rows; E_min = {e_min:.6f} eV")
    print(f"temperatures among the first 20 test rows: {counts}")


if __name__ == "__main__":
    main()
