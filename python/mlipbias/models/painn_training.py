"""Training PaiNN models (``model.kind: painn``) with the uncertainty methods of seed 003.

:func:`train_painn` takes labelled structures (ASE Atoms with energies and forces in their
calculator, as :func:`mlipbias.datasets.load_dataset` returns them) and the settings of
``mlipbias train`` (:class:`~mlipbias.models.training.TrainingSettings`,
:class:`~mlipbias.models.training.UncertaintySettings`), and trains like the BP-NN:

- the per-element energy shift is the least-squares fit of the training energies on composition,
  the output scale the RMS force component when training on forces, else that fit's RMSE per atom;
- all M members train in one loop on the same mini-batches, each from its own initialisation,
  on ``w_E L((E - E_ref) / N) + w_F L(F - F_ref)`` (L the MSE or MAE), plus the MVE or evidential
  NLL (``uncertainty.head_training`` joint or detached, as ``docs/models.md`` describes); Adam,
  the plateau (or exponential) learning-rate schedule on the validation loss, early stopping that
  gives every member the weights of its best validation epoch;
- afterwards the GMM is fitted on member 0's last scalar features of the training atoms, and every
  method is calibrated on the validation structures (conformal factors, :func:`calibrate_painn`).

Seed 003's protocol (SI section I) is ``loss: mae``, ``energy_weight: 0.1``, ``force_weight: 1.0``
(ensemble, GMM) or ``force_weight: 0`` with ``nll_weight: 1.0`` and joint heads (MVE, evidential;
``nll_beta: 0`` for their plain NLL, the default 0.5 being beta-NLL, ``docs/painn.md``),
``learning_rate: 1e-4``, ``decay_factor: 0.5``, ``decay_patience: 30``; 5 members (silica: 3 in the
SI, 4 in the main text).

The epoch loop is the BP-NN's (:func:`mlipbias.models.training.run_epochs`): every epoch appends to
``metrics.jsonl`` and ``metrics.csv``, redraws ``learning_curve.png`` and rewrites ``checkpoint.pt``
(resumable) in the output folder; ``best.pt`` is the best model so far.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.data import atomic_numbers

from mlipbias.models.gnn import batch_graphs, species_indices
from mlipbias.models.painn import DTYPE, PaiNNModel, PaiNNSettings, save_painn
from mlipbias.models.training import (
    TrainingSettings,
    UncertaintySettings,
    _residual_loss,
    _scheduler,
    log_line,
    resolve_device,
    run_epochs,
    start_state,
)
from mlipbias.uq import evidential, mve

PAINN_METHODS = ("ensemble", "mve", "evidential", "gmm")


def check_painn_settings(painn: dict | None, uq: UncertaintySettings, t: TrainingSettings) -> PaiNNSettings:
    """The PaiNN settings of ``model.painn``; a ValueError names what ``model.kind: painn`` lacks."""
    settings = PaiNNSettings.from_dict(painn)
    unsupported = [m for m in uq.methods if m not in PAINN_METHODS]
    if unsupported:
        raise ValueError(
            f"setting uncertainty.methods = {list(uq.methods)}: model.kind painn supports "
            f"{', '.join(PAINN_METHODS)} (not {', '.join(unsupported)})"
        )
    if uq.head_training == "post_hoc":
        raise ValueError(
            "setting uncertainty.head_training = 'post_hoc': model.kind painn trains its heads "
            "joint or detached"
        )
    if t.stress_weight > 0:
        raise ValueError(
            "setting training.stress_weight: model.kind painn trains on energies and forces only; "
            "set training.stress_weight: 0"
        )
    return settings


@dataclass
class LabelledGraph:
    graph: object
    energy: float
    forces: torch.Tensor | None


def _labelled(structures: Sequence[Atoms], elements, cutoff: float, need_forces: bool, what: str):
    from mlipbias.models.gnn import build_graph

    items = []
    for k, atoms in enumerate(structures):
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces(), dtype=np.float64) if need_forces else None
        except Exception as exc:
            raise ValueError(
                f"{what} structure {k} ({atoms.get_chemical_formula()}) has no energy/forces labels: {exc}"
            ) from exc
        if not math.isfinite(energy) or (forces is not None and not np.isfinite(forces).all()):
            raise ValueError(f"{what} structure {k} ({atoms.get_chemical_formula()}) has non-finite labels")
        graph = build_graph(atoms, elements, cutoff)
        items.append(
            LabelledGraph(graph, energy, None if forces is None else torch.tensor(forces, dtype=DTYPE))
        )
    return items


def _batch(items: Sequence[LabelledGraph], device):
    graph = batch_graphs([it.graph for it in items])
    graph = type(graph)(**{k: v.to(device) for k, v in vars(graph).items()})
    energy = torch.tensor([it.energy for it in items], dtype=DTYPE, device=device)
    forces = None
    if all(it.forces is not None for it in items):
        forces = torch.cat([it.forces for it in items]).to(device)
    return graph, energy, forces


def painn_batch_loss(
    model: PaiNNModel,
    items,
    t: TrainingSettings,
    uq: UncertaintySettings,
    device,
    *,
    train: bool,
    warmup: bool = False,
):
    """(loss to minimise, per-member loss early stopping watches (M,), parts) for one batch.

    ``warmup``: the mean trains by the accuracy loss (force weight at least 1), the heads by their
    NLL on detached residuals and features (``uncertainty.warmup_epochs``)."""
    graph, energy_ref, forces_ref = _batch(items, device)
    head = model.head_kind is not None
    joint = head and uq.head_training == "joint" and not warmup
    if warmup:
        t = replace(t, force_weight=max(t.force_weight, 1.0))
    use_forces = forces_ref is not None and (t.force_weight > 0 or head)
    # create_graph keeps every output attached to the weights (forces through the double backward).
    out = model.evaluate(
        graph, None, forces=use_forces, create_graph=train, detach_head="energy" if joint else True
    )
    n_atoms = graph.n_atoms.to(DTYPE)
    e_res = (out.member_energies - energy_ref) / n_atoms
    per_member = t.energy_weight * _residual_loss(e_res, t.loss, 1)
    parts = {"energy_rmse": torch.sqrt((e_res.detach() ** 2).mean(dim=1))}
    f_res = None
    if use_forces:
        f_res = out.member_forces - forces_ref
        parts["force_rmse"] = torch.sqrt((f_res.detach() ** 2).mean(dim=(1, 2)))
        if t.force_weight > 0:
            per_member = per_member + t.force_weight * _residual_loss(f_res, t.loss, (1, 2))
    total = per_member.sum()
    if head and t.nll_weight > 0:
        force_res = None if f_res is None else (f_res[0] if joint else f_res[0].detach())
        # Tan et al.'s NLL is on forces alone; the energy head's term is optional (head_energy_nll).
        energy_res = (e_res[0] * n_atoms).detach() if uq.head_energy_nll or force_res is None else None
        args = (out.head, model.head_scale, graph.structure, graph.n_structures, energy_res, force_res)
        if model.head_kind == "mve":
            nll = mve.loss(*args, beta=uq.nll_beta if joint else 0.0)
        else:
            nll = evidential.loss(*args, regularization=uq.evidential_regularization)
        parts["nll"] = nll.detach()
        total = total + t.nll_weight * nll
        if joint:
            per_member = per_member + t.nll_weight * nll
    return total, per_member, parts


@dataclass
class PaiNNTrainingResult:
    model: PaiNNModel
    best_epoch: list[int]
    best_loss: list[float]
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def train_painn(
    train: Sequence[Atoms],
    validation: Sequence[Atoms],
    *,
    settings: PaiNNSettings | None = None,
    uncertainty: UncertaintySettings | None = None,
    training: TrainingSettings | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = log_line,
    description: str = "",
    init_model: PaiNNModel | None = None,
) -> PaiNNTrainingResult:
    """Train a PaiNN model with its uncertainty methods (module docstring); returns the best model.
    ``init_model`` (same elements, architecture, members and head) warm-starts from its weights and
    energy shift instead of fresh ones (active learning); a checkpoint being resumed takes precedence."""

    settings = settings or PaiNNSettings()
    uq = uncertainty or UncertaintySettings()
    t = training or TrainingSettings()
    from mlipbias.models.training import ModelSettings, check_settings, uncertainty_key

    check_settings(ModelSettings(kind="painn", painn=settings.to_dict()), uq, t)
    if not train or not validation:
        raise ValueError(
            f"PaiNN training needs training and validation structures, got {len(train)} and {len(validation)}"
        )
    head = next((m for m in uq.methods if m in ("mve", "evidential")), None)
    n_members = int(uq.n_members) if "ensemble" in uq.methods else 1
    need_forces = t.force_weight > 0 or head is not None
    elements = sorted({s for a in train for s in a.get_chemical_symbols()}, key=lambda s: atomic_numbers[s])
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    methods = [m for m in PAINN_METHODS if m in uq.methods]
    model = PaiNNModel(elements, settings, n_members=n_members, head=head, methods=methods)
    train_items = _labelled(train, elements, settings.cutoff, need_forces, "training")
    val_items = _labelled(validation, elements, settings.cutoff, need_forces, "validation")
    counts = np.array([np.bincount(species_indices(a, elements), minlength=len(elements)) for a in train])
    mean_square_force = None
    if need_forces:
        mean_square_force = float(
            np.mean(np.concatenate([it.forces.numpy().ravel() for it in train_items]) ** 2)
        )
    energy_rmse = model.fit_energy_shift(
        counts,
        np.array([it.energy for it in train_items]),
        force_rms=math.sqrt(mean_square_force) if mean_square_force is not None else None,
    )
    if head is not None:
        model.init_heads(mean_square_force, energy_rmse)
    if init_model is not None:
        if tuple(init_model.elements) != tuple(model.elements):
            raise ValueError(
                f"init_model has elements {list(init_model.elements)}, the data {list(model.elements)}"
            )
        try:
            model.load_state_dict(init_model.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"init_model does not match the PaiNN settings, members or head: {exc}") from exc
        log("warm start from the given model")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
    scheduler = _scheduler(optimizer, t)
    key = json.dumps(
        {
            "painn": settings.to_dict(),
            "uq": uncertainty_key(uq),
            "training": {k: v for k, v in asdict(t).items() if k != "epochs"},
        },
        sort_keys=True,
        default=list,
    )
    out = Path(output_dir) if output_dir is not None else None
    state = start_state(model, n_members, out, resume, optimizer, scheduler, key, device, log)

    def warming(epoch: int) -> bool:
        return head is not None and epoch <= uq.warmup_epochs

    def end_warmup(epoch: int) -> None:
        if head is not None and uq.warmup_epochs and epoch == uq.warmup_epochs + 1:
            # The warm-up's losses (MAE/MSE) are not the NLL's: every member's best starts afresh.
            state["best_loss"] = [math.inf] * n_members
            if t.schedule == "plateau":
                scheduler.best, scheduler.num_bad_epochs = scheduler.mode_worse, 0

    def save_best(best_params: dict) -> None:
        best = copy.deepcopy(model)
        best.load_state_dict(best_params)
        save_painn(best, out / "best.pt", description)

    run_epochs(
        model,
        optimizer,
        scheduler,
        t,
        state,
        n_train=len(train_items),
        batches=lambda order: (
            [train_items[k] for k in order[first : first + t.batch_size]]
            for first in range(0, len(order), t.batch_size)
        ),
        batch_loss=lambda items, epoch: painn_batch_loss(
            model, items, t, uq, device, train=True, warmup=warming(epoch)
        )[0],
        validate=lambda epoch: _validation(model, val_items, t, uq, device, warmup=warming(epoch)),
        copy_members=_copy_members,
        save_best=save_best,
        out=out,
        settings_key=key,
        log=log,
        progress=progress,
        before_epoch=end_warmup,
    )
    if "gmm" in methods:
        fit_gmm(model, [it.graph for it in train_items], uq.gmm_max_components, t.seed, device)
        log(f"GMM components by BIC: {model.gmm.n_components}")
    calibrate_painn(model, validation, uq.alpha, log=log)
    return PaiNNTrainingResult(
        model, list(state["best_epoch"]), list(state["best_loss"]), state["epoch"], state["history"]
    )


def _copy_members(target: dict, source: dict, members: list[int]) -> None:
    """Copy the given members' entries (``members.M.*``) from the state dict ``source`` into ``target``."""
    for m in members:
        prefix = f"members.{m}."
        for name, value in source.items():
            if name.startswith(prefix):
                target[name] = value.detach().clone()


