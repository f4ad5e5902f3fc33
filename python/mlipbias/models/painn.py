"""PaiNN (Schuett, Unke and Gastegger 2021) with the uncertainty methods of seed 003 (Tan et al. 2023).

Architecture as seed 003's SI section I: 3 message-passing layers of 128 scalar and 128 vector
features, 20 learnable Gaussian radial functions on a 5 A cutoff, shifted softplus, and a readout
of two dense layers of 64 units on every atom's scalar features, summed over the atoms.

Per atom i: scalar features ``s_i`` (F) start as an embedding of the element, vector features
``v_i`` (3 x F) as zero. Every edge ``i -> j`` (each pair closer than the cutoff, periodic images
included, both directions) carries ``r_ij = x_j - x_i + S . cell``. One layer:

    message:  (a, b, c)_ij = phi(s_j) * W(|r_ij|) fc(|r_ij|)         phi: F -> F -> 3F, W: 20 -> 3F
              s_i += sum_j a_ij,   v_i += sum_j (b_ij v_j + c_ij r_ij / |r_ij|)
    update:   (a, b, c)_i = mlp(s_i, |V v_i|)                          mlp: 2F -> F -> 3F
              v_i += a_i (U v_i),   s_i += b_i <U v_i, V v_i> + c_i

with ``fc(r) = (1 + cos(pi r / r_c)) / 2`` and Gaussians ``exp(-gamma_k (r - mu_k)^2)`` (mu_k, gamma_k
learnt). Readout: ``h_i = ssp(W_2 ssp(W_1 s_i))`` (64 units each), ``E_i = scale (w . h_i + b) +
shift[Z_i]``, ``E = sum_i E_i``. Heads (MVE, evidential) read ``h_i`` through their own linear map,
as the BP-NN heads read its last hidden layer (:mod:`mlipbias.uq.mve`, :mod:`mlipbias.uq.evidential`).
Forces ``-dE/dx`` and the stress ``(1/V) dE/dstrain`` (ASE's sign) come from autograd through the
edge vectors: exact derivatives of the energy, so MD conserves it.

Uncertainties as seed 003 defines them, per atom ``U_i`` and per structure ``U`` (their mean over
atoms, Eq. 5 for the ensemble):

    ensemble    U_i = 1/(M-1) sum_m |F_im - mean_m F_im|^2 / 3     (eV/A)^2   Eq. 5
    mve         U_i = sigma^2_(F_i), the head's force variance      (eV/A)^2
    evidential  U_i = Var[mu_F] = beta / (nu (alpha - 1))           (eV/A)^2   Eq. 9
    gmm         U_i = -log sum_k pi_k N(s_i | mu_k, Sigma_k)        no unit     Eq. 11

with ``s_i`` the 128 scalar features after the last layer (seed 003: "the immediate layer before
the per-atom energy prediction", D = 128) and the mixture fitted per element on the training
atoms (size by BIC, :class:`mlipbias.uq.gmm.GMMUncertainty`). U is differentiable: the ASE
calculator biases energy, forces and stress with it (``E - tau U``), and adversarial sampling
(:mod:`mlipbias.sampling`) climbs it.

Calibration (seed 002 "Methods", that of the BP-NN and GM-NN,
:func:`mlipbias.uq.calibration.fit_method_calibration`): training ends with conformal factors c_E,
c_F fitted on the validation structures, the standard deviation sqrt(U) against |E - E_ref| and
sqrt(U_i) against the per-atom force RMSE (the GMM score first becomes a variance
``max(a s + b, v_min)``, seed 003 Eq. 13). A calibrated model reports the variances ``c_E^2 U``
(eV^2) and ``c_F^2 U_i`` ((eV/A)^2), whose square roots bound the errors with probability
``1 - alpha``; a model without the records (``PaiNNModel.calibration`` empty) reports U as above.

Units: eV, Angstrom. Computations in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

from mlipbias.models.gnn import Graph, batch_graphs, build_graph
from mlipbias.models.network import composition_fit
from mlipbias.uq import evidential, mve
from mlipbias.uq.gmm import GMMUncertainty

FORMAT = "mlipbias-painn"
FORMAT_VERSION = 1
DTYPE = torch.float64
METHODS = ("ensemble", "mve", "evidential", "gmm")
HEAD_OUTPUTS = {"mve": mve.N_OUTPUTS, "evidential": evidential.N_OUTPUTS}
_NORM_EPS = 1e-12  # inside |V v|: keeps the norm differentiable at v = 0 (the start)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) - log 2 (0 at x = 0)."""
    return torch.nn.functional.softplus(x) - math.log(2.0)


