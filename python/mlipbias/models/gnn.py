"""The message-passing graph network of Cubuk & Schoenholz (2020, appendix "Graph neural networks").

Graph: atoms are nodes; every pair closer than ``cutoff`` (3 A) is an edge in both directions,
periodic images included. Initial states as in the paper: node state 0, global state 0, and
each edge ``i -> j`` carries the displacement vector ``r_ij = x_j - x_i + S . cell`` (A). One
message-passing step with fully connected networks (two hidden layers, ReLU by default):

    e_ij = fc(|r_ij|) * phi_e(r_ij, z_i, z_j)         edge update (message)
    n_i  = phi_v(sum_j e_ij, z_i)                     node update (sum of incoming messages)
    E_i  = s * (w . n_i + b) + shift[Z_i]             per-atom readout
    E    = sum_i E_i                                  global state: the sum (energy, eV)

``z_i`` is the one-hot element of atom i: for one element (the paper's Si) it is the constant
node state the paper starts from; for several it lets the networks tell elements apart.
Forces are ``-dE/dx`` by autograd and the stress ``(1/V) sum_ij r_ij (x) dE/dr_ij`` (eV/A^3,
ASE's sign), both from one backward pass to the edge vectors.

Two departures from the paper, both needed for forces: the messages are multiplied by the cosine
cutoff ``fc(r) = (1 + cos(pi r / cutoff)) / 2``, so the energy stays continuous when an edge
crosses 3 A (the paper's hard threshold makes forces undefined there); and the linear global
readout keeps the energy a sum of atomic terms (size-extensive). As in the paper the edge
features are raw vectors, so the model is invariant to translations, permutations and the
choice of periodic images but not to rotations: training augments every structure with a
random rotation or reflection (the paper's "rotations and flips") each time it is seen.

Units: eV, Angstrom; per-atom errors in eV/atom.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

FORMAT = "mlipbias-gnn"
FORMAT_VERSION = 1
ACTIVATIONS = {"relu": torch.nn.ReLU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}
DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# settings


def _check_positive_int(owner: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner} {key}: must be a positive integer, got {value!r}")
    return int(value)


def _check_number(owner: str, key: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner} {key}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = ">" if strict else ">="
        raise ValueError(f"{owner} {key}: must be finite and {bound} {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class GNNSettings:
    """Architecture. ``hidden``: the hidden layer widths of phi_e and phi_v (paper: two layers);
    ``edge_features``, ``node_features``: sizes of the message e_ij and of the node state n_i;
    ``cutoff`` in A (paper: 3)."""

    cutoff: float = 3.0
    hidden: tuple[int, ...] = (64, 64)
    edge_features: int = 64
    node_features: int = 64
    activation: str = "relu"

    def __post_init__(self):
        object.__setattr__(self, "cutoff", _check_number("GNNSettings", "cutoff", self.cutoff, strict=True))
        hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else tuple(self.hidden)
        object.__setattr__(
            self, "hidden", tuple(_check_positive_int("GNNSettings", "hidden", h) for h in hidden)
        )
        for key in ("edge_features", "node_features"):
            object.__setattr__(self, key, _check_positive_int("GNNSettings", key, getattr(self, key)))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"GNNSettings activation: must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, values: dict) -> GNNSettings:
        return cls(**_known(cls, values, "GNNSettings"))


@dataclass(frozen=True)
class GNNTrainingSettings:
    """Training (paper: Adam, learning rate 1e-3, batch 128, 160 epochs, rotations and flips).

    Loss per batch: ``mean_s ((E_s - E_s^ref) / N_s)^2 + force_weight * mean_components
    (F - F^ref)^2``, in (eV/atom)^2 and (eV/A)^2; ``force_weight`` 0 trains on energies only
    (A^2/atom^2). The learning rate decays by ``lr_decay`` over the run (exponentially; 1
    keeps it constant). The model of the epoch with the lowest validation loss is kept.
    """

    epochs: int = 160
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_decay: float = 1.0
    force_weight: float = 0.0
    augment: bool = True
    seed: int = 0

    def __post_init__(self):
        for key in ("epochs", "batch_size"):
            object.__setattr__(self, key, _check_positive_int("GNNTrainingSettings", key, getattr(self, key)))
        for key, strict in (("learning_rate", True), ("lr_decay", True), ("force_weight", False)):
            value = _check_number("GNNTrainingSettings", key, getattr(self, key), strict=strict)
            object.__setattr__(self, key, value)
        if self.lr_decay > 1:
            raise ValueError(f"GNNTrainingSettings lr_decay: must be in (0, 1], got {self.lr_decay!r}")
        if not isinstance(self.augment, bool):
            raise ValueError(f"GNNTrainingSettings augment: must be true or false, got {self.augment!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"GNNTrainingSettings seed: must be an integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: dict) -> GNNTrainingSettings:
        return cls(**_known(cls, values, "GNNTrainingSettings"))


def _known(cls, values: dict, owner: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{owner}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dict(values)


# --------------------------------------------------------------------------------------------
# graphs


@dataclass
class Graph:
    """One structure or a batch of structures as a graph (atoms numbered across the batch).

    ``positions`` (n_atoms, 3) A, ``species`` (n_atoms,) model element indices, ``structure``
    (n_atoms,) structure index of each atom, ``cells`` (n_structures, 3, 3) A, ``senders`` and
    ``receivers`` (n_edges,) atom indices i and j of each edge i -> j, ``shifts`` (n_edges, 3)
    integer periodic shifts S (float), ``n_atoms`` (n_structures,) atoms per structure.
    """

    positions: torch.Tensor
    species: torch.Tensor
    structure: torch.Tensor
    cells: torch.Tensor
    senders: torch.Tensor
    receivers: torch.Tensor
    shifts: torch.Tensor
    n_atoms: torch.Tensor
    volumes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=DTYPE))

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])


def species_indices(atoms: Atoms, elements: Sequence[str]) -> np.ndarray:
    """Model element index of every atom; an element the model does not know is a ValueError."""
    index = {symbol: k for k, symbol in enumerate(elements)}
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(index))
    if unknown:
        raise ValueError(
            f"the GNN knows the elements {' '.join(elements)}, but the structure "
            f"{atoms.get_chemical_formula()} has {' '.join(unknown)}"
        )
    return np.array([index[s] for s in atoms.get_chemical_symbols()], dtype=np.int64)


def build_graph(atoms: Atoms, elements: Sequence[str], cutoff: float) -> Graph:
    """The graph of one structure: every pair closer than ``cutoff`` (A), periodic images included."""
    from mlipbias.neighbors import neighbor_list

    positions = np.asarray(atoms.positions, dtype=np.float64)
    if not np.isfinite(positions).all():
        raise ValueError(f"structure {atoms.get_chemical_formula()} has non-finite positions")
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    volume = abs(float(np.linalg.det(cell))) if atoms.pbc.all() else 0.0
    return Graph(
        positions=torch.tensor(positions, dtype=DTYPE),
        species=torch.from_numpy(species_indices(atoms, elements)),
        structure=torch.zeros(len(atoms), dtype=torch.int64),
        cells=torch.tensor(cell, dtype=DTYPE).unsqueeze(0),
        senders=torch.from_numpy(np.asarray(i, dtype=np.int64)),
        receivers=torch.from_numpy(np.asarray(j, dtype=np.int64)),
        shifts=torch.tensor(S, dtype=DTYPE),
        n_atoms=torch.tensor([len(atoms)], dtype=torch.int64),
        volumes=torch.tensor([volume], dtype=DTYPE),
    )


def batch_graphs(graphs: Sequence[Graph]) -> Graph:
    """Concatenate graphs into one batch (atom indices offset, structure indices renumbered)."""
    offsets = np.cumsum([0] + [int(g.n_atoms.sum()) for g in graphs[:-1]])
    structures = np.cumsum([0] + [g.n_structures for g in graphs[:-1]])
    return Graph(
        positions=torch.cat([g.positions for g in graphs]),
        species=torch.cat([g.species for g in graphs]),
        structure=torch.cat([g.structure + int(s) for g, s in zip(graphs, structures, strict=True)]),
        cells=torch.cat([g.cells for g in graphs]),
        senders=torch.cat([g.senders + int(o) for g, o in zip(graphs, offsets, strict=True)]),
        receivers=torch.cat([g.receivers + int(o) for g, o in zip(graphs, offsets, strict=True)]),
        shifts=torch.cat([g.shifts for g in graphs]),
        n_atoms=torch.cat([g.n_atoms for g in graphs]),
        volumes=torch.cat([g.volumes for g in graphs]),
    )


def _mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> torch.nn.Sequential:
    layers, width = [], n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h, dtype=DTYPE), ACTIVATIONS[activation]()]
        width = h
    layers.append(torch.nn.Linear(width, n_out, dtype=DTYPE))
    return torch.nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# the model


class GNN(torch.nn.Module):
    """The graph network of Cubuk & Schoenholz 2020 (module docstring). ``elements``: e.g. ``["Si"]``."""

    def __init__(self, elements: Sequence[str], settings: GNNSettings | None = None):
        super().__init__()
        elements = [str(e) for e in elements]
        if not elements or len(set(elements)) != len(elements):
            raise ValueError(f"GNN elements must be distinct element symbols, got {elements!r}")
        bad = [e for e in elements if e not in atomic_numbers]
        if bad:
            raise ValueError(f"GNN elements: {', '.join(bad)} is not an element symbol")
        self.elements = elements
        self.settings = settings or GNNSettings()
        s, n_el = self.settings, len(elements)
        self.edge_net = _mlp(3 + 2 * n_el, s.hidden, s.edge_features, s.activation)
        self.node_net = _mlp(s.edge_features + n_el, s.hidden, s.node_features, s.activation)
        self.readout = torch.nn.Linear(s.node_features, 1, dtype=DTYPE)
        # E_i = energy_scale * readout + energy_shift[Z_i], set from the training data.
        self.register_buffer("energy_shift", torch.zeros(n_el, dtype=DTYPE))
        self.register_buffer("energy_scale", torch.ones((), dtype=DTYPE))

    def graph(self, atoms: Atoms) -> Graph:
        return build_graph(atoms, self.elements, self.settings.cutoff)

    def edge_vectors(self, graph: Graph, positions: torch.Tensor) -> torch.Tensor:
        """r_ij = x_j - x_i + S . cell (n_edges, 3), A."""
        cells = graph.cells[graph.structure[graph.senders]]
        return (
            positions[graph.receivers]
            - positions[graph.senders]
            + torch.einsum("ek,ekl->el", graph.shifts, cells)
        )

    def atomic_energies(self, graph: Graph, vectors: torch.Tensor) -> torch.Tensor:
        """E_i (n_atoms,) in eV from the edge vectors (n_edges, 3)."""
        n_el = len(self.elements)
        onehot = torch.nn.functional.one_hot(graph.species, n_el).to(DTYPE)
        distance = vectors.norm(dim=1, keepdim=True)
        cutoff = self.settings.cutoff
        fc = torch.where(
            distance < cutoff,
            0.5 * (torch.cos(math.pi * distance / cutoff) + 1.0),
            torch.zeros_like(distance),
        )
        edge_in = torch.cat([vectors, onehot[graph.senders], onehot[graph.receivers]], dim=1)
        messages = fc * self.edge_net(edge_in)
        incoming = torch.zeros(
            (graph.positions.shape[0], messages.shape[1]), dtype=DTYPE, device=messages.device
        ).index_add(0, graph.senders, messages)
        nodes = self.node_net(torch.cat([incoming, onehot], dim=1))
        return self.energy_scale * self.readout(nodes).squeeze(1) + self.energy_shift[graph.species]

    def forward(self, graph: Graph, forces: bool = True, stress: bool = False, create_graph: bool = False):
        """Energies (n_structures,) eV; with ``forces`` also forces (n_atoms, 3) eV/A; with
        ``stress`` also stresses (n_structures, 3, 3) eV/A^3 (ASE sign). ``create_graph`` keeps
        the graph of the forces for a force loss."""
        positions = graph.positions
        # Forces and stress both follow from dE/dr_ij; with create_graph that derivative keeps
        # its dependence on the weights (for a force loss).
        vectors = self.edge_vectors(graph, positions).detach().requires_grad_(forces or stress)
        atomic = self.atomic_energies(graph, vectors)
        energies = torch.zeros(graph.n_structures, dtype=DTYPE, device=atomic.device).index_add(
            0, graph.structure, atomic
        )
        out = {"energy": energies, "energies": atomic}
        if not (forces or stress):
            return out
        (g,) = torch.autograd.grad(energies.sum(), vectors, create_graph=create_graph)
        if forces:
            # r_ij = x_j - x_i: dE/dx_i = -sum_(i->j) g_ij + sum_(k->i) g_ki, F = -dE/dx.
            f = torch.zeros_like(positions).index_add(0, graph.senders, g).index_add(0, graph.receivers, -g)
            out["forces"] = f
        if stress:
            per_edge = vectors.unsqueeze(2) * g.unsqueeze(1)
            w = torch.zeros((graph.n_structures, 3, 3), dtype=DTYPE, device=g.device).index_add(
                0, graph.structure[graph.senders], per_edge
            )
            w = 0.5 * (w + w.transpose(1, 2))
            volumes = graph.volumes.clamp_min(1e-300).view(-1, 1, 1)
            out["stress"] = w / volumes
        return out

    def fit_energy_shift(self, structures: Sequence[Atoms], energies: np.ndarray) -> None:
        """Per-element energies by least squares on the training data (eV), and the scale as the
        std of the remaining energy per atom, so the networks learn a unit-sized residual."""
        counts = np.array(
            [
                np.bincount(species_indices(a, self.elements), minlength=len(self.elements))
                for a in structures
            ],
            dtype=float,
        )
        shift, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        residual = (energies - counts @ shift) / counts.sum(axis=1)
        scale = float(residual.std()) if residual.size > 1 and residual.std() > 0 else 1.0
        self.energy_shift.copy_(torch.tensor(shift, dtype=DTYPE))
        self.energy_scale.fill_(scale)


# --------------------------------------------------------------------------------------------
# files


def save_gnn(model: GNN, path: str | Path, description: str = "", extra: dict | None = None) -> Path:
    """Write ``model`` to ``path`` (torch file, written atomically): format, version, elements,
    settings, weights, ``description`` and JSON-able ``extra`` (e.g. training history)."""
    from mlipbias.models.torch_files import save_plain

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "elements": list(model.elements),
        "settings": model.settings.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "description": description,
        "extra": json.dumps(extra or {}),
    }
    return save_plain(payload, path)


def load_gnn(path: str | Path) -> GNN:
    """A model written by :func:`save_gnn`; a missing, foreign or damaged file is a clear error."""
    from mlipbias.models.torch_files import load_model_payload

    payload = load_model_payload(path, "GNN model file", FORMAT, FORMAT_VERSION)
    model = GNN(payload["elements"], GNNSettings.from_dict(payload["settings"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored settings: {exc}") from exc
    model.description = payload.get("description", "")
    model.extra = json.loads(payload.get("extra") or "{}")
    return model.eval()


# --------------------------------------------------------------------------------------------
# ASE calculator


class GNNCalculator(Calculator):
    """ASE calculator for a :class:`GNN` or a file from :func:`save_gnn` (eV, eV/A, eV/A^3).

    ``mlipbias adversarial --approx "mlipbias.models.gnn:GNNCalculator(model='gnn.pt')"`` uses it.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    name = "gnn"

    def __init__(self, model: GNN | str | Path, **kwargs):
        super().__init__(**kwargs)
        self.model = model if isinstance(model, GNN) else load_gnn(model)
        self.model.eval()
        self.parameters["model"] = str(model) if not isinstance(model, GNN) else "in-memory GNN"

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph = self.model.graph(self.atoms)
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        with torch.enable_grad():
            out = self.model(graph, forces=True, stress=want_stress)
        energy = float(out["energy"][0].detach())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["energies"].detach().numpy().copy(),
            "forces": out["forces"].detach().numpy().copy(),
        }
        if want_stress:
            s = out["stress"][0].detach().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