def fit_gmm(model: PaiNNModel, graphs, max_components: int, seed: int, device, batch_size: int = 32) -> None:
    """Fit the per-element GMM on member 0's last scalar features of the training atoms (seed 003 Eq. 10)."""
    from mlipbias.uq.gmm import GMMUncertainty

    features, species = [], []
    for first in range(0, len(graphs), batch_size):
        graph = batch_graphs(graphs[first : first + batch_size])
        graph = type(graph)(**{k: v.to(device) for k, v in vars(graph).items()})
        with torch.no_grad():
            out = model.evaluate(graph, None, forces=False)
        features.append(out.features.cpu().numpy())
        species.append(graph.species.cpu().numpy())
    model.gmm = GMMUncertainty.fit(
        model.elements,
        np.concatenate(features),
        np.concatenate(species),
        max_components=max_components,
        seed=seed,
    )


def _has_forces(structures: Sequence[Atoms]) -> bool:
    try:
        return all(a.get_forces() is not None for a in structures)
    except (RuntimeError, PropertyNotImplementedError):  # no calculator, or one without forces
        return False


def _predict(model: PaiNNModel, structures: Sequence[Atoms], method, batch_size: int):
    """Predictions (raw U_i, as seed 003 evaluates them) of labelled ``structures`` and the structures'
    raw U; the reference forces only when every structure has them."""
    from mlipbias.uq.metrics import Predictions

    parts = {"energy": [], "forces": [], "U": [], "U_i": []}
    for first in range(0, len(structures), batch_size):
        chunk = structures[first : first + batch_size]
        graph = model.graphs(chunk)
        out = model.evaluate(graph, method, forces=True, calibrated=False)
        parts["energy"].append(out.energy.cpu().numpy())
        parts["forces"].append(out.forces.cpu().numpy())
        if method is not None:
            parts["U"].append(out.uncertainty.cpu().numpy())
            parts["U_i"].append(out.atom_uncertainty.cpu().numpy())
    n_atoms = np.array([len(a) for a in structures])
    return Predictions(
        energy=np.concatenate(parts["energy"]),
        energy_ref=np.array([a.get_potential_energy() for a in structures]),
        n_atoms=n_atoms,
        forces=np.concatenate(parts["forces"]),
        forces_ref=np.concatenate([a.get_forces() for a in structures]) if _has_forces(structures) else None,
        atom_uncertainty=np.concatenate(parts["U_i"]) if method is not None else None,
    ), (np.concatenate(parts["U"]) if method is not None else None)


