"""Train this study's MVE or evidential PaiNN settings (``_settings``, 1 member) for 2 epochs on 4
BKS-labelled displaced cells and print a checksum of the weights (README, "The numbers stand after
issue 13's fix"). Run it with the code before the fix and after it and compare the lines:

    git archive fadb350 python | tar -x -C /tmp/old && cp python/mlipbias/_core*.so /tmp/old/python/mlipbias/
    PYTHONPATH=/tmp/old/python python examples/seed003_silica/check_nll_fix.py mve      # before
    PYTHONPATH=python python examples/seed003_silica/check_nll_fix.py mve 0.5           # after, beta-NLL

Arguments: the method (mve, evidential) and optionally ``nll_beta`` (default: the script's setting).
"""

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def main(method: str, beta: str | None) -> None:
    import run_study as r
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlipbias.models.painn_training import train_painn
    from mlipbias.potentials.bks import BKS
    from mlipbias.structures import load_structure

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    base = load_structure("sio2-amorphous-96")
    frames = []
    for _ in range(5):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = BKS()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    r.SCALE["n_members"] = 1
    from mlipbias.models import training as mt

    if "nll_beta" not in mt.UncertaintySettings.__dataclass_fields__:  # the code before the fix
        before = mt.UncertaintySettings

        def without_beta(**kwargs):
            if kwargs.pop("nll_beta", 0.0) != 0.0 or beta is not None:
                raise SystemExit("the code before the fix has no nll_beta: it is the plain NLL")
            return before(**kwargs)

        mt.UncertaintySettings = without_beta
    settings, uq, training = r._settings(method, seed=0, epochs=2)
    if beta is not None:
        uq = dataclasses.replace(uq, nll_beta=float(beta))
    with tempfile.TemporaryDirectory() as d:
        result = train_painn(
            frames[:4],
            frames[4:],
            settings=settings,
            uncertainty=uq,
            training=training,
            output_dir=d,
            progress=False,
            log=lambda line: None,
        )
    weights = [t for t in result.model.state_dict().values() if torch.is_tensor(t) and t.is_floating_point()]
    v = torch.cat([t.flatten().double() for t in weights])
    print(method, getattr(uq, "nll_beta", "-"), f"{v.sum().item():.15e} {v.abs().sum().item():.15e}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