class ShiftedSoftplus(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)


@dataclass(frozen=True)
class PaiNNSettings:
    """Architecture (defaults: seed 003 SI section I). ``cutoff`` in A; ``features`` F of the scalar
    and vector channels; ``layers`` message-passing layers; ``radial_basis`` Gaussians; ``readout``
    widths of the dense layers before the atomic energy. ``energy_scale`` (eV per atom) fixes the
    output scale ``s``; None fits it as the RMSE per atom of the composition fit, which is tiny for
    one molecule near its minimum (NH3 within 5 kcal/mol: ~0.02 eV) and then slows force learning."""

    cutoff: float = 5.0
    features: int = 128
    layers: int = 3
    radial_basis: int = 20
    readout: tuple[int, ...] = (64, 64)
    energy_scale: float | None = None

    def __post_init__(self):
        cutoff = self.cutoff
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 < cutoff < math.inf:
            raise ValueError(f"model.painn.cutoff = {cutoff!r}: expected a finite number > 0 (A)")
        object.__setattr__(self, "cutoff", float(cutoff))
        for key in ("features", "layers", "radial_basis"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"model.painn.{key} = {value!r}: expected a positive integer")
            object.__setattr__(self, key, int(value))
        readout = (self.readout,) if isinstance(self.readout, (int, np.integer)) else self.readout
        if (
            not isinstance(readout, (list, tuple))
            or not readout
            or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in readout)
        ):
            raise ValueError(f"model.painn.readout = {self.readout!r}: expected a list of positive widths")
        object.__setattr__(self, "readout", tuple(int(h) for h in readout))
        scale = self.energy_scale
        if scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
                raise ValueError(
                    f"model.painn.energy_scale = {scale!r}: expected a finite number > 0 (eV/atom) or null"
                )
            object.__setattr__(self, "energy_scale", float(scale))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "readout": list(self.readout)}

    @classmethod
    def from_dict(cls, values) -> PaiNNSettings:
        if values is None:
            return cls()
        if not isinstance(values, dict):
            raise ValueError(f"model.painn must be a mapping of PaiNN settings, got {values!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"model.painn: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(names)}"
            )
        return cls(**values)


def _linear(n_in: int, n_out: int, bias: bool = True) -> torch.nn.Linear:
    return torch.nn.Linear(n_in, n_out, bias=bias, dtype=DTYPE)


