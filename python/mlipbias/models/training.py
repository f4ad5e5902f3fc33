"""Training a BP-NN with its uncertainty methods: loss, Adam, learning-rate decay, early stopping.

:func:`train` does the whole job on prepared data:

1. scales the inputs per element and fits the per-element energy shift by linear regression of the
   training energies on composition (the output scale is that regression's RMSE per atom);
2. trains all ensemble members at once (each has its own initial weights; they see the same
   mini-batches) on ``w_E L(E/N) + w_F L(F) + w_S L(stress)`` with L the MSE or the MAE, plus the
   Gaussian or NIG negative log-likelihood of the heads (MVE, evidential); Adam, a learning-rate
   schedule on the validation loss, and early stopping that restores, for every member, the weights
   of its best validation epoch;
3. fits the post-hoc uncertainties on the training data (GMM on the last hidden layer, sketched
   gradient features with their precision matrices and max-dist subset);
4. calibrates every method on the validation data: the variance recalibration that turns a GMM
   score into a standard deviation (Tan et al. 2023, Eq. 13), and conformal factors c_E, c_F
   (Zaverkin et al. 2024) at the miscoverage level ``alpha``.

Every epoch appends a line to ``metrics.jsonl`` and writes ``checkpoint.pt`` (all state needed to
resume) in the output folder; ``best.mlip`` holds the best network so far. A crashed or interrupted
run keeps its history and continues with ``resume=True``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlipbias.descriptors import atom_forces, pair_gradients, virial
from mlipbias.descriptors.gaussian_moments import GaussianMoments
from mlipbias.models.data import AtomsData, Batch, structure_sum, voigt_stress
from mlipbias.models.gmnn import GMNN
from mlipbias.models.model import METHODS, MLIPModel, one_torch_thread, save_model
from mlipbias.models.network import ACTIVATIONS, BPNN
from mlipbias.uq import evidential, mve
from mlipbias.uq.calibration import DEFAULT_ALPHA
from mlipbias.uq.gradient_features import DEFAULT_ATOM_SUBSET

LOSSES = ("mse", "mae")
SCHEDULES = ("plateau", "exponential", "none")
HEAD_TRAINING = ("joint", "detached", "post_hoc")
CHECKPOINT_VERSION = 1


def log_line(message: str) -> None:
    """Print a progress message at once (also when stdout is a file)."""
    print(message, flush=True)


MODEL_KINDS = ("bpnn", "gmnn", "painn")
DEFAULT_HIDDEN = {"bpnn": (30, 30), "gmnn": (512, 512)}
DEFAULT_ACTIVATION = {"bpnn": "tanh", "gmnn": "silu"}


@dataclass
class ModelSettings:
    """Architecture.

    ``kind``: ``bpnn`` (symmetry functions, one network per element), ``gmnn`` (Gaussian moments,
    one network for all elements; :mod:`mlipbias.models.gmnn`) or ``painn`` with the PaiNN settings in
    ``painn`` (:mod:`mlipbias.models.painn`). ``hidden`` and ``activation``: None
    takes the kind's default ([30, 30] tanh; [512, 512] silu, the only GM-NN activation). GM-NN
    only: ``cutoff`` in A (None: 6 when every training structure is periodic, else 5),
    ``n_basis`` Gaussians, ``n_radial`` radial functions, ``n_contractions`` contraction groups.
    """

    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    kind: str = "bpnn"
    cutoff: float | None = None
    n_basis: int = 7
    n_radial: int = 5
    n_contractions: int = 8
    painn: dict = field(default_factory=dict)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return tuple(self.hidden) if self.hidden is not None else DEFAULT_HIDDEN.get(self.kind, (30, 30))

    @property
    def activation_name(self) -> str:
        return self.activation if self.activation is not None else DEFAULT_ACTIVATION.get(self.kind, "tanh")


@dataclass
class UncertaintySettings:
    """Which uncertainty methods to build, and their parameters.

    ``methods``: any of ensemble, mve, evidential, gmm, posterior, distance (mve and evidential
    change the network and exclude each other and the ensemble). ``n_members``: ensemble size.
    ``sketch_size`` (k), ``posterior_lambda`` and ``atom_subset``: gradient features.
    ``gmm_max_components``: largest mixture tried by BIC. ``alpha``: conformal miscoverage level.
    ``evidential_regularization``: lambda of the evidence regulariser. ``head_training``: ``joint``
    (seed 003, Nix & Weigend, Amini et al.) trains the whole network by the force NLL in every step:
    the NLL of the force residuals reaches the mean network through the forces and the shared hidden
    layers, and early stopping watches the loss including it; ``detached`` fits the heads by their
    NLL in every step on a detached last hidden layer and detached residuals (the network's energies
    and forces follow the accuracy loss alone); ``post_hoc`` trains the network as without a head,
    then fits the heads alone on the final network's residuals, computed once (``head_epochs``
    epochs at most, early stopping on the validation NLL): the cost of an energy-only training plus
    one force pass. ``head_energy_nll``: False drops the energy head's term from the NLL of PaiNN
    training, leaving Tan et al.'s NLL on forces alone (SI Eq. 3-4, 6-9).
    one force pass. ``nll_beta``: beta of the MVE force NLL in ``joint`` training (0: the Gaussian
    NLL of seed 003; > 0: Seitzer et al.'s beta-NLL, :func:`mlipbias.uq.mve.loss`; the default 0.5 is
    theirs, and with it joint MVE learns the forces as fast as the MAE-trained network,
    ``docs/painn.md``). ``warmup_epochs`` (PaiNN, ``joint``): the first epochs train the mean network
    by the accuracy loss with force weight ``max(force_weight, 1)`` and the heads by their NLL on
    detached residuals, then the published joint loss takes over (Nix & Weigend's own protocol).
    """

    methods: tuple[str, ...] = ("ensemble",)
    n_members: int = 3
    sketch_size: int = 32
    posterior_lambda: float = 1e-6
    atom_subset: int = DEFAULT_ATOM_SUBSET
    gmm_max_components: int = 8
    alpha: float = DEFAULT_ALPHA
    evidential_regularization: float = evidential.DEFAULT_REGULARIZATION
    head_training: str = "joint"
    head_epochs: int = 300
    head_energy_nll: bool = True
    nll_beta: float = 0.5
    warmup_epochs: int = 0


@dataclass
class TrainingSettings:
    """Optimisation. Weights multiply the energy-per-atom, force-component and stress-component losses."""

    epochs: int = 500
    batch_size: int = 16
    learning_rate: float = 1e-3
    schedule: str = "plateau"
    decay_factor: float = 0.5
    decay_patience: int = 25
    decay_rate: float = 0.995
    min_learning_rate: float = 1e-5
    early_stopping_patience: int = 80
    loss: str = "mse"
    energy_weight: float = 1.0
    # Forces and stresses by default: a model fitted to energies alone is unfit for MD (see
    # docs/models.md, "Loss weights", for where these values come from and what they cost).
    force_weight: float = 1.0
    stress_weight: float = 1.0
    nll_weight: float = 1.0
    seed: int = 0
    device: str = "auto"


@dataclass
class TrainingResult:
    """The trained model and what happened: the best epoch and validation loss of every member."""

    model: MLIPModel
    best_epoch: list[int]
    best_loss: list[float]
    epochs_run: int
    history: list[dict] = field(default_factory=list)


def uncertainty_key(uq: UncertaintySettings) -> dict:
    """The uncertainty settings a checkpoint records; a default head_energy_nll is left out, so that
    checkpoints written before that setting existed still resume."""
    values = asdict(uq)
    if values["head_energy_nll"] is True:
        del values["head_energy_nll"]
    return values


def check_settings(model: ModelSettings, uq: UncertaintySettings, training: TrainingSettings) -> None:
    """ValueError naming the setting, its value and what is allowed."""

    def fail(name, value, allowed):
        raise ValueError(f"setting {name} = {value!r}: {allowed}")

    if model.kind not in MODEL_KINDS:
        fail("model.kind", model.kind, f"expected one of {', '.join(MODEL_KINDS)}")
    if model.kind == "painn":
        from mlipbias.models.painn_training import check_painn_settings

        check_painn_settings(model.painn, uq, training)
    elif model.painn:
        fail("model.painn", model.painn, "PaiNN settings need model.kind: painn")
    if model.activation is not None and model.activation not in ACTIVATIONS:
        fail("model.activation", model.activation, f"expected one of {', '.join(ACTIVATIONS)}")
    if model.kind == "gmnn" and model.activation not in (None, "silu"):
        fail("model.activation", model.activation, "GM-NN uses silu (leave it out or write silu)")
    hidden = model.layer_widths
    if not hidden or not all(_positive_integer(h) for h in hidden):
        fail("model.hidden", list(hidden), "expected a list of positive layer widths, e.g. [30, 30]")
    if model.cutoff is not None and not 0 < model.cutoff < math.inf:
        fail("model.cutoff", model.cutoff, "expected a positive cutoff in A (or null for the default)")
    for name in ("n_basis", "n_radial", "n_contractions"):
        value = getattr(model, name)
        if not _positive_integer(value):
            fail(f"model.{name}", value, "expected a positive integer")
    if model.n_contractions > 8:
        fail("model.n_contractions", model.n_contractions, "expected 1 to 8 contraction groups")
    methods = list(uq.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        fail("uncertainty.methods", methods, f"unknown {unknown}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        fail("uncertainty.methods", methods, "lists a method twice")
    heads = [m for m in methods if m in ("mve", "evidential")]
    if len(heads) > 1 or (heads and "ensemble" in methods):
        fail(
            "uncertainty.methods",
            methods,
            "mve, evidential and ensemble exclude each other (one network head)",
        )
    if "ensemble" in methods and (int(uq.n_members) != uq.n_members or uq.n_members < 2):
        fail("uncertainty.n_members", uq.n_members, "an ensemble needs at least 2 members")
    if uq.head_training not in HEAD_TRAINING:
        fail("uncertainty.head_training", uq.head_training, f"expected one of {', '.join(HEAD_TRAINING)}")
    if not isinstance(uq.head_energy_nll, bool):
        fail("uncertainty.head_energy_nll", uq.head_energy_nll, "expected true or false")
    if not uq.head_energy_nll and model.kind != "painn":
        fail("uncertainty.head_energy_nll", False, "only PaiNN training can drop the energy NLL")
    for name in ("sketch_size", "atom_subset", "gmm_max_components", "head_epochs"):
        value = getattr(uq, name)
        if isinstance(value, bool) or int(value) != value or value < 1:
            fail(f"uncertainty.{name}", value, "expected a positive integer")
    if not 0 <= uq.nll_beta <= 1:
        fail("uncertainty.nll_beta", uq.nll_beta, "expected 0 <= nll_beta <= 1")
    if (
        isinstance(uq.warmup_epochs, bool)
        or int(uq.warmup_epochs) != uq.warmup_epochs
        or uq.warmup_epochs < 0
    ):
        fail("uncertainty.warmup_epochs", uq.warmup_epochs, "expected an integer >= 0")
    if uq.warmup_epochs and (model.kind != "painn" or uq.head_training != "joint"):
        fail(
            "uncertainty.warmup_epochs",
            uq.warmup_epochs,
            "a warm-up is implemented for model.kind painn with head_training joint; set 0",
        )
    if not 0 < uq.posterior_lambda < math.inf:
        fail("uncertainty.posterior_lambda", uq.posterior_lambda, "expected a finite number > 0")
    if not 0 < uq.alpha < 1:
        fail("uncertainty.alpha", uq.alpha, "expected 0 < alpha < 1")
    if not 0 <= uq.evidential_regularization < math.inf:
        fail(
            "uncertainty.evidential_regularization",
            uq.evidential_regularization,
            "expected a finite number >= 0",
        )
    t = training
    if isinstance(t.seed, bool) or int(t.seed) != t.seed or t.seed < 0:
        fail("training.seed", t.seed, "expected an integer >= 0")
    for name in ("epochs", "batch_size", "decay_patience", "early_stopping_patience"):
        value = getattr(t, name)
        if isinstance(value, bool) or int(value) != value or value < 1:
            fail(f"training.{name}", value, "expected a positive integer")
    if t.schedule not in SCHEDULES:
        fail("training.schedule", t.schedule, f"expected one of {', '.join(SCHEDULES)}")
    if t.loss not in LOSSES:
        fail("training.loss", t.loss, f"expected one of {', '.join(LOSSES)}")
    for name in ("learning_rate", "min_learning_rate"):
        if not 0 < getattr(t, name) < math.inf:
            fail(f"training.{name}", getattr(t, name), "expected a finite number > 0")
    if not 0 < t.decay_factor < 1:
        fail("training.decay_factor", t.decay_factor, "expected 0 < decay_factor < 1")
    if not 0 < t.decay_rate <= 1:
        fail("training.decay_rate", t.decay_rate, "expected 0 < decay_rate <= 1")
    for name in ("energy_weight", "force_weight", "stress_weight", "nll_weight"):
        if not 0 <= getattr(t, name) < math.inf:
            fail(f"training.{name}", getattr(t, name), "expected a finite number >= 0")
    if t.energy_weight + t.force_weight + t.stress_weight == 0:
        fail("training.energy_weight", t.energy_weight, "energy, force and stress weights are all 0")
    if t.device not in ("auto", "cpu") and not str(t.device).startswith("cuda"):
        fail("training.device", t.device, "expected auto, cpu or cuda[:N]")


def _positive_integer(value) -> bool:
    """An int (or integral float) >= 1; False for inf, NaN, strings and booleans."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and 1 <= value < math.inf
        and int(value) == value
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return torch.device(name)


# ------------------------------------------------------------------------------------------ loss


def _residual_loss(residual: torch.Tensor, kind: str, dims) -> torch.Tensor:
    """Mean of squared (mse) or absolute (mae) residuals over ``dims``."""
    return (residual**2 if kind == "mse" else residual.abs()).mean(dim=dims)


def batch_outputs(
    net: BPNN, batch: Batch, *, forces: bool, stress: bool, create_graph: bool, detach_head: bool | str = True
):
    """Member energies (M, S), atom outputs, and when asked member forces (M, n, 3), stresses (M, S, 6).

    ``detach_head`` feeds the heads a detached last hidden layer (``joint`` head training does not)."""
    M = net.n_members
    need_grad = forces or stress
    if isinstance(net, GMNN):  # Gaussian moments from the pair vectors; forces by autograd through them
        G = net.pair_vectors(batch, need_grad)
        out = net(G, batch, detach_head=detach_head)
    else:
        G = batch.G.unsqueeze(0).repeat(M, 1, 1).requires_grad_(True) if need_grad else batch.G
        out = net(G, batch.species, detach_head=detach_head)
    energies = structure_sum(out.energy, batch.structure, batch.n_structures)
    F = S = None
    if need_grad:
        # The graph is kept for the energy loss's backward even when forces are not differentiated.
        dEdG = torch.autograd.grad(energies.sum(), G, create_graph=create_graph, retain_graph=True)[0]
        nb = batch.neighbours
        grads = dEdG if isinstance(net, GMNN) else pair_gradients(dEdG, net.descriptor, nb)
        F = atom_forces(grads, nb.i, nb.j, batch.G.shape[0])
        if stress:
            pair_structure = torch.as_tensor(nb.pair_structure, device=grads.device)
            W = virial(grads, nb.D, pair_structure, batch.n_structures)
            S = voigt_stress(W, batch.volume)
    return energies, out, F, S


def batch_loss(
    net: BPNN, batch: Batch, settings: TrainingSettings, uq: UncertaintySettings, *, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(loss to minimise, per-member accuracy loss (M,), parts) for one batch.

    The accuracy loss (what early stopping watches) is the weighted energy/force/stress loss; the
    loss to minimise adds the heads' negative log-likelihood. With ``joint`` head training the NLL
    of the force residuals trains the mean too (seed 003 SI Eq. 3-4 and 6-9), and it is part of the
    loss early stopping watches; the energy-variance head's NLL always sees detached energy
    residuals (the energy is fitted by the accuracy loss, as seed 003 fits it by MAE).
    """
    t = settings
    per_step_head = net.head is not None and uq.head_training in ("joint", "detached")
    joint = net.head is not None and uq.head_training == "joint"
    use_forces = t.force_weight > 0 or (per_step_head and batch.forces is not None)
    use_stress = t.stress_weight > 0 and batch.stress is not None
    # Forces that only feed detached heads' NLL need no double backward: with force_weight 0 a
    # detached MVE/evidential step then costs one C++ vjp instead of a vjp and a jvp.
    differentiate = create_graph and (t.force_weight > 0 or use_stress or (joint and use_forces))
    energies, out, F, S = batch_outputs(
        net,
        batch,
        forces=use_forces,
        stress=use_stress,
        create_graph=differentiate,
        detach_head="energy" if joint else True,
    )
    parts = {}
    e_res = (energies - batch.energy) / batch.n_atoms  # (M, S) per atom
    per_member = t.energy_weight * _residual_loss(e_res, t.loss, 1)
    parts["energy_rmse"] = torch.sqrt((e_res.detach() ** 2).mean(dim=1))
    f_res = None
    if F is not None and batch.forces is not None:
        f_res = F - batch.forces
        parts["force_rmse"] = torch.sqrt((f_res.detach() ** 2).mean(dim=(1, 2)))
        if t.force_weight > 0:
            per_member = per_member + t.force_weight * _residual_loss(f_res, t.loss, (1, 2))
    if S is not None:
        mask = batch.stress_mask
        s_res = (S - batch.stress)[:, mask]
        if s_res.shape[1]:
            per_member = per_member + t.stress_weight * _residual_loss(s_res, t.loss, (1, 2))
            parts["stress_rmse"] = torch.sqrt((s_res.detach() ** 2).mean(dim=(1, 2)))
    total = per_member.sum()
    if per_step_head and t.nll_weight > 0:
        force_res = None if f_res is None else f_res[0]
        if force_res is not None and not joint:
            force_res = force_res.detach()
        energy_res = (e_res[0] * batch.n_atoms).detach()
        nll = head_nll(net, out.head[0], batch, energy_res, force_res, uq, uq.nll_beta if joint else 0.0)
        parts["nll"] = nll.detach()
        total = total + t.nll_weight * nll
        if joint:  # the NLL is the force term of the published loss: early stopping watches it
            per_member = per_member + t.nll_weight * nll
    return total, per_member, parts


def head_nll(
    net: BPNN, raw, batch: Batch, energy_residual, force_residual, uq: UncertaintySettings, beta: float = 0.0
):
    """The MVE or evidential NLL of member 0's raw head outputs for total-energy and force residuals
    (``beta``: the MVE's beta-NLL, ``uncertainty.nll_beta`` in joint training)."""
    scale = net.head_scale[0]
    if net.head == "mve":
        return mve.loss(
            raw, scale, batch.structure, batch.n_structures, energy_residual, force_residual, beta
        )
    return evidential.loss(
        raw,
        scale,
        batch.structure,
        batch.n_structures,
        energy_residual,
        force_residual,
        uq.evidential_regularization,
    )


# ------------------------------------------------------------------------------------------ training


def build_network(
    train_data: AtomsData, model: ModelSettings, uq: UncertaintySettings, seed: int
) -> BPNN | GMNN:
    """A fresh network with scaling, shift and output scale fitted on the training data."""
    head = next((m for m in uq.methods if m in ("mve", "evidential")), None)
    n_members = int(uq.n_members) if "ensemble" in uq.methods else 1
    if model.kind == "gmnn":
        if not isinstance(train_data.descriptor, GaussianMoments):
            raise ValueError("model.kind gmnn needs data prepared with Gaussian moments (GaussianMoments)")
        net = GMNN(train_data.descriptor, model.layer_widths, n_members, head=head, seed=seed)
    else:
        if isinstance(train_data.descriptor, GaussianMoments):
            raise ValueError("the data was prepared with Gaussian moments: set model.kind gmnn")
        net = BPNN(
            train_data.descriptor, model.layer_widths, model.activation_name, n_members, head=head, seed=seed
        )
        net.fit_scaling(train_data.G, train_data.species)
    _, scale = net.fit_energy_shift(train_data.energy, train_data.counts)
    if head is not None:
        if not train_data.has_forces:
            raise ValueError(f"the {head} uncertainty learns force variances: the training data needs forces")
        module = mve if head == "mve" else evidential
        scales = module.initial_scales(scale, float(np.mean(train_data.forces**2)))
        with torch.no_grad():
            net.head_scale[:] = torch.tensor(scales, dtype=net.head_scale.dtype)
            # Every softplus starts at 1: variances at their units, nu = alpha - 1 = 1.
            names = ["head_b"] if isinstance(net, GMNN) else [f"{el}_head_b" for el in net.elements]
            for name in names:
                net.weights[name][:] = mve.inverse_softplus(1.0)
    return net


def train(
    train_data: AtomsData,
    validation_data: AtomsData,
    *,
    model: ModelSettings | None = None,
    uncertainty: UncertaintySettings | None = None,
    training: TrainingSettings | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = log_line,
    description: str = "",
    tensorboard: bool = False,
    init_model: str | Path | MLIPModel | None = None,
) -> TrainingResult:
    """Train a model with its uncertainty methods (see the module docstring for the steps).

    Both data sets need reference energies; forces and stresses are used when the weights ask for
    them (stresses of the structures that have one). ``output_dir`` receives ``metrics.jsonl``,
    ``metrics.csv``, ``learning_curve.png``, ``checkpoint.pt`` and ``best.mlip`` (nothing is written
    without it), and with ``tensorboard`` TensorBoard events in ``tensorboard/`` when
    ``torch.utils.tensorboard`` imports (:mod:`mlipbias.models.training_log`); ``resume``
    continues from its checkpoint. Torch runs on one intra-op thread meanwhile
    (:func:`mlipbias.models.model.one_torch_thread`). ``init_model`` (a model or a ``.mlip`` path of
    the same architecture) warm-starts from its weights, input scaling and energy shift instead of
    fresh ones (active learning); a checkpoint being resumed takes precedence.
    """
    with one_torch_thread():
        return _train(
            train_data,
            validation_data,
            model or ModelSettings(),
            uncertainty or UncertaintySettings(),
            training or TrainingSettings(),
            output_dir,
            resume,
            progress,
            log,
            description,
            tensorboard,
            init_model,
        )


def _train(
    train_data,
    validation_data,
    model,
    uq,
    t,
    output_dir,
    resume,
    progress,
    log,
    description,
    tensorboard,
    init_model,
):
    check_settings(model, uq, t)
    _check_data(train_data, validation_data, t, uq)
    if t.stress_weight > 0 and not train_data.has_stress:
        log(f"training.stress_weight is {t.stress_weight}, but no training structure has a stress: not used")
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    net = build_network(train_data, model, uq, t.seed).to(device)
    if init_model is not None:
        warm_start(net, init_model)
        log(f"warm start from {init_model if isinstance(init_model, (str, Path)) else 'the given model'}")
    params = net.parameter_groups(t.learning_rate) if isinstance(net, GMNN) else net.parameters()
    optimizer = torch.optim.Adam(params, lr=t.learning_rate)
    scheduler = _scheduler(optimizer, t)
    # A resumed run must use the same settings, except that it may run for more epochs.
    training_key = {k: v for k, v in asdict(t).items() if k != "epochs"}
    settings_key = json.dumps(
        {"model": asdict(model), "uq": uncertainty_key(uq), "training": training_key},
        sort_keys=True,
        default=list,
    )
    out = Path(output_dir) if output_dir is not None else None
    state = start_state(net, net.n_members, out, resume, optimizer, scheduler, settings_key, device, log)
    need_pairs = (
        t.force_weight > 0
        or (t.stress_weight > 0 and train_data.has_stress)
        or (net.head is not None and uq.head_training in ("joint", "detached"))
    )
    run_epochs(
        net,
        optimizer,
        scheduler,
        t,
        state,
        n_train=len(train_data),
        batches=lambda order: (
            train_data.batch(group, device, neighbours=need_pairs)
            for group in train_data.batches(t.batch_size, order)
        ),
        batch_loss=lambda batch, epoch: batch_loss(net, batch, t, uq, create_graph=True)[0],
        validate=lambda epoch: _validation(net, validation_data, t, uq, device, need_pairs),
        copy_members=_copy_members,
        save_best=lambda best: _save_best(net, best, out / "best.mlip", description),
        out=out,
        settings_key=settings_key,
        log=log,
        progress=progress,
        tensorboard=tensorboard,
    )
    if net.head is not None and uq.head_training == "post_hoc":
        fit_heads(net, train_data, validation_data, uq, t, device, progress=progress, log=log)
    result_model = MLIPModel(net, description=description)
    finish_uncertainty(result_model, train_data, validation_data, uq, seed=t.seed, log=log)
    return TrainingResult(
        result_model, list(state["best_epoch"]), list(state["best_loss"]), state["epoch"], state["history"]
    )


def start_state(net, n_members: int, out, resume: bool, optimizer, scheduler, settings_key: str, device, log):
    """The training state of :func:`run_epochs`: fresh, or that of ``out/checkpoint.pt`` with ``resume``
    (a checkpoint is deleted without it). Creates ``out``."""
    state = {
        "epoch": 0,
        "best_loss": [math.inf] * n_members,
        "best_epoch": [0] * n_members,
        "best_params": copy.deepcopy(net.state_dict()),
        "history": [],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "checkpoint.pt"
        if resume and checkpoint.exists():
            state = _load_checkpoint(checkpoint, net, optimizer, scheduler, settings_key, device)
            log(f"resuming from {checkpoint} after epoch {state['epoch']}")
        elif checkpoint.exists() and not resume:
            checkpoint.unlink()
        elif resume:
            log(f"no checkpoint in {out}: starting at epoch 1")
    return state


def run_epochs(
    net,
    optimizer,
    scheduler,
    t: TrainingSettings,
    state: dict,
    *,
    n_train: int,
    batches: Callable[[np.ndarray], Iterable],
    batch_loss: Callable[[object, int], torch.Tensor],
    validate: Callable[[int], dict],
    copy_members: Callable[[dict, dict, list[int]], None],
    save_best: Callable[[dict], None],
    out: Path | None,
    settings_key: str,
    log: Callable[[str], None],
    progress: bool,
    tensorboard: bool = False,
    before_epoch: Callable[[int], None] | None = None,
) -> None:
    """The epoch loop of every model kind (BP-NN, GM-NN, PaiNN): all members train on the same
    mini-batches; after each epoch every member that improved its validation loss keeps those weights
    (``copy_members(best, current, members)``), the schedule steps, the epoch's record goes to the
    logs (:class:`~mlipbias.models.training_log.TrainingLog`) and, with ``out``, ``save_best(best)``
    and the checkpoint are written; early stopping and the learning-rate floor end it. Afterwards
    ``net`` holds every member's best weights (in eval mode).

    ``batches(order)`` yields the training batches of a permutation of the ``n_train`` training
    structures, ``batch_loss(batch, epoch)`` their losses; ``validate(epoch)`` gives per-member
    ``loss`` and ``energy_rmse`` (optionally ``force_rmse``, ``stress_rmse``); ``before_epoch(epoch)``
    runs first in every epoch (e.g. the end of a warm-up).
    """
    from tqdm import tqdm

    from mlipbias.models.training_log import TrainingLog, rmse_text

    history_log = TrainingLog(out, tensorboard, log)
    history_log.start(state["history"])
    bar = tqdm(
        total=t.epochs,
        initial=state["epoch"],
        desc="training",
        unit="epoch",
        file=sys.stderr,
        disable=None if progress else True,
    )
    start_epoch = state["epoch"]
    if start_epoch and start_epoch - max(state["best_epoch"]) >= t.early_stopping_patience:
        log(f"the run in {out} had stopped early after epoch {start_epoch}; nothing to continue")
        start_epoch = t.epochs
    for epoch in range(start_epoch + 1, t.epochs + 1):
        started = time.perf_counter()
        if before_epoch is not None:
            before_epoch(epoch)
        net.train()
        train_sum, n_batches = 0.0, 0
        # A pure function of (seed, epoch), so a resumed run sees the same batches.
        order = np.random.default_rng([t.seed, epoch]).permutation(n_train)
        for batch in batches(order):
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(batch, epoch)
            if not torch.isfinite(loss):  # a NaN step would make every parameter NaN
                raise ValueError(
                    f"epoch {epoch}: the training loss is {float(loss.detach())}: training.learning_rate "
                    f"({optimizer.param_groups[0]['lr']:g}) or a loss weight is too large for these data; "
                    "lower it and train again (--overwrite); the last finished epoch is in the checkpoint"
                )
            loss.backward()
            optimizer.step()
            train_sum += float(loss.detach())
            n_batches += 1
        net.eval()
        val = validate(epoch)
        lr = optimizer.param_groups[0]["lr"]
        improved = []
        for m in range(len(state["best_loss"])):
            if val["loss"][m] < state["best_loss"][m]:
                state["best_loss"][m] = float(val["loss"][m])
                state["best_epoch"][m] = epoch
                improved.append(m)
        if improved:
            copy_members(state["best_params"], net.state_dict(), improved)
        if t.schedule == "plateau":
            scheduler.step(float(np.mean(val["loss"])))
        elif t.schedule == "exponential":
            scheduler.step()
        record = {
            "epoch": epoch,
            "learning_rate": lr,
            "train_loss": train_sum / max(n_batches, 1),
            "validation_loss": [float(v) for v in val["loss"]],
            "validation_energy_rmse": [float(v) for v in val["energy_rmse"]],
            "seconds": time.perf_counter() - started,
        }
        for key in ("force_rmse", "stress_rmse"):
            if key in val:
                record[f"validation_{key}"] = [float(v) for v in val[key]]
        state["history"].append(record)
        state["epoch"] = epoch
        history_log.add(record, state["history"])
        if out is not None:
            if improved:
                save_best(state["best_params"])
            _save_checkpoint(out / "checkpoint.pt", net, optimizer, scheduler, state, settings_key)
        bar.update(1)
        bar.set_postfix_str(f"loss {record['train_loss']:.3g}, val RMSE {rmse_text(record)}, lr {lr:.2g}")
        # Without a bar (--no-progress, or output that is not a terminal) a line every tenth of the run.
        if bar.disable and (epoch % max(1, t.epochs // 10) == 0 or epoch == 1):
            log(
                f"epoch {epoch}/{t.epochs}: train loss {record['train_loss']:.4g}, validation RMSE "
                f"{rmse_text(record)}, lr {lr:.3g}"
            )
        since_best = epoch - max(state["best_epoch"])
        if since_best >= t.early_stopping_patience:
            log(f"early stopping after epoch {epoch}: no member improved for {since_best} epochs")
            break
        if lr <= t.min_learning_rate * (1 + 1e-9) and t.schedule != "none" and since_best >= t.decay_patience:
            log(f"stopping after epoch {epoch}: learning rate at its minimum and no improvement")
            break
    bar.close()
    history_log.close(state["history"])
    net.load_state_dict(state["best_params"])
    net.eval()
    for m in range(len(state["best_loss"])):
        log(f"member {m}: best validation loss {state['best_loss'][m]:.4g} at epoch {state['best_epoch'][m]}")


def warm_start(net: BPNN, init_model) -> None:
    """Copy the parameters and buffers of ``init_model`` (MLIPModel or .mlip path) into ``net``;
    a ValueError names what differs when the architectures do not match."""
    from mlipbias.models.model import load_model

    source = init_model if isinstance(init_model, MLIPModel) else load_model(init_model)
    state, target = source.network.state_dict(), net.state_dict()
    if tuple(source.network.elements) != tuple(net.elements):
        raise ValueError(f"init model has elements {source.network.elements}, the data {net.elements}")
    missing = sorted(set(target) ^ set(state))
    shapes = sorted(k for k in set(target) & set(state) if tuple(target[k].shape) != tuple(state[k].shape))
    if missing or shapes:
        raise ValueError(
            "init model does not match the configured architecture (descriptor, hidden layers, members, "
            f"heads): differing parameters {', '.join((missing + shapes)[:6])}"
        )
    net.load_state_dict({k: v.to(target[k].device, target[k].dtype) for k, v in state.items()})


def _residuals(net: BPNN, data: AtomsData, device, batch_size: int):
    """Member 0's total-energy residuals (S,) and force residuals (n_atoms, 3) on ``data`` (eV, eV/A)."""
    energy, forces = [], []
    for group in data.batches(max(batch_size, 32)):
        batch = data.batch(group, device, neighbours=True)
        energies, _, F, _ = batch_outputs(net, batch, forces=True, stress=False, create_graph=False)
        energy.append((energies[0] - batch.energy).detach())
        forces.append((F[0] - batch.forces).detach())
    return torch.cat(energy), torch.cat(forces)


def fit_heads(
    net: BPNN,
    train_data: AtomsData,
    validation_data: AtomsData,
    uq: UncertaintySettings,
    t: TrainingSettings,
    device,
    *,
    progress: bool = True,
    log: Callable[[str], None] = log_line,
) -> None:
    """Post-hoc heads: fit the MVE/evidential heads alone by their NLL on the trained network's residuals.

    The residuals of the final network are computed once (one force pass over the training and the
    validation data); then Adam trains the head weights only (mini-batches of ``t.batch_size``
    structures, ``t.learning_rate``) for up to ``uq.head_epochs`` epochs and keeps the heads of the
    epoch with the lowest validation NLL (early stopping after ``t.early_stopping_patience`` epochs).
    """
    from tqdm import tqdm

    residuals = {}
    for name, data in (("training", train_data), ("validation", validation_data)):
        if not data.has_forces or data.neighbours is None:
            raise ValueError(f"post-hoc {net.head} heads need forces and neighbour pairs in the {name} data")
        residuals[name] = _residuals(net, data, device, t.batch_size)
    params = {k: p for k, p in net.weights.items() if "_head_" in k}
    optimizer = torch.optim.Adam(params.values(), lr=t.learning_rate)

    def epoch_nll(data, res, order, train: bool) -> float:
        total, count = 0.0, 0
        for group in data.batches(t.batch_size if train else max(t.batch_size, 32), order):
            batch = data.batch(group, device, neighbours=False)
            idx = torch.as_tensor(group, device=device)
            atoms = torch.as_tensor(data.atom_indices(group), device=device)
            with torch.set_grad_enabled(train):
                if isinstance(net, GMNN):
                    raw = net(net.pair_vectors(batch, False), batch, detach_head=True).head[0]
                else:
                    raw = net(batch.G, batch.species, detach_head=True).head[0]
                nll = head_nll(net, raw, batch, res[0][idx], res[1][atoms], uq)
            if train:
                optimizer.zero_grad(set_to_none=True)
                nll.backward()
                optimizer.step()
            total, count = total + float(nll.detach()) * len(group), count + len(group)
        return total / count

    best, best_epoch, best_state = math.inf, 0, {k: p.detach().clone() for k, p in params.items()}
    bar = tqdm(
        total=uq.head_epochs,
        desc="post-hoc heads",
        unit="epoch",
        file=sys.stderr,
        disable=None if progress else True,
    )
    for epoch in range(1, uq.head_epochs + 1):
        order = np.random.default_rng([t.seed, 10**6 + epoch]).permutation(len(train_data))
        train_nll = epoch_nll(train_data, residuals["training"], order, True)
        val_nll = epoch_nll(validation_data, residuals["validation"], None, False)
        if val_nll < best:
            best, best_epoch = val_nll, epoch
            best_state = {k: p.detach().clone() for k, p in params.items()}
        bar.update(1)
        bar.set_postfix(train=f"{train_nll:.4g}", val=f"{val_nll:.4g}")
        if epoch - best_epoch >= t.early_stopping_patience:
            break
    bar.close()
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(best_state[k])
    log(f"post-hoc {net.head} heads: best validation NLL {best:.4g} at epoch {best_epoch} of {epoch}")


def _check_data(train_data: AtomsData, validation_data: AtomsData, t: TrainingSettings, uq) -> None:
    for name, data in (("training", train_data), ("validation", validation_data)):
        if data.energy is None:
            raise ValueError(f"the {name} data has no reference energies")
        if t.force_weight > 0 and not data.has_forces:
            raise ValueError(
                f"training.force_weight is {t.force_weight} but the {name} data has no forces (for every "
                "structure); set training.force_weight: 0 to train on energies only"
            )
        heads = any(m in ("mve", "evidential") for m in uq.methods)
        if heads and uq.head_training == "post_hoc" and not data.has_forces:
            raise ValueError(
                f"post-hoc mve and evidential heads fit force residuals: the {name} data needs forces"
            )
        stress = t.stress_weight > 0 and data.has_stress
        if (t.force_weight > 0 or stress or heads) and data.neighbours is None:
            raise ValueError(
                f"the {name} data was prepared without neighbour pairs, needed for forces (force or stress "
                "weights, mve and evidential heads)"
            )
    if train_data.descriptor != validation_data.descriptor:
        raise ValueError("training and validation data were prepared with different descriptors")


def _scheduler(optimizer, t: TrainingSettings):
    if t.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=t.decay_factor, patience=t.decay_patience, min_lr=t.min_learning_rate
        )
    if t.schedule == "exponential":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: max(t.decay_rate**e, t.min_learning_rate / t.learning_rate)
        )
    return None


def _validation(net, data: AtomsData, t, uq, device, need_pairs) -> dict:
    """Per-member validation loss and RMSEs over the whole validation set (weighted by batch size)."""
    sums: dict[str, torch.Tensor] = {}
    totals: dict[str, int] = {}
    for group in data.batches(max(t.batch_size, 32)):
        batch = data.batch(group, device, neighbours=need_pairs)
        with torch.set_grad_enabled(need_pairs):
            _, per_member, parts = batch_loss(net, batch, t, uq, create_graph=False)
        items = {"loss": per_member.detach(), **{k: v**2 for k, v in parts.items() if k.endswith("rmse")}}
        for key, value in items.items():
            # Structures weigh equally; the stress RMSE averages over those with a stress.
            w = int(batch.stress_mask.sum()) if key == "stress_rmse" else len(group)
            sums[key] = sums.get(key, 0.0) + w * value.detach().cpu()
            totals[key] = totals.get(key, 0) + w
    out = {key: (value / totals[key]).numpy() for key, value in sums.items()}
    for key in list(out):
        if key.endswith("rmse"):
            out[key] = np.sqrt(out[key])
    return out


def _copy_members(target: dict, source: dict, members: list[int]) -> None:
    """Copy the given members' slices (leading axis) of every parameter from ``source`` into ``target``."""
    for name, value in source.items():
        if name.startswith("weights."):
            for m in members:
                target[name][m] = value[m].detach().clone()


def _save_best(net: BPNN, best_params: dict, path: Path, description: str) -> None:
    save_model(MLIPModel(net.clone(best_params), description=description), path)


def _plain(value):
    """``value`` as tensors and plain Python types only, what ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint entry of type {type(value).__name__} is not a tensor or plain type")


def _save_checkpoint(path: Path, net, optimizer, scheduler, state: dict, settings_key: str) -> None:
    payload = {
        "version": CHECKPOINT_VERSION,
        "settings": settings_key,
        "network": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "state": state,
    }
    from mlipbias.models.torch_files import save_plain

    save_plain(_plain(payload), path)


def _load_checkpoint(path: Path, net, optimizer, scheduler, settings_key: str, device) -> dict:
    from mlipbias.models.torch_files import load_plain

    payload = load_plain(
        path, "checkpoint", "delete it and start the run again with --overwrite", map_location=device
    )
    keys = ("version", "settings", "network", "optimizer", "scheduler", "state")
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise ValueError(f"{path}: not an mlipbias training checkpoint (expected entries {', '.join(keys)})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} is not {CHECKPOINT_VERSION}")
    if payload["settings"] != settings_key:
        raise ValueError(
            f"{path}: the checkpoint was written with other settings; resume with the same configuration "
            "or start a new output folder"
        )
    net.load_state_dict(payload["network"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload["state"]


# ------------------------------------------------------------------------------------------ uncertainty


def network_features(
    net: BPNN, data: AtomsData, *, hidden: bool = False, sketch=None, chunk: int = 20000
) -> np.ndarray:
    """Member 0's last hidden layer (``hidden``) or sketched gradient features of every atom of ``data``."""
    device = net.energy_scale.device
    rows = []
    if isinstance(net, GMNN):  # descriptors need the pairs: whole structures at a time
        with torch.no_grad():
            for group in data.batches(32):
                batch = data.batch(group, device)
                out = net(net.pair_vectors(batch, False), batch, hidden=hidden, sketch=sketch)
                rows.append((out.hidden[0] if hidden else out.features).cpu().numpy())
        return np.concatenate(rows)
    with torch.no_grad():
        for start in range(0, len(data.G), chunk):
            G = torch.as_tensor(data.G[start : start + chunk], device=device)
            species = torch.as_tensor(data.species[start : start + chunk], device=device)
            out = net(G, species, hidden=hidden, sketch=sketch)
            rows.append((out.hidden[0] if hidden else out.features).cpu().numpy())
    return np.concatenate(rows)


def finish_uncertainty(
    model: MLIPModel,
    train_data: AtomsData,
    validation_data: AtomsData,
    uq: UncertaintySettings,
    *,
    seed: int = 0,
    log: Callable[[str], None] = log_line,
) -> None:
    """Fit the post-hoc methods on the training data and calibrate all methods on validation data.

    Sets ``model.methods`` (ensemble or head first, then gmm, posterior, distance), ``model.gmm``,
    ``model.gradient`` and ``model.calibration``.
    """
    from mlipbias.uq.gmm import GMMUncertainty
    from mlipbias.uq.gradient_features import GradientFeatures

    net = model.network
    methods = [m for m in METHODS if m in uq.methods]
    if "gmm" in methods:
        hidden = network_features(net, train_data, hidden=True)
        model.gmm = GMMUncertainty.fit(
            net.elements, hidden, train_data.species, max_components=uq.gmm_max_components, seed=seed
        )
        log(f"GMM components by BIC: {model.gmm.n_components}")
    if "posterior" in methods or "distance" in methods:
        gradient = GradientFeatures.random(net, uq.sketch_size, seed=seed, lam=uq.posterior_lambda)
        if isinstance(net, GMNN):
            net.scale_sketch(gradient)
        sketch = gradient.sketch(net.energy_scale)
        phi = network_features(net, train_data, sketch=sketch)
        structure = np.repeat(np.arange(len(train_data)), train_data.n_atoms)
        model.gradient = gradient.fit(phi, structure, train_data.n_atoms, uq.atom_subset)
        log(
            f"gradient features: K = {gradient.n_features}, "
            f"{len(gradient.train_atom)} atoms in the max-dist subset"
        )
    calibrate(model, validation_data, methods, uq.alpha, log=log)


def calibrate(
    model: MLIPModel, data: AtomsData, methods, alpha: float, *, log: Callable[[str], None] = log_line
) -> dict:
    """Calibrate ``methods`` of ``model`` on labelled ``data``; sets ``model.methods``, ``model.calibration``.

    GMM: the variance recalibration ``sigma^2 = a s + b`` of its scores (energy and force). Every
    method: conformal factors c_E on |E - E_ref| against U, c_F on the per-atom force RMSE against
    U_i (only with forces in the data). A quantity with too few points for ``alpha`` gets the largest
    ratio as its factor (a CalibrationWarning says so). Returns the coverage of each factor on ``data``.
    """
    from mlipbias.uq.calibration import fit_method_calibration

    methods = list(methods)
    forces = data.has_forces and data.neighbours is not None
    calibration: dict[str, np.ndarray] = {}
    if "gmm" in methods:  # placeholders, so that the scores can be computed before the fit
        calibration.update(
            {f"calibration/nll/{q}/gmm": np.array([0.0, 1.0, 1.0]) for q in ("energy", "force")}
        )
    model.calibration, model.methods = calibration, tuple(methods)
    coverage, base = {}, None
    for method in sorted(methods, key=lambda m: m != "ensemble"):  # the ensemble computes member forces
        need_forces = forces and (base is None or method == "ensemble")
        p = model.predict(data, method, forces=need_forces, atom_uncertainty=forces)
        base = p if base is None and need_forces else base
        gmm = method == "gmm"
        records, covered = fit_method_calibration(
            method,
            alpha,
            p.energy - data.energy,
            None if gmm else p.uncertainty,
            base.forces - data.forces if forces else None,
            None if gmm else p.atom_uncertainty,
            score=p.score if gmm else None,
            atom_score=p.atom_score if gmm else None,
            log=log,
        )
        calibration.update(records)
        coverage.update(covered)
    return coverage