# --------------------------------------------------------------------------------------------
# training


def _labels(atoms: Atoms, need_forces: bool, what: str) -> tuple[float, np.ndarray | None]:
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=np.float64) if need_forces else None
    except Exception as exc:
        raise ValueError(
            f"{what} ({atoms.get_chemical_formula()}) has no energy/forces labels: {exc}"
        ) from exc
    if not math.isfinite(energy) or (forces is not None and not np.isfinite(forces).all()):
        raise ValueError(f"{what} ({atoms.get_chemical_formula()}) has non-finite labels")
    return energy, forces


def random_orthogonal(rng: np.random.Generator) -> np.ndarray:
    """A Haar-random 3x3 orthogonal matrix: a rotation, or a rotation with a flip (det -1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _rotated(graph: Graph, q: np.ndarray) -> Graph:
    qt = torch.tensor(q.T, dtype=DTYPE)
    return dataclasses.replace(graph, positions=graph.positions @ qt, cells=graph.cells @ qt)


def evaluate(model: GNN, structures: Sequence[Atoms], batch_size: int = 64) -> dict:
    """Energy RMSE (eV/atom) and force component RMSE (eV/A) of ``model`` on labelled structures."""
    de, df, n_f = [], 0.0, 0
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        graph = batch_graphs([model.graph(a) for a in chunk])
        with torch.enable_grad():
            out = model(graph, forces=True)
        for k, a in enumerate(chunk):
            energy, _ = _labels(a, False, "structure")
            de.append((float(out["energy"][k].detach()) - energy) / len(a))
        ref = np.concatenate([np.asarray(a.get_forces()) for a in chunk])
        df += float(((out["forces"].detach().numpy() - ref) ** 2).sum())
        n_f += ref.size
    de = np.array(de)
    return {"energy_rmse": float(np.sqrt(np.mean(de**2))), "force_rmse": math.sqrt(df / n_f), "n": len(de)}


def train_gnn(
    train: Sequence[Atoms],
    valid: Sequence[Atoms],
    elements: Sequence[str] | None = None,
    settings: GNNSettings | None = None,
    training: GNNTrainingSettings | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    description: str = "",
) -> tuple[GNN, list[dict]]:
    """Train a :class:`GNN` on labelled structures (energy, and forces when ``force_weight`` > 0).

    ``train`` and ``valid`` are Atoms with their labels in a calculator (as
    :func:`mlipbias.datasets.load_dataset` returns them). After every epoch the validation loss
    is computed; the best model so far is written to ``out`` (if given) together with the
    history, so an interrupted run keeps its best model. Returns (best model, history), where
    history has one dict per epoch: train and validation loss, validation energy RMSE (eV/atom)
    and force RMSE (eV/A).
    """
    from tqdm.auto import tqdm

    training = training or GNNTrainingSettings()
    if not train or not valid:
        raise ValueError(
            f"train_gnn needs training and validation structures, got {len(train)} and {len(valid)}"
        )
    if elements is None:
        elements = sorted(
            {s for a in train for s in a.get_chemical_symbols()}, key=lambda s: atomic_numbers[s]
        )
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    model = GNN(elements, settings)
    use_forces = training.force_weight > 0

    def prepare(structures, what):
        items = []
        for k, a in enumerate(structures):
            energy, forces = _labels(a, use_forces, f"{what} structure {k}")
            g = model.graph(a)
            items.append((g, energy, None if forces is None else torch.tensor(forces, dtype=DTYPE)))
        return items

    train_items, valid_items = prepare(train, "training"), prepare(valid, "validation")
    model.fit_energy_shift(train, np.array([e for _, e, _ in train_items]))
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    gamma = training.lr_decay ** (1.0 / training.epochs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)

    def batch_loss(items, augment: bool, create_graph: bool):
        graphs, targets_f = [], []
        for g, _, f in items:
            if augment:
                q = random_orthogonal(rng)
                g = _rotated(g, q)
                f = None if f is None else f @ torch.tensor(q.T, dtype=DTYPE)
            graphs.append(g)
            targets_f.append(f)
        graph = batch_graphs(graphs)
        out = model(graph, forces=use_forces, create_graph=create_graph)
        n = graph.n_atoms.to(DTYPE)
        target_e = torch.tensor([e for _, e, _ in items], dtype=DTYPE)
        loss_e = (((out["energy"] - target_e) / n) ** 2).mean()
        loss = loss_e
        if use_forces:
            loss_f = ((out["forces"] - torch.cat(targets_f)) ** 2).mean()
            loss = loss + training.force_weight * loss_f
        return loss

    history, best = [], math.inf
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    bar = tqdm(range(training.epochs), desc="GNN training", unit="epoch", disable=None if progress else True)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(train_items))
        total, count = 0.0, 0
        for start in range(0, len(order), training.batch_size):
            items = [train_items[k] for k in order[start : start + training.batch_size]]
            optimizer.zero_grad()
            loss = batch_loss(items, training.augment, create_graph=use_forces)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(items)
            count += len(items)
        scheduler.step()
        model.eval()
        valid_loss = 0.0
        for start in range(0, len(valid_items), 256):
            items = valid_items[start : start + 256]
            with torch.enable_grad():
                valid_loss += float(batch_loss(items, False, create_graph=False).detach()) * len(items)
        valid_loss /= len(valid_items)
        record = {"epoch": epoch + 1, "train_loss": total / count, "valid_loss": valid_loss}
        history.append(record)
        if valid_loss < best:
            best = valid_loss
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out is not None:
                save_gnn(model, out, description, {"history": history, "best_epoch": epoch + 1})
        bar.set_postfix(train=f"{record['train_loss']:.3g}", valid=f"{valid_loss:.3g}")
    model.load_state_dict(best_state)
    model.eval()
    metrics = evaluate(model, valid)
    history[-1].update(valid_energy_rmse=metrics["energy_rmse"], valid_force_rmse=metrics["force_rmse"])
    if out is not None:
        best_epoch = int(np.argmin([h["valid_loss"] for h in history])) + 1
        save_gnn(model, out, description, {"history": history, "best_epoch": best_epoch, "valid": metrics})
    return model, history


__all__ = [
    "GNN",
    "GNNCalculator",
    "GNNSettings",
    "GNNTrainingSettings",
    "Graph",
    "batch_graphs",
    "build_graph",
    "evaluate",
    "load_gnn",
    "random_orthogonal",
    "save_gnn",
    "train_gnn",
]
