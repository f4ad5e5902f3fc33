"""The Behler-Parrinello network: one MLP per element, evaluated for all ensemble members at once.

The math is the one of ``docs/model_file.md`` ("Network"), which the C++ inference follows too:

    h_0 = (G_i - mean_e) / std_e
    z_l = W_l h_(l-1) + b_l,  h_l = act(z_l)      l = 1 .. L-1
    z_L = W_L h_(L-1) + b_L
    E_i = s * z_L + shift[e]

Every weight carries a leading member axis (``W_l`` has shape (M, n_out, n_in)), so an ensemble of
M members is one batched matrix product per layer: members share the descriptors and train in one
loop. Optional heads (mean-variance estimation, deep evidential regression) are extra linear outputs
of the last hidden layer, ``raw = W_head h_(L-1) + b_head``, with a per-member unit ``head_scale``
for each output; their meaning lives in :mod:`mlipbias.uq.mve` and :mod:`mlipbias.uq.evidential`.

Everything here is float64: the descriptors come from the C++ core in float64 and the C++ inference
must reproduce these numbers to round-off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlipbias.descriptors import SymmetryFunctions
from mlipbias.uq import mve

ACTIVATIONS = ("tanh", "silu")
HEADS = {"mve": 2, "evidential": 6}  # number of raw head outputs per atom


def activation_and_derivative(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``act(z)`` and ``act'(z)``, written out so that autograd can differentiate both again."""
    if name == "tanh":
        h = torch.tanh(z)
        return h, 1.0 - h * h
    sig = torch.sigmoid(z)
    return z * sig, sig * (1.0 + z * (1.0 - sig))


def check_network_settings(hidden: Sequence[int], n_members, head: str | None) -> list[int]:
    """The hidden widths as ints; a ValueError names a bad width list, member count or head."""
    hidden = [int(h) for h in hidden]
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden must list at least one positive layer width, got {hidden}")
    if int(n_members) != n_members or n_members < 1:
        raise ValueError(f"n_members must be a positive integer, got {n_members}")
    if head is not None and head not in HEADS:
        raise ValueError(f"head must be None or one of {', '.join(HEADS)}, got {head!r}")
    return hidden