def _mlp(n_in: int, hidden: int, n_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(_linear(n_in, hidden), ShiftedSoftplus(), _linear(hidden, n_out))


@dataclass
class AtomOutputs:
    """One member's per-atom outputs: ``energy`` (n,) eV, ``features`` s_i (n, F) after the last
    layer, ``head`` raw head outputs (n, n_head) or None."""

    energy: torch.Tensor
    features: torch.Tensor
    head: torch.Tensor | None = None


class PaiNN(torch.nn.Module):
    """One PaiNN network (one ensemble member), optionally with an MVE or evidential head."""

    def __init__(self, n_elements: int, settings: PaiNNSettings | None = None, head: str | None = None):
        super().__init__()
        s = self.settings = settings or PaiNNSettings()
        if head is not None and head not in HEAD_OUTPUTS:
            raise ValueError(f"PaiNN head must be one of {', '.join(HEAD_OUTPUTS)} or None, got {head!r}")
        self.head_kind = head
        F = s.features
        self.embedding = torch.nn.Embedding(n_elements, F, dtype=DTYPE)
        self.rbf_centres = torch.nn.Parameter(torch.linspace(0.0, s.cutoff, s.radial_basis, dtype=DTYPE))
        spacing = s.cutoff / max(s.radial_basis - 1, 1)
        self.rbf_log_gamma = torch.nn.Parameter(
            torch.full((s.radial_basis,), math.log(0.5 / spacing**2), dtype=DTYPE)
        )
        self.message_phi = torch.nn.ModuleList(_mlp(F, F, 3 * F) for _ in range(s.layers))
        self.message_filter = torch.nn.ModuleList(_linear(s.radial_basis, 3 * F) for _ in range(s.layers))
        self.update_U = torch.nn.ModuleList(_linear(F, F, bias=False) for _ in range(s.layers))
        self.update_V = torch.nn.ModuleList(_linear(F, F, bias=False) for _ in range(s.layers))
        self.update_mlp = torch.nn.ModuleList(_mlp(2 * F, F, 3 * F) for _ in range(s.layers))
        widths = (F, *s.readout)
        self.readout = torch.nn.Sequential(
            *[
                m
                for a, b in zip(widths[:-1], widths[1:], strict=True)
                for m in (_linear(a, b), ShiftedSoftplus())
            ]
        )
        self.energy_out = _linear(widths[-1], 1)
        self.head = _linear(widths[-1], HEAD_OUTPUTS[head]) if head is not None else None

    def forward(
        self, graph: Graph, vectors: torch.Tensor, *, detach_head: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(readout output z_i (n,), features s_i (n, F), raw head outputs or None) from the edge vectors."""
        F = self.settings.features
        n = graph.species.shape[0]
        i, j = graph.senders, graph.receivers
        distance = torch.sqrt((vectors**2).sum(dim=1))
        cutoff = self.settings.cutoff
        fc = torch.where(distance < cutoff, 0.5 * (torch.cos(math.pi * distance / cutoff) + 1.0), 0.0)
        gamma = torch.exp(self.rbf_log_gamma)
        rbf = torch.exp(-gamma * (distance[:, None] - self.rbf_centres) ** 2)
        unit = vectors / distance.clamp_min(1e-9)[:, None]
        s = self.embedding(graph.species)
        v = s.new_zeros((n, 3, F))
        for layer in range(self.settings.layers):
            x = self.message_phi[layer](s)[j] * (self.message_filter[layer](rbf) * fc[:, None])
            a, b, c = torch.split(x, F, dim=1)
            ds = s.new_zeros((n, F)).index_add(0, i, a)
            dv = v.new_zeros((n, 3, F)).index_add(
                0, i, b[:, None, :] * v[j] + c[:, None, :] * unit[:, :, None]
            )
            s, v = s + ds, v + dv
            Uv, Vv = self.update_U[layer](v), self.update_V[layer](v)
            norm = torch.sqrt((Vv**2).sum(dim=1) + _NORM_EPS)
            a, b, c = torch.split(self.update_mlp[layer](torch.cat([s, norm], dim=1)), F, dim=1)
            v = v + a[:, None, :] * Uv
            s = s + b * (Uv * Vv).sum(dim=1) + c
        h = self.readout(s)
        z = self.energy_out(h).squeeze(1)
        raw = None
        if self.head is not None:
            raw = mve.head_outputs(self.head, h, detach_head, self.head_kind)
        return z, s, raw


@dataclass
class Evaluation:
    """Results for a batch of graphs (torch tensors; atoms concatenated in structure order).

    ``energy`` (S,) eV (ensemble mean), ``member_energies`` (M, S), ``atom_energies`` (n,),
    ``forces`` (n, 3) eV/A, ``member_forces`` (M, n, 3), ``stress`` (S, 3, 3) eV/A^3 (ASE's sign, only
    when asked), ``uncertainty`` U (S,), ``atom_uncertainty`` U_i (n,), ``features`` (n, F) of member 0,
    ``head`` member 0's raw head outputs. With ``gradient``: ``uncertainty_gradient`` dU/dx (n, 3) and
    ``uncertainty_strain`` dU/dstrain (S, 3, 3); ``energy_strain`` dE/dstrain = V stress (S, 3, 3).
    """

    energy: torch.Tensor
    member_energies: torch.Tensor
    atom_energies: torch.Tensor
    features: torch.Tensor
    forces: torch.Tensor | None = None
    member_forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    energy_strain: torch.Tensor | None = None
    head: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    atom_uncertainty: torch.Tensor | None = None
    uncertainty_gradient: torch.Tensor | None = None
    uncertainty_strain: torch.Tensor | None = None


class PaiNNModel(torch.nn.Module):
    """M PaiNN members (an ensemble when M > 1), shared energy shift and scale, and the uncertainty
    methods of seed 003 (module docstring). ``elements``: symbols, e.g. ``["Si", "O"]``."""

    def __init__(
        self,
        elements: Sequence[str],
        settings: PaiNNSettings | None = None,
        *,
        n_members: int = 1,
        head: str | None = None,
        methods: Sequence[str] = (),
    ):
        super().__init__()
        elements = [str(e) for e in elements]
        if (
            not elements
            or len(set(elements)) != len(elements)
            or any(e not in atomic_numbers for e in elements)
        ):
            raise ValueError(f"PaiNN elements must be distinct element symbols, got {elements!r}")
        if n_members < 1 or (head is not None and n_members != 1):
            raise ValueError(
                f"PaiNN: {n_members} members with head {head!r}; a head needs exactly one member"
            )
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"PaiNN uncertainty methods {unknown} are unknown; choose from {', '.join(METHODS)}"
            )
        self.elements = elements
        self.settings = settings or PaiNNSettings()
        self.head_kind = head
        self.methods = tuple(methods)
        self.members = torch.nn.ModuleList(
            PaiNN(len(elements), self.settings, head) for _ in range(n_members)
        )
        self.register_buffer("energy_shift", torch.zeros(len(elements), dtype=DTYPE))
        self.register_buffer("energy_scale", torch.ones((), dtype=DTYPE))
        n_head = HEAD_OUTPUTS[head] if head else 0
        self.register_buffer("head_scale", torch.ones(n_head, dtype=DTYPE))
        self.gmm: GMMUncertainty | None = None
        # calibration/... records as in a .mlip file (docs/model_file.md); empty: uncalibrated
        self.calibration: dict[str, np.ndarray] = {}

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def cutoff(self) -> float:
        return self.settings.cutoff

    def graph(self, atoms: Atoms) -> Graph:
        return build_graph(atoms, self.elements, self.settings.cutoff)

    def graphs(self, structures: Sequence[Atoms]) -> Graph:
        return batch_graphs([self.graph(a) for a in structures])

    @property
    def default_method(self) -> str | None:
        """The first method of ``methods``, or None."""
        return self.methods[0] if self.methods else None

    def check_method(self, method: str | None) -> None:
        if method is not None and method not in self.methods:
            raise ValueError(
                f"uncertainty {method!r} is not in this PaiNN model's methods {list(self.methods)}"
            )

    # ---------------------------------------------------------------- evaluation

    def edge_vectors(self, graph: Graph, positions: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """r_ij = x_j - x_i + S . cell (n_edges, 3), A."""
        cell = cells[graph.structure[graph.senders]]
        return (
            positions[graph.receivers]
            - positions[graph.senders]
            + torch.einsum("ek,ekl->el", graph.shifts, cell)
        )

    def evaluate(
        self,
        graph: Graph,
        method: str | None = None,
        *,
        forces: bool = True,
        stress: bool = False,
        gradient: bool = False,
        create_graph: bool = False,
        detach_head: bool = False,
        calibrated: bool = True,
    ) -> Evaluation:
        """Energies, forces, stress (with ``stress``), U and U_i of ``method`` and, with ``gradient``,
        dU/dx and dU/dstrain (and dE/dstrain). ``create_graph`` keeps the graph of every derivative
        (training on forces, adversarial sampling of force-based U). ``calibrated``: U and U_i with
        the model's calibration (:meth:`calibrated`; False: the raw values of seed 003)."""
        self.check_method(method)
        if gradient and method is None:
            raise ValueError("an uncertainty gradient needs an uncertainty method")
        S = graph.n_structures
        need_forces = forces or gradient or method == "ensemble"
        strain_needed = stress or gradient
        # Without derivatives the caller's grad mode holds (training on energies needs the graph).
        with torch.enable_grad() if (need_forces or strain_needed) else contextlib.nullcontext():
            positions = graph.positions.detach().requires_grad_(need_forces)
            strain = torch.zeros((S, 3, 3), dtype=DTYPE, device=positions.device, requires_grad=strain_needed)
            # x -> x (1 + strain), cell -> cell (1 + strain): derivatives at strain 0 are dE/dstrain.
            deform = torch.eye(3, dtype=DTYPE, device=positions.device) + strain
            x = torch.einsum("nk,nkl->nl", positions, deform[graph.structure])
            cells = torch.einsum("sjk,skl->sjl", graph.cells, deform)
            vectors = self.edge_vectors(graph, x, cells)
            atom_e, features, head = [], None, None
            for m, member in enumerate(self.members):
                z, s, raw = member(graph, vectors, detach_head=detach_head)
                atom_e.append(self.energy_scale * z + self.energy_shift[graph.species])
                if m == 0:
                    features, head = s, raw
            atom_e = torch.stack(atom_e)
            member_energies = atom_e.new_zeros((self.n_members, S)).index_add(1, graph.structure, atom_e)
            out = Evaluation(
                energy=member_energies.mean(dim=0),
                member_energies=member_energies,
                atom_energies=atom_e.mean(dim=0),
                features=features,
                head=head,
            )
            keep = create_graph or gradient
            if need_forces or strain_needed:
                # Forces are -dE/dx of the deformed positions x, so that a force-based U has the right
                # strain derivative (x and the reference positions coincide at strain 0).
                wrt = ([x] if need_forces else []) + ([strain] if strain_needed else [])
                per_member = []
                for m in range(self.n_members):
                    grads = torch.autograd.grad(
                        member_energies[m].sum(), wrt, create_graph=keep, retain_graph=True
                    )
                    per_member.append(grads)
                if need_forces:
                    out.member_forces = -torch.stack([g[0] for g in per_member])
                    out.forces = out.member_forces.mean(dim=0)
                if strain_needed:
                    out.energy_strain = torch.stack([g[-1] for g in per_member]).mean(dim=0)
                    if stress:
                        volumes = graph.volumes.clamp_min(1e-300).view(-1, 1, 1)
                        out.stress = out.energy_strain / volumes
            if method is not None:
                atom_u = self._atom_uncertainty(method, out, graph)
                counts = graph.n_atoms.to(DTYPE)
                U = atom_u.new_zeros(S).index_add(0, graph.structure, atom_u) / counts
                if calibrated:
                    U, atom_u = self.calibrated("energy", method, U), self.calibrated("force", method, atom_u)
                out.uncertainty, out.atom_uncertainty = U, atom_u
                if gradient:
                    dU = torch.autograd.grad(
                        out.uncertainty.sum(), [positions, strain], create_graph=create_graph
                    )
                    out.uncertainty_gradient, out.uncertainty_strain = dU
        if not create_graph:
            for f in dataclasses.fields(out):
                value = getattr(out, f.name)
                if isinstance(value, torch.Tensor):
                    setattr(out, f.name, value.detach())
        return out

    def _atom_uncertainty(self, method: str, out: Evaluation, graph: Graph) -> torch.Tensor:
        if method == "ensemble":
            if self.n_members < 2:
                raise ValueError("the ensemble uncertainty needs at least 2 members")
            spread = out.member_forces - out.member_forces.mean(dim=0, keepdim=True)
            return (spread**2).sum(dim=(0, 2)) / (3.0 * (self.n_members - 1))
        if method == "mve":
            return mve.variances(out.head, self.head_scale)[1]
        if method == "evidential":
            nu, alpha, beta = evidential.parameters_force(out.head, self.head_scale)
            return beta / (nu * (alpha - 1.0))
        if self.gmm is None:
            raise ValueError("this PaiNN model has no fitted GMM")
        return self.gmm.atom_scores(out.features, graph.species)

    def calibrated(self, quantity: str, method: str, u: torch.Tensor) -> torch.Tensor:
        """Raw U (``quantity="energy"``) or U_i (``"force"``) of ``method`` as the calibrated variance
        ``c^2 v``, v = U (ensemble, heads) or ``max(a U + b, v_min)`` (GMM); unchanged without the
        record ``calibration/QUANTITY/METHOD``."""
        factor = self.calibration.get(f"calibration/{quantity}/{method}")
        if factor is None:
            return u
        if method == "gmm":
            name = f"calibration/nll/{quantity}/gmm"
            if name not in self.calibration:
                raise ValueError(f"the PaiNN model has calibration/{quantity}/gmm but not {name}")
            a, b, min_variance = (float(x) for x in np.ravel(self.calibration[name]))
            u = torch.clamp(a * u + b, min=min_variance)
        return float(np.ravel(factor)[0]) ** 2 * u

    # ---------------------------------------------------------------- set-up from data

    def fit_energy_shift(
        self, counts: np.ndarray, energies: np.ndarray, force_rms: float | None = None
    ) -> float:
        """Per-element energies by least squares of the training energies on composition (eV); returns
        the RMSE per atom of that fit (eV/atom).

        The output scale is that RMSE, so the networks learn a unit-sized residual, or, given
        ``force_rms`` (the RMS training force component, eV/A, for models trained on forces), that RMS,
        so the networks' gradients are unit-sized (as NequIP's force-RMS scaling): for molecules of one
        composition (MD17, ammonia) the energy RMSE per atom is ~50x smaller than the forces in eV/A,
        and with it as the scale the forces hardly learn in the first epochs (measured on ethanol,
        examples/seed003_md17like/README.md). ``settings.energy_scale`` (eV/atom), when
        given, replaces both."""
        shift, rmse = composition_fit(energies, counts)
        scale = force_rms if force_rms is not None and force_rms > 0 else rmse
        if self.settings.energy_scale is not None:  # a user's fixed scale wins
            scale = self.settings.energy_scale
        self.energy_shift.copy_(torch.tensor(shift, dtype=DTYPE))
        self.energy_scale.fill_(scale if scale > 0 else 1.0)
        return rmse

    def init_heads(self, mean_square_force: float, energy_unit: float | None = None) -> None:
        """Head units (as the BP-NN's; the energy variance in ``energy_unit``^2, eV/atom, default the
        output scale) and biases so that every softplus starts at 1."""
        if self.head_kind is None:
            return
        module = mve if self.head_kind == "mve" else evidential
        unit = float(self.energy_scale) if energy_unit is None or energy_unit <= 0 else energy_unit
        scales = module.initial_scales(unit, mean_square_force)
        with torch.no_grad():
            self.head_scale.copy_(torch.tensor(scales, dtype=DTYPE))
            for member in self.members:
                member.head.bias.fill_(mve.inverse_softplus(1.0))


# --------------------------------------------------------------------------------------------
# files


def _gmm_payload(gmm: GMMUncertainty | None) -> dict:
    if gmm is None:
        return {}
    return {k: torch.as_tensor(v) for k, v in gmm.to_records().items()}


def save_painn(model: PaiNNModel, path: str | Path, description: str = "") -> Path:
    """Write ``model`` to ``path`` (a torch file of tensors, strings and numbers, written atomically)."""
    from mlipbias.models.torch_files import save_plain

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "elements": list(model.elements),
        "settings": model.settings.to_dict(),
        "n_members": model.n_members,
        "head": model.head_kind or "",
        "methods": list(model.methods),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "gmm": _gmm_payload(model.gmm),
        "calibration": {k: torch.as_tensor(np.asarray(v, dtype=float)) for k, v in model.calibration.items()},
        "description": description,
    }
    return save_plain(payload, path)


def load_painn(path: str | Path, device: str | torch.device = "cpu") -> PaiNNModel:
    """A model written by :func:`save_painn`; a missing, foreign or damaged file is a clear error."""
    from mlipbias.models.torch_files import load_model_payload

    payload = load_model_payload(path, "PaiNN model file", FORMAT, FORMAT_VERSION)
    model = PaiNNModel(
        payload["elements"],
        PaiNNSettings.from_dict(payload["settings"]),
        n_members=int(payload["n_members"]),
        head=payload["head"] or None,
        methods=payload["methods"],
    )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored settings: {exc}") from exc
    if payload["gmm"]:
        records = {k: v.numpy() for k, v in payload["gmm"].items()}
        model.gmm = GMMUncertainty.from_records(records, model.elements)
    calibration = payload.get("calibration", {})  # absent in files of mlipbias before the calibration
    if not isinstance(calibration, dict) or any(not str(k).startswith("calibration/") for k in calibration):
        raise ValueError(f"{path}: the calibration entry must map calibration/... names to tensors")
    model.calibration = {k: np.asarray(v, dtype=float) for k, v in calibration.items()}
    model.description = payload.get("description", "")
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# ASE calculator


class PaiNNCalculator(Calculator):
    """ASE calculator for a :class:`PaiNNModel` or a file of :func:`save_painn` (eV, eV/A, eV/A^3).

    ``uncertainty``: a method of the model (None: its first one; ``"none"``: no uncertainty).
    ``tau``: bias strength, ``energy = E - tau U``, ``forces = F + tau dU/dx``, ``stress`` the model
    stress plus ``-(tau / V) dU/dstrain`` (U of seed 003, calibrated when the model is: module
    docstring; tau in eV per unit of U).
    Results also hold ``uncertainty`` U, ``atom_uncertainty`` U_i, ``uncertainty_gradient``,
    ``bias_energy``, ``bias_forces``, ``model_energy``, ``model_forces``, ``model_stress``,
    ``member_energies``.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "uncertainty",
        "atom_uncertainty",
        "uncertainty_gradient",
        "bias_energy",
    ]
    name = "painn"

    def __init__(
        self, model: PaiNNModel | str | Path, uncertainty: str | None = None, tau: float = 0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.model = model if isinstance(model, PaiNNModel) else load_painn(model)
        self.model.eval()
        method = self.model.default_method if uncertainty is None else uncertainty
        self.uncertainty = None if method == "none" else method
        self.model.check_method(self.uncertainty)
        tau = float(tau)
        if not math.isfinite(tau) or tau < 0:
            raise ValueError(f"PaiNNCalculator tau = {tau!r}: expected a finite number >= 0")
        if tau > 0 and self.uncertainty is None:
            raise ValueError("PaiNNCalculator: a bias (tau > 0) needs an uncertainty method")
        self.tau = tau
        self.parameters.update(uncertainty=self.uncertainty or "none", tau=tau)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.all())
        method = self.uncertainty
        gradient = method is not None and (self.tau > 0 or "uncertainty_gradient" in properties)
        graph = self.model.graph(atoms)
        out = self.model.evaluate(graph, method, forces=True, stress=periodic, gradient=gradient)
        energy = float(out.energy[0])
        forces = out.forces.cpu().numpy()
        r = {
            "model_energy": energy,
            "model_forces": forces,
            "member_energies": out.member_energies[:, 0].cpu().numpy(),
        }
        bias_energy, bias_forces, bias_stress = 0.0, np.zeros_like(forces), np.zeros((3, 3))
        if method is not None:
            r["uncertainty"] = float(out.uncertainty[0])
            r["atom_uncertainty"] = out.atom_uncertainty.cpu().numpy()
        if gradient:
            grad = out.uncertainty_gradient.cpu().numpy()
            r["uncertainty_gradient"] = grad
            bias_energy = -self.tau * r["uncertainty"]
            bias_forces = self.tau * grad
            if periodic:
                bias_stress = -self.tau * out.uncertainty_strain[0].cpu().numpy() / atoms.get_volume()
        r["bias_energy"] = bias_energy
        r["bias_forces"] = bias_forces
        r["energy"] = r["free_energy"] = energy + bias_energy
        r["energies"] = out.atom_energies.cpu().numpy() + bias_energy / len(atoms)
        r["forces"] = forces + bias_forces
        if periodic:
            s = out.stress[0].cpu().numpy() + bias_stress
            s = 0.5 * (s + s.T)
            r["model_stress"] = _voigt(out.stress[0].cpu().numpy())
            r["stress"] = _voigt(s)
        self.results = r


def _voigt(s: np.ndarray) -> np.ndarray:
    s = 0.5 * (s + s.T)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


__all__ = [
    "METHODS",
    "Evaluation",
    "PaiNN",
    "PaiNNCalculator",
    "PaiNNModel",
    "PaiNNSettings",
    "load_painn",
    "save_painn",
]