def calibrate_painn(
    model: PaiNNModel,
    structures: Sequence[Atoms],
    alpha: float,
    *,
    batch_size: int = 16,
    log: Callable[[str], None] = log_line,
) -> dict[str, float]:
    """Calibrate every method of ``model`` on labelled ``structures`` (the validation split) as the
    BP-NN's :func:`mlipbias.models.training.calibrate` does; sets ``model.calibration``.

    The standard deviations sqrt(U), sqrt(U_i) of the raw variances (the GMM: its scores, recalibrated)
    get the conformal factors c_E, c_F at miscoverage ``alpha``
    (:func:`mlipbias.uq.calibration.fit_method_calibration`). Returns the coverage of each factor on
    ``structures``; without reference forces only c_E.
    """
    from mlipbias.uq.calibration import fit_method_calibration

    calibration: dict[str, np.ndarray] = {}
    coverage: dict[str, float] = {}
    for method in model.methods:
        p, U = _predict(model, structures, method, batch_size)
        gmm = method == "gmm"
        records, covered = fit_method_calibration(
            method,
            alpha,
            p.energy - p.energy_ref,
            None if gmm else np.sqrt(U),
            None if p.forces_ref is None else p.forces - p.forces_ref,
            None if gmm else np.sqrt(p.atom_uncertainty),
            score=U if gmm else None,
            atom_score=p.atom_uncertainty if gmm else None,
            log=log,
        )
        calibration.update(records)
        coverage.update(covered)
    model.calibration = calibration
    return coverage