def composition_fit(energies: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-element energies by least squares of total energies (eV) on the atom counts
    (n_structures, n_elements), the minimum-norm solution, and the RMSE per atom of that fit."""
    counts = np.asarray(counts, dtype=float)
    shift, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    residual = (energies - counts @ shift) / counts.sum(axis=1)
    return shift, float(np.sqrt(np.mean(residual**2)))


def draw_member_layers(weights, prefix: str, n_layers: int, m: int, gen, lecun: bool, head: bool) -> None:
    """Member m's weights ``{prefix}W1 .. W{n_layers}`` from N(0, 1), over sqrt(n_in) with ``lecun``,
    zero biases, and with ``head`` the head weights at 0.01 of LeCun-normal (drawn in that order)."""
    for layer in range(1, n_layers + 1):
        w = weights[f"{prefix}W{layer}"]
        w[m] = torch.randn(w.shape[1:], generator=gen, dtype=w.dtype)
        if lecun:
            w[m] /= math.sqrt(w.shape[2])
        weights[f"{prefix}b{layer}"][m] = 0.0
    if head:
        w = weights[f"{prefix}head_W"]
        w[m] = 0.01 * torch.randn(w.shape[1:], generator=gen, dtype=w.dtype) / math.sqrt(w.shape[2])
        weights[f"{prefix}head_b"][m] = 0.0


@dataclass
class AtomOutputs:
    """What :meth:`BPNN.forward` gives for a set of atoms (atoms in input order).

    ``energy`` (M, n_atoms) atomic energies of every member (eV). ``hidden`` (M, n_atoms, H) the last
    hidden layer ``h_(L-1)``; ``head`` (M, n_atoms, n_head) raw head outputs; ``features``
    (n_atoms, K) sketched gradient features of member 0 (``docs/model_file.md``). Optional entries
    are None unless requested.
    """

    energy: torch.Tensor
    hidden: torch.Tensor | None = None
    head: torch.Tensor | None = None
    features: torch.Tensor | None = None


class MemberNetwork(torch.nn.Module):
    """What the BP-NN and the GM-NN (:mod:`mlipbias.models.gmnn`) share: M members in one set of
    tensors, the dense layers ``z_l = W_l h + b_l`` of :meth:`layer` (effective weights), the output
    scale and shift, the heads, the sketched gradient features and the network's model-file records.

    A subclass sets ``elements``, ``sizes``, ``n_members``, ``head``, ``activation``, the buffers
    ``energy_scale`` (M,) and ``head_scale``, and defines :meth:`layer` and :meth:`_energy_shift`.
    """

    @property
    def n_layers(self) -> int:
        """Number of dense layers L (hidden layers + output layer)."""
        return len(self.sizes) - 1

    @property
    def n_elements(self) -> int:
        return len(self.elements)

    def layer(self, element: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _energy_shift(self) -> torch.Tensor:
        """The per-element shift (M, n_elements), a buffer or a parameter."""
        raise NotImplementedError

    def fit_energy_shift(self, energies: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-element shift by least squares of total energies on composition, and the output scale.

        ``counts`` (n_structures, n_elements) are atom counts. The shift is the minimum-norm solution
        (datasets of one composition determine only the per-atom mean); the scale ``s`` is the RMSE per
        atom of that regression (1 eV when it is exactly 0), so the networks start on residuals of
        order one. Every member gets the same values. Returns (shift, scale).
        """
        shift, scale = composition_fit(np.asarray(energies, dtype=float), counts)
        if not scale > 1e-12:
            scale = 1.0
        with torch.no_grad():
            self._energy_shift()[:] = torch.from_numpy(shift)
            self.energy_scale[:] = scale
        return shift, scale

    def _dense(self, h: torch.Tensor, affine, slopes_needed: bool):
        """The dense layers from ``h_0``: ``affine(l, h)`` gives z_l. Returns (z_L, h_(L-1), the inputs
        h_0 .. h_(L-1) of every layer, act'(z_l) of the hidden layers when ``slopes_needed``)."""
        inputs, slopes = [], []
        for layer in range(1, self.n_layers):
            inputs.append(h)
            z = affine(layer, h)
            if not slopes_needed:
                h = torch.tanh(z) if self.activation == "tanh" else torch.nn.functional.silu(z)
            else:  # the sketch backpropagates explicitly and needs act'(z)
                h, slope = activation_and_derivative(self.activation, z)
                slopes.append(slope)
        inputs.append(h)
        return affine(self.n_layers, h), h, inputs, slopes

    def _head_outputs(self, W_head, b_head, h: torch.Tensor, detach_head) -> torch.Tensor:
        """Raw head outputs ``W_head h + b_head`` per member (:func:`mlipbias.uq.mve.head_outputs`)."""
        return mve.head_outputs(
            lambda x: torch.baddbmm(b_head.unsqueeze(1), x, W_head.transpose(1, 2)), h, detach_head, self.head
        )

    @staticmethod
    def _record_sizes(records, elements) -> tuple[int, int, list[int], str | None]:
        """(members, layers, hidden widths, head) that schema-checked records describe."""
        n_members = int(np.ravel(records["model/n_members"])[0])
        n_layers = int(np.ravel(records["model/n_layers"])[0])
        hidden = [int(records[f"member/0/{elements[0]}/W{layer}"].shape[0]) for layer in range(1, n_layers)]
        return n_members, n_layers, hidden, records.get("model/head")

    def _model_records(self, records: dict) -> None:
        records["model/activation"] = self.activation
        records["model/n_members"] = np.array([self.n_members], dtype=np.int64)
        records["model/n_layers"] = np.array([self.n_layers], dtype=np.int64)
        if self.head is not None:
            records["model/head"] = self.head

    def _member_records(self, records: dict, m: int, head_weights) -> None:
        """Member m's effective layers of every element (:meth:`layer`), the heads
        (``head_weights(element)`` gives (W, b)), output scale, shift and head units."""
        for el in self.elements:
            for layer in range(1, self.n_layers + 1):
                W, b = self.layer(el, layer)
                records[f"member/{m}/{el}/W{layer}"] = numpy_copy(W[m])
                records[f"member/{m}/{el}/b{layer}"] = numpy_copy(b[m])
            if self.head is not None:
                W_head, b_head = head_weights(el)
                records[f"member/{m}/{el}/head_W"] = numpy_copy(W_head[m])
                records[f"member/{m}/{el}/head_b"] = numpy_copy(b_head[m])
        records[f"member/{m}/energy_scale"] = numpy_copy(self.energy_scale[m : m + 1])
        records[f"member/{m}/energy_shift"] = numpy_copy(self._energy_shift()[m])
        if self.head is not None:
            records[f"member/{m}/head_scale"] = numpy_copy(self.head_scale[m])

    def _sketch(self, e: int, inputs, slopes, sketch) -> torch.Tensor:
        """Sketched gradient features of member 0 for atoms of element e: (n_e, K), zero off-block.

        With ``a_l = [h_(l-1); 1]`` and ``delta_l = dE_i/dz_l`` (backpropagated explicitly, so the
        result stays differentiable in the inputs), ``phi[e, l] = (R1 delta_l) * (R2 a_l) / sqrt(k)``.
        """
        R1, R2 = sketch
        el = self.elements[e]
        n_e = inputs[0].shape[1]
        delta = self.energy_scale[0].expand(n_e, 1)  # dE_i / dz_L
        blocks = []
        for layer in range(self.n_layers, 0, -1):
            a = inputs[layer - 1][0]
            a = torch.cat([a, a.new_ones(n_e, 1)], dim=1)
            r1, r2 = R1[(e, layer)], R2[(e, layer)]
            k = r1.shape[0]
            blocks.append((delta @ r1.T) * (a @ r2.T) / math.sqrt(k))
            if layer > 1:
                W = self.layer(el, layer)[0][0]
                delta = (delta @ W) * slopes[layer - 2][0]
        block = torch.cat(blocks[::-1], dim=1)  # layers 1..L
        width = block.shape[1]
        parts = [
            block.new_zeros(n_e, width * e),
            block,
            block.new_zeros(n_e, width * (self.n_elements - e - 1)),
        ]
        return torch.cat(parts, dim=1)


class BPNN(MemberNetwork):
    """Per-element MLPs on symmetry functions, with M ensemble members and an optional head.

    Args:
        descriptor: the symmetry functions; its element order is the model's.
        hidden: widths of the hidden layers (default two of 30, as in Cubuk & Schoenholz (2020)).
        activation: ``"tanh"`` or ``"silu"``.
        n_members: ensemble size M.
        head: None, ``"mve"`` or ``"evidential"``.
        seed: weights of member m are drawn from ``torch.Generator`` seeded with ``seed * 1000 + m``,
            so a member does not depend on how many others there are.

    Input scaling, output scale and per-element shift are buffers (set by :meth:`fit_scaling` and
    :meth:`fit_energy_shift` from training data); weights and head are the trainable parameters.
    """

    def __init__(
        self,
        descriptor: SymmetryFunctions,
        hidden: Sequence[int] = (30, 30),
        activation: str = "tanh",
        n_members: int = 1,
        head: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        hidden = check_network_settings(hidden, n_members, head)
        self.descriptor = descriptor
        self.elements = tuple(descriptor.elements)
        self.activation = activation
        self.hidden = tuple(hidden)
        self.n_members = int(n_members)
        self.head = head
        self.sizes = [descriptor.n_sf, *hidden, 1]
        n_el, n_sf, m = len(self.elements), descriptor.n_sf, self.n_members
        dtype = torch.float64
        self.register_buffer("scaling_mean", torch.zeros(n_el, n_sf, dtype=dtype))
        self.register_buffer("scaling_std", torch.ones(n_el, n_sf, dtype=dtype))
        self.register_buffer("energy_scale", torch.ones(m, dtype=dtype))
        self.register_buffer("energy_shift", torch.zeros(m, n_el, dtype=dtype))
        if head is not None:
            self.register_buffer("head_scale", torch.ones(m, HEADS[head], dtype=dtype))
        self.weights = torch.nn.ParameterDict()
        for el in self.elements:
            for layer, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True), 1):
                self.weights[f"{el}_W{layer}"] = torch.nn.Parameter(torch.zeros(m, n_out, n_in, dtype=dtype))
                self.weights[f"{el}_b{layer}"] = torch.nn.Parameter(torch.zeros(m, n_out, dtype=dtype))
            if head is not None:
                n_head = HEADS[head]
                self.weights[f"{el}_head_W"] = torch.nn.Parameter(
                    torch.zeros(m, n_head, hidden[-1], dtype=dtype)
                )
                self.weights[f"{el}_head_b"] = torch.nn.Parameter(torch.zeros(m, n_head, dtype=dtype))
        self.reset_parameters(seed)

    # ---------------------------------------------------------------- settings

    def reset_parameters(self, seed: int = 0) -> None:
        """LeCun-normal weights (std 1/sqrt(n_in)), zero biases; head weights 0.01 of that."""
        with torch.no_grad():
            for m in range(self.n_members):
                gen = torch.Generator().manual_seed(int(seed) * 1000 + m)
                for el in self.elements:
                    draw_member_layers(
                        self.weights, f"{el}_", self.n_layers, m, gen, True, self.head is not None
                    )

    def layer(self, element: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of a layer (1-based), shapes (M, n_out, n_in) and (M, n_out)."""
        return self.weights[f"{element}_W{layer}"], self.weights[f"{element}_b{layer}"]

    def clone(self, state_dict: dict | None = None) -> BPNN:
        """A copy of this network (on the CPU), with ``state_dict`` instead of the current values if given."""
        copy = BPNN(self.descriptor, self.hidden, self.activation, self.n_members, self.head)
        copy.load_state_dict(self.state_dict() if state_dict is None else state_dict)
        return copy

    # ---------------------------------------------------------------- fitting from data

    def fit_scaling(self, G: np.ndarray, species: np.ndarray) -> None:
        """Input shift and scale per element from training descriptors (constant features get 1)."""
        for e, el in enumerate(self.elements):
            rows = G[species == e]
            if len(rows) == 0:
                raise ValueError(
                    f"the training data has no {el} atoms: cannot scale the {el} network's inputs"
                )
            std = rows.std(axis=0)
            std[std < 1e-8 * max(1.0, float(np.abs(rows).max()))] = 1.0
            self.scaling_mean[e] = torch.from_numpy(rows.mean(axis=0))
            self.scaling_std[e] = torch.from_numpy(std)

    def _energy_shift(self) -> torch.Tensor:
        return self.energy_shift

    # ---------------------------------------------------------------- evaluation

    def forward(
        self,
        G: torch.Tensor,
        species: torch.Tensor,
        *,
        hidden: bool = False,
        detach_head: bool = False,
        sketch: tuple[dict[tuple[int, int], torch.Tensor], dict[tuple[int, int], torch.Tensor]] | None = None,
    ) -> AtomOutputs:
        """Atomic energies (and optionally last hidden layer, head outputs, sketched features).

        ``G`` is (n_atoms, n_sf), shared by all members, or (M, n_atoms, n_sf), one copy per member
        (so that autograd gives each member's ``dE/dG`` separately). ``species`` (n_atoms,) holds
        model element indices. ``sketch = (R1, R2)`` with ``R1[(e, l)]`` (k, n_out) and ``R2[(e, l)]``
        (k, n_in + 1) asks for the sketched gradient features of member 0. ``detach_head`` feeds the
        heads a detached last hidden layer, so that a loss on the heads trains the heads only.
        """
        m, n_sf = self.n_members, self.sizes[0]
        if not (G.dim() == 2 or (G.dim() == 3 and G.shape[0] == m)) or G.shape[-1] != n_sf:
            raise ValueError(
                f"descriptors must have shape (n_atoms, {n_sf}) or ({m}, n_atoms, {n_sf}), "
                f"got {tuple(G.shape)}"
            )
        if G.dim() == 2:
            G = G.unsqueeze(0).expand(m, *G.shape)
        n_atoms = G.shape[1]
        # Atoms sorted by element, each element's block evaluated by its network, then put back in order.
        order = torch.argsort(species, stable=True)
        counts = torch.bincount(species, minlength=self.n_elements).tolist()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n_atoms, device=order.device)
        G_sorted = G[:, order]
        energies, hiddens, heads, features = [], [], [], []
        start = 0
        for e, count in enumerate(counts):
            x = G_sorted[:, start : start + count]
            start += count
            out = self._element_forward(e, x, sketch, detach_head)
            energies.append(out.energy)
            hiddens.append(out.hidden)
            heads.append(out.head)
            features.append(out.features)
        result = AtomOutputs(torch.cat(energies, dim=1)[:, inverse])
        if hidden:
            result.hidden = torch.cat(hiddens, dim=1)[:, inverse]
        if self.head is not None:
            result.head = torch.cat(heads, dim=1)[:, inverse]
        if sketch is not None:
            result.features = torch.cat(features, dim=0)[inverse]
        return result

    def _element_forward(self, e: int, x: torch.Tensor, sketch, detach_head: bool) -> AtomOutputs:
        el = self.elements[e]
        h = (x - self.scaling_mean[e]) / self.scaling_std[e]

        def affine(layer, h):
            W, b = self.layer(el, layer)
            return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))

        z, h, inputs, slopes = self._dense(h, affine, sketch is not None)
        z = z.squeeze(2)  # (M, n_e)
        out = AtomOutputs(self.energy_scale[:, None] * z + self.energy_shift[:, e, None], hidden=h)
        if self.head is not None:
            out.head = self._head_outputs(*self._head_weights(el), h, detach_head)
        if sketch is not None:
            out.features = self._sketch(e, inputs, slopes, sketch)
        return out

    def _head_weights(self, element: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weights[f"{element}_head_W"], self.weights[f"{element}_head_b"]

    # ---------------------------------------------------------------- model-file records

    def to_records(self) -> dict[str, np.ndarray | str]:
        """The descriptor, scaling, model and member records of ``docs/model_file.md`` (+ heads)."""
        records: dict[str, np.ndarray | str] = dict(self.descriptor.to_records())
        for e, el in enumerate(self.elements):
            records[f"scaling/{el}/mean"] = numpy_copy(self.scaling_mean[e])
            records[f"scaling/{el}/std"] = numpy_copy(self.scaling_std[e])
        self._model_records(records)
        for m in range(self.n_members):
            self._member_records(records, m, self._head_weights)
        return records

    @classmethod
    def from_records(cls, records) -> BPNN:
        """The network of model-file records checked by :func:`mlipbias.modelfile.validate_model_records`."""
        descriptor = SymmetryFunctions.from_records(records)
        elements = descriptor.elements
        n_members, n_layers, hidden, head = cls._record_sizes(records, elements)
        net = cls(descriptor, hidden, str(records["model/activation"]), n_members, head=head)
        with torch.no_grad():
            for e, el in enumerate(elements):
                net.scaling_mean[e] = torch.from_numpy(np.asarray(records[f"scaling/{el}/mean"], dtype=float))
                net.scaling_std[e] = torch.from_numpy(np.asarray(records[f"scaling/{el}/std"], dtype=float))
            for m in range(n_members):
                net.energy_scale[m] = float(np.ravel(records[f"member/{m}/energy_scale"])[0])
                net.energy_shift[m] = torch.from_numpy(
                    np.asarray(records[f"member/{m}/energy_shift"], dtype=float)
                )
                if head is not None:
                    name = f"member/{m}/head_scale"
                    if name not in records:
                        raise ValueError(f"missing record {name}")
                    value = np.asarray(records[name], dtype=float)
                    if value.shape != (HEADS[head],) or not (value > 0).all():
                        raise ValueError(
                            f"record {name} must hold {HEADS[head]} positive values, got {value}"
                        )
                    net.head_scale[m] = torch.from_numpy(value)
                for el in elements:
                    names = [f"W{layer}" for layer in range(1, n_layers + 1)]
                    names += [f"b{layer}" for layer in range(1, n_layers + 1)]
                    if head is not None:
                        names += ["head_W", "head_b"]
                    for name in names:
                        record = f"member/{m}/{el}/{name}"
                        if record not in records:
                            raise ValueError(f"missing record {record}")
                        target = net.weights[f"{el}_{name}"][m]
                        value = np.asarray(records[record], dtype=float)
                        if value.shape != tuple(target.shape):
                            raise ValueError(
                                f"record {record} has shape {list(value.shape)}, "
                                f"expected {list(target.shape)} "
                                "(every element and member must have the same hidden widths)"
                            )
                        target.copy_(torch.from_numpy(value))
        return net


def numpy_copy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()
