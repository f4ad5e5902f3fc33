"""Five train / validation / test splits of a molecule's data, as files that `mlipbias train` takes.

Seed 003 (Tan et al. 2023, SI) trains on 800 and validates on 200 structures of each of the 5 rMD17
splits of Christensen & von Lilienfeld (1000 training indices, `index_train_0K.csv`), and tests on the
split's 1000 test indices (`index_test_0K.csv`). This script makes the same from

* our MD17-like data (an ase.db of `mlipbias data generate`, 2000 snapshots): split K (1 to 5) is a
  random permutation (seed K) of the 2000 snapshots: the first 1000 are the training indices, the
  other 1000 the test indices; the index files are written as rMD17's (0-based, one per line);
* a real rMD17 file (`rmd17_MOLECULE.npz`) with the published index files (`--index-dir`).

The 1000 training indices of a split are divided into 800 training and 200 validation structures by a
random permutation (seed K; Tan et al. do not say how they divided them). For each split K it writes
OUT/split_0K/{train,validation,test}.extxyz (energies in eV, forces in eV/A; the provenance of each
structure in the comment line: `source_db_id`, the ase.db row, or `source_frame`, the npz frame)
and OUT/index_*_0K.csv.
A training configuration then reads

    data:
      path: OUT/split_0K/train.extxyz
      validation_path: OUT/split_0K/validation.extxyz
      test_path: OUT/split_0K/test.extxyz

    python make_splits.py work/ethanol.db --out work/splits/ethanol
    python make_splits.py rmd17/npz_data/rmd17_ethanol.npz --index-dir rmd17/splits --out work/rmd17/ethanol
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from ase.io import write

from mlipbias.datasets import read_labelled

N_SPLITS = 5
N_TRAIN_POOL, N_VALIDATION, N_TEST = 1000, 200, 1000


def read_index_file(path: Path, n_structures: int) -> np.ndarray:
    """0-based indices, one per line (rMD17's index_*.csv); a bad line or index names the file and line."""
    if not path.is_file():
        raise SystemExit(f"index file {path} does not exist")
    indices = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip().strip(",")
        if not text:
            continue
        try:
            indices.append(int(text))
        except ValueError:
            raise SystemExit(f"{path}, line {number}: {line!r} is not an index") from None
    indices = np.array(indices, dtype=int)
    outside = indices[(indices < 0) | (indices >= n_structures)]
    if outside.size:
        raise SystemExit(f"{path}: index {outside[0]} is outside the data's 0..{n_structures - 1}")
    if np.unique(indices).size != indices.size:
        raise SystemExit(f"{path}: repeats an index")
    return indices


def write_atomically(path: Path, frames) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial, frames, format="extxyz")
    os.replace(partial, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="ase.db of the MD17-like data, or an rmd17_*.npz")
    parser.add_argument("--out", type=Path, required=True, help="folder for split_0K/ and the index files")
    parser.add_argument(
        "--index-dir", type=Path, help="folder of rMD17's index_train_0K.csv and index_test_0K.csv"
    )
    # Smaller splits for a scaled-down study (README, "Scaling"); the defaults are rMD17's.
    parser.add_argument("--n-splits", type=int, default=N_SPLITS, help=f"splits (default {N_SPLITS})")
    parser.add_argument(
        "--n-train", type=int, default=N_TRAIN_POOL - N_VALIDATION, help="training structures (default 800)"
    )
    parser.add_argument(
        "--n-validation", type=int, default=N_VALIDATION, help="validation structures (default 200)"
    )
    parser.add_argument("--n-test", type=int, default=N_TEST, help="test structures (default 1000)")
    args = parser.parse_args(argv)
    for name in ("n_splits", "n_train", "n_validation", "n_test"):
        if getattr(args, name) < 1:
            raise SystemExit(
                f"--{name.replace('_', '-')} = {getattr(args, name)}: expected a positive number"
            )
    n_validation, n_pool, n_test = args.n_validation, args.n_train + args.n_validation, args.n_test

    structures = read_labelled(args.data)
    if "index" in structures[0].info:  # an MD dataset: put the snapshots in trajectory order
        structures.sort(key=lambda a: (a.info.get("temperature", 0.0), a.info["index"]))
    for atoms in structures:
        # Renamed: read back from the split files, db_id and frame would name rows and frames of the
        # wrong file (they are what split.json records).
        for key in ("db_id", "frame"):
            if key in atoms.info:
                atoms.info[f"source_{key}"] = atoms.info.pop(key)
    n = len(structures)
    if args.index_dir is None and n < n_pool + n_test:
        raise SystemExit(f"{args.data} holds {n} structures; the splits need {n_pool + n_test}")
    args.out.mkdir(parents=True, exist_ok=True)
    for k in range(1, args.n_splits + 1):
        if args.index_dir is not None:
            train_pool = read_index_file(args.index_dir / f"index_train_{k:02d}.csv", n)
            test = read_index_file(args.index_dir / f"index_test_{k:02d}.csv", n)
            if len(train_pool) < n_pool:
                raise SystemExit(
                    f"index_train_{k:02d}.csv holds {len(train_pool)} indices, expected at least {n_pool}"
                )
            test = test[:n_test]
            if np.intersect1d(train_pool, test).size:
                raise SystemExit(f"index_train_{k:02d}.csv and index_test_{k:02d}.csv share indices")
        else:
            order = np.random.default_rng(k).permutation(n)[: n_pool + n_test]
            train_pool, test = np.sort(order[:n_pool]), np.sort(order[n_pool:])
            for name, indices in (("train", train_pool), ("test", test)):
                np.savetxt(args.out / f"index_{name}_{k:02d}.csv", indices, fmt="%d")
        shuffled = np.random.default_rng(k).permutation(train_pool)
        validation = np.sort(shuffled[:n_validation])
        train = np.sort(shuffled[n_validation:n_pool])
        folder = args.out / f"split_{k:02d}"
        folder.mkdir(exist_ok=True)
        for name, indices in (("train", train), ("validation", validation), ("test", test)):
            write_atomically(folder / f"{name}.extxyz", [structures[i] for i in indices])
        print(f"{folder}: {len(train)} train, {len(validation)} validation, {len(test)} test")


if __name__ == "__main__":
    main()