def _validation(model, items, t, uq, device, warmup: bool = False) -> dict:
    sums, total = {}, 0
    for first in range(0, len(items), max(t.batch_size, 16)):
        group = items[first : first + max(t.batch_size, 16)]
        _, per_member, parts = painn_batch_loss(model, group, t, uq, device, train=False, warmup=warmup)
        values = {"loss": per_member.detach(), **{k: v**2 for k, v in parts.items() if k.endswith("rmse")}}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + len(group) * v.detach().cpu()
        total += len(group)
    result = {k: (v / total).numpy() for k, v in sums.items()}
    for k in result:
        if k.endswith("rmse"):
            result[k] = np.sqrt(result[k])
    return result


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_painn(
    model: PaiNNModel,
    test: Sequence[Atoms],
    validation: Sequence[Atoms] | None = None,
    *,
    methods: Sequence[str] | None = None,
    batch_size: int = 16,
    keep: dict | None = None,
) -> dict[str, dict]:
    """Seed 003's table for every method of ``model`` on labelled ``test`` structures.

    Returns ``{method: {"energy": {...}, "forces": {...}}}`` (:func:`mlipbias.uq.metrics.metrics_table`):
    energy and force RMSE/MAE, and Spearman, ROC-AUC, miscalibration area and cNLL of U_i against
    each atom's force error (``kind="variance"``; ``"score"`` for the GMM) and of U against the
    total-energy error (``kind="score"``: U is a force variance, not an energy one). The cNLL's
    ``a``, ``b`` are fitted on ``validation``. ``methods``: a subset of the model's (default: all);
    without any the key is ``"none"``. ``keep``, a dict, receives per method the test and
    validation :class:`~mlipbias.uq.metrics.Predictions` (``write_painn_plots`` draws them).
    The uncertainties are the raw ones, as seed 003 evaluates them; a calibrated model
    (:func:`calibrate_painn`) adds the row ``coverage``: the fraction of test errors (|E - E_ref|, the
    per-atom force RMSE) within the square root of the calibrated variance.
    """
    from mlipbias.uq.calibration import force_rmse_per_atom
    from mlipbias.uq.metrics import metrics_table, uncertainty_metrics

    methods = list(model.methods if methods is None else methods)
    for method in methods:
        model.check_method(method)
    tables = {}
    for method in methods or [None]:
        p, U = _predict(model, test, method, batch_size)
        pv, Uv = _predict(model, validation, method, batch_size) if validation else (None, None)
        kind = "score" if method == "gmm" else "variance"
        table = metrics_table(p, pv, kind=kind)
        if U is not None:
            val = (pv.energy_residuals(), Uv) if pv is not None else None
            table["energy"].update(uncertainty_metrics(p.energy_residuals(), U, kind="score", validation=val))
            # The calibrated variances' square roots bound the errors with probability 1 - alpha.
            for column, quantity, errors, u in (
                ("energy", "energy", np.abs(p.energy - p.energy_ref), U),
                (
                    "forces",
                    "force",
                    None if p.forces_ref is None else force_rmse_per_atom(p.forces, p.forces_ref),
                    p.atom_uncertainty,
                ),
            ):
                if f"calibration/{quantity}/{method}" in model.calibration and errors is not None:
                    variance = model.calibrated(quantity, method, torch.from_numpy(u)).numpy()
                    table[column]["coverage"] = float(np.mean(errors <= np.sqrt(variance)))
        tables[method or "none"] = table
        if keep is not None:
            keep[method or "none"] = (p, pv)
    return tables


def write_painn_plots(predictions: dict, directory: str | Path) -> list[Path]:
    """PNG figures of a PaiNN evaluation (``evaluate_painn(..., keep=predictions)``).

    ``parity.png`` (energy per atom, force components), ``uncertainty_vs_error.png`` (per atom: the
    force sigma against the RMS component of the atom's force error) and ``calibration.png`` (force
    components). The sigma is that of the cNLL, ``sigma^2 = a U_i + b`` fitted on the validation
    predictions; without them ``sigma = sqrt(U_i)`` for the variance methods and the GMM score, which
    has no scale of its own, is left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlipbias.models.evaluation import _hexbin, _parity, _save
    from mlipbias.uq.calibration import VarianceRecalibration, force_rmse_per_atom
    from mlipbias.uq.metrics import calibration_curve

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    first, _ = next(iter(predictions.values()))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), squeeze=False)
    _parity(axes[0, 0], first.energy_ref / first.n_atoms, first.energy / first.n_atoms, "energy (eV/atom)")
    _parity(axes[0, 1], first.forces_ref.ravel(), first.forces.ravel(), "force component (eV/A)")
    fig.tight_layout()
    written = [_save(fig, directory / "parity.png")]
    sigmas = {}
    for method, (p, pv) in predictions.items():
        if p.atom_uncertainty is None:
            continue
        if pv is not None:
            constraint = "positive_variance" if method == "gmm" else "nonnegative"
            fit = VarianceRecalibration(constraint=constraint).fit(pv.force_residuals(), pv.atom_uncertainty)
            sigmas[method] = np.sqrt(fit.variance(p.atom_uncertainty))
        elif method != "gmm":
            sigmas[method] = np.sqrt(p.atom_uncertainty)
    if not sigmas:
        return written
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 3.8), squeeze=False)
    for ax, (method, sigma) in zip(axes[0], sigmas.items(), strict=True):
        p = predictions[method][0]
        _hexbin(ax, sigma, force_rmse_per_atom(p.forces, p.forces_ref), f"{method}: forces", "eV/A")
    fig.tight_layout()
    written.append(_save(fig, directory / "uncertainty_vs_error.png"))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for method, sigma in sigmas.items():
        p = predictions[method][0]
        ax.plot(*calibration_curve(p.force_residuals(), sigma), label=method)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(
        xlabel="expected fraction inside the Gaussian interval", ylabel="observed fraction", title="forces"
    )
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, directory / "calibration.png"))
    return written


def run_painn_training(config, train_atoms, val_atoms, test_atoms, *, resume: bool, progress: bool, log):
    """``mlipbias train`` with ``model.kind: painn``: train, save ``output.model``, evaluate the test."""
    from mlipbias.uq.metrics import format_table

    out = Path(config.output.directory)
    description = json.dumps({"trained_with": config.to_dict()}, default=list)
    log(f"{len(train_atoms)} training, {len(val_atoms)} validation, {len(test_atoms)} test structures; PaiNN")
    result = train_painn(
        train_atoms,
        val_atoms,
        settings=PaiNNSettings.from_dict(config.model.painn),
        uncertainty=config.uncertainty,
        training=config.training,
        output_dir=out,
        resume=resume,
        progress=progress,
        log=log,
        description=description,
    )
    path = save_painn(result.model, config.model_path, description)
    log(f"model written to {path} (uncertainty methods: {' '.join(result.model.methods) or 'none'})")
    tables = None
    if test_atoms:
        tables = evaluate_painn(result.model, test_atoms, val_atoms)
        log(f"test split ({len(test_atoms)} structures):")
        for method, table in tables.items():
            log(f"{method}:\n{format_table(table)}")
        payload = {"model": str(path), "n_structures": len(test_atoms), "metrics": jsonable_tables(tables)}
        (out / "test_metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return result.model, tables


def jsonable_tables(tables: dict) -> dict:
    return {
        method: {
            q: {k: (None if not np.isfinite(v) else float(v)) for k, v in row.items()}
            for q, row in table.items()
        }
        for method, table in tables.items()
    }
