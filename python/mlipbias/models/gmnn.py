"""The Gaussian-moment neural network (GM-NN) of Zaverkin et al. (seed 002 "Methods", Eqs. 9-13).

One network for all elements on the Gaussian moments G_i of :mod:`mlipbias.descriptors.gaussian_moments`
(the species enter through the trainable per-pair coefficients ``beta``), with the neural-tangent
parameterization (weights drawn from N(0, 1), scaled in the forward pass; biases start at 0):

    h_0 = G_i(beta)
    z_l = W_l h_(l-1) / sqrt(n_(l-1)) + 0.1 b_l,   h_l = silu(z_l)      l = 1 .. L-1
    z_L = W_L h_(L-1) / sqrt(n_(L-1)) + 0.1 b_L
    E_i = c * s[Z_i] * z_L + shift[Z_i]

``shift`` starts at the linear regression of the training energies on composition, ``s`` at 1 and
the constant ``c`` is that regression's RMSE per atom (seed 002 Eq. 10). The bias factor 0.1 and
the N(0, 1) weights are those of the authors' published code (apax ``NTKLinear``); ``beta`` starts
uniform in [-1, 1] (apax's default). Every parameter carries a leading ensemble-member axis, as in
:class:`mlipbias.models.network.BPNN`, whose interface this class shares: the model, the training,
the GMM and the gradient features use either network.

In the ``.mlip`` file the network is written as the BP-NN records of every element holding the
*effective* weights (``W_l / sqrt(n)``, ``0.1 b_l``, the last layer times ``s[e]``), so the network
part of the C++ inference is the BP-NN's; ``docs/model_file.md`` ("GM-NN") has the records.
Forces and stresses come from autograd through the pair vectors (no stored derivatives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mlipbias.descriptors.gaussian_moments import GaussianMoments
from mlipbias.models.network import (
    HEADS,
    AtomOutputs,
    MemberNetwork,
    check_network_settings,
    draw_member_layers,
    numpy_copy,
)

BIAS_FACTOR = 0.1
# Learning rates of the parameter groups relative to the network's (seed 002: 0.03 network,
# 0.02 representation, 0.05 shift, 0.001 scale).
LEARNING_RATE_RATIOS = {"beta": 2.0 / 3.0, "energy_shift": 5.0 / 3.0, "element_scale": 1.0 / 30.0}


class GMNN(MemberNetwork):
    """GM-NN for M ensemble members at once, with an optional MVE or evidential head.

    Args:
        descriptor: the Gaussian-moment settings; its element order is the model's.
        hidden: hidden layer widths (published: 512, 512).
        n_members, head, seed: as for :class:`BPNN` (member m is drawn with seed ``seed * 1000 + m``).
    """

    kind = "gmnn"
    activation = "silu"

    def __init__(
        self,
        descriptor: GaussianMoments,
        hidden: Sequence[int] = (512, 512),
        n_members: int = 1,
        head: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        hidden = check_network_settings(hidden, n_members, head)
        self.descriptor = descriptor
        self.elements = tuple(descriptor.elements)
        self.hidden = tuple(hidden)
        self.n_members = int(n_members)
        self.head = head
        self.sizes = [descriptor.n_features, *hidden, 1]
        m, n_el, d = self.n_members, len(self.elements), descriptor
        dtype = torch.float64
        self.register_buffer("energy_scale", torch.ones(m, dtype=dtype))
        if head is not None:
            self.register_buffer("head_scale", torch.ones(m, HEADS[head], dtype=dtype))
        self.weights = torch.nn.ParameterDict()
        shapes = {
            "beta": (n_el, n_el, d.n_radial, d.n_basis),
            "element_scale": (n_el,),
            "energy_shift": (n_el,),
        }
        for layer, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True), 1):
            shapes[f"W{layer}"] = (n_out, n_in)
            shapes[f"b{layer}"] = (n_out,)
        if head is not None:
            shapes["head_W"] = (HEADS[head], hidden[-1])
            shapes["head_b"] = (HEADS[head],)
        for name, shape in shapes.items():
            self.weights[name] = torch.nn.Parameter(torch.zeros(m, *shape, dtype=dtype))
        self.reset_parameters(seed)

    # ---------------------------------------------------------------- settings

    def reset_parameters(self, seed: int = 0) -> None:
        with torch.no_grad():
            for m in range(self.n_members):
                gen = torch.Generator().manual_seed(int(seed) * 1000 + m)
                beta = self.weights["beta"]
                beta[m] = 2.0 * torch.rand(beta.shape[1:], generator=gen, dtype=beta.dtype) - 1.0
                draw_member_layers(self.weights, "", self.n_layers, m, gen, False, self.head is not None)
                self.weights["element_scale"][m] = 1.0
                self.weights["energy_shift"][m] = 0.0

    def layer(self, element: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective (W, b) of a layer for atoms of ``element``: ``z_l = W h + b`` (the BP-NN form)."""
        W, b = self.weights[f"W{layer}"], self.weights[f"b{layer}"]
        W, b = W / math.sqrt(W.shape[2]), BIAS_FACTOR * b
        if layer == self.n_layers:
            s = self.weights["element_scale"][:, self.elements.index(element)]
            W, b = W * s[:, None, None], b * s[:, None]
        return W, b

    def head_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weights["head_W"], self.weights["head_b"]

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Adam parameter groups with seed 002's learning-rate ratios (network weights: ``learning_rate``)."""
        groups = {name: [] for name in ("network", *LEARNING_RATE_RATIOS)}
        for name, p in self.weights.items():
            groups[name if name in LEARNING_RATE_RATIOS else "network"].append(p)
        return [
            {"params": params, "lr": learning_rate * LEARNING_RATE_RATIOS.get(name, 1.0), "name": name}
            for name, params in groups.items()
        ]

    def clone(self, state_dict: dict | None = None) -> GMNN:
        copy = GMNN(self.descriptor, self.hidden, self.n_members, self.head)
        copy.load_state_dict(self.state_dict() if state_dict is None else state_dict)
        return copy

    def _energy_shift(self) -> torch.Tensor:
        return self.weights["energy_shift"]

    def scale_sketch(self, gradient) -> None:
        """Make sketched features of the effective weights those of the trained parameters.

        The sketch of :class:`BPNN` differentiates with respect to the effective ``[W b]`` of
        :meth:`layer`; the gradient with respect to the parameters ``[W_l b_l]`` of the
        neural-tangent form is that one times ``1/sqrt(n_in)`` (weights) and 0.1 (bias), and the last
        layer's also times ``s[e]``. Folding these factors into R2 and R1 (member 0) gives the
        features of seed 002 with the BP-NN's formula, in Python and in C++.
        """
        s = self.weights["element_scale"][0].detach().cpu().numpy()
        for (e, layer), r2 in gradient.R2.items():
            n_in = r2.shape[1] - 1
            gradient.R2[(e, layer)] = r2 * np.append(np.full(n_in, 1.0 / math.sqrt(n_in)), BIAS_FACTOR)
            if layer == self.n_layers:
                gradient.R1[(e, layer)] = gradient.R1[(e, layer)] * s[e]
        gradient._cache.clear()

    # ---------------------------------------------------------------- evaluation

    def pair_vectors(self, batch, requires_grad: bool) -> torch.Tensor:
        """The batch's pair vectors D_ij as (M, n_pairs, 3), one copy per member (per-member gradients)."""
        if batch.neighbours is None:
            raise ValueError("GM-NN computes its descriptors from the neighbour pairs: the batch has none")
        D = torch.as_tensor(batch.neighbours.D, dtype=torch.float64, device=self.energy_scale.device)
        D = D.unsqueeze(0).repeat(self.n_members, 1, 1)
        return D.requires_grad_(True) if requires_grad else D

    def descriptors(self, D: torch.Tensor, batch) -> torch.Tensor:
        """Gaussian moments (M, n_atoms, n_features) of the batch from pair vectors D (M, n_pairs, 3)."""
        nb, device = batch.neighbours, D.device
        i = torch.as_tensor(nb.i, device=device)
        j = torch.as_tensor(nb.j, device=device)
        return self.descriptor.values(D, i, batch.species, j, self.weights["beta"], batch.species.shape[0])

    def forward(
        self,
        D: torch.Tensor,
        batch,
        *,
        hidden: bool = False,
        detach_head: bool = False,
        sketch=None,
    ) -> AtomOutputs:
        """Atomic outputs of a batch (as :meth:`BPNN.forward`), from pair vectors D (M, n_pairs, 3)."""
        species = batch.species

        def affine(layer, h):  # the neural-tangent form of z_l (module docstring)
            W, b = self.weights[f"W{layer}"], self.weights[f"b{layer}"]
            return torch.baddbmm(
                BIAS_FACTOR * b.unsqueeze(1), h, W.transpose(1, 2), alpha=1 / math.sqrt(W.shape[2])
            )

        z, h, inputs, slopes = self._dense(self.descriptors(D, batch), affine, sketch is not None)
        s = self.weights["element_scale"][:, species]
        energy = self.energy_scale[:, None] * s * z.squeeze(2) + self.weights["energy_shift"][:, species]
        out = AtomOutputs(energy, hidden=h if hidden else None)
        if self.head is not None:
            out.head = self._head_outputs(*self.head_layer(), h, detach_head)
        if sketch is not None:
            out.features = self._features(species, inputs, slopes, sketch)
        return out

    def _features(self, species, inputs, slopes, sketch) -> torch.Tensor:
        """Sketched gradient features of member 0 (n_atoms, K), each atom in its element's block."""
        features = None
        for e in range(self.n_elements):
            rows = torch.nonzero(species == e).squeeze(1)
            if len(rows) == 0:
                continue
            block = self._sketch(e, [x[:, rows] for x in inputs], [x[:, rows] for x in slopes], sketch)
            if features is None:
                features = block.new_zeros((species.shape[0], block.shape[1]))
            features = features.index_copy(0, rows, block)
        return features

    # ---------------------------------------------------------------- model-file records

    def to_records(self) -> dict[str, np.ndarray | str]:
        """Descriptor settings, beta and scales per member, the effective BP-NN records of every element."""
        records: dict[str, np.ndarray | str] = dict(self.descriptor.to_records())
        n = self.descriptor.n_features
        for el in self.elements:
            records[f"scaling/{el}/mean"] = np.zeros(n)
            records[f"scaling/{el}/std"] = np.ones(n)
        records["model/kind"] = self.kind
        self._model_records(records)
        for m in range(self.n_members):
            records[f"member/{m}/descriptor/beta"] = numpy_copy(self.weights["beta"][m])
            records[f"member/{m}/gmnn/element_scale"] = numpy_copy(self.weights["element_scale"][m])
            self._member_records(records, m, lambda el: self.head_layer())
        return records

    @classmethod
    def from_records(cls, records) -> GMNN:
        """The network of schema-checked records (inverse of :meth:`to_records`)."""
        descriptor = GaussianMoments.from_records(records)
        elements = descriptor.elements
        n_members, n_layers, hidden, head = cls._record_sizes(records, elements)
        net = cls(descriptor, hidden, n_members, head=head)

        def get(name):
            if name not in records:
                raise ValueError(f"missing record {name}")
            return np.asarray(records[name], dtype=float)

        with torch.no_grad():
            for m in range(n_members):
                w = net.weights
                w["beta"][m] = torch.from_numpy(
                    get(f"member/{m}/descriptor/beta").reshape(w["beta"].shape[1:])
                )
                s = get(f"member/{m}/gmnn/element_scale")
                if s.shape != (len(elements),) or not np.all(s != 0):
                    raise ValueError(
                        f"record member/{m}/gmnn/element_scale must hold {len(elements)} non-zero values"
                    )
                w["element_scale"][m] = torch.from_numpy(s)
                w["energy_shift"][m] = torch.from_numpy(get(f"member/{m}/energy_shift"))
                net.energy_scale[m] = float(get(f"member/{m}/energy_scale")[0])
                if head is not None:
                    net.head_scale[m] = torch.from_numpy(get(f"member/{m}/head_scale"))
                names = [f"{k}{layer}" for layer in range(1, n_layers + 1) for k in "Wb"]
                names += ["head_W", "head_b"] if head is not None else []
                for name in names:
                    target = w[name][m]
                    # Undo the effective form: 1/sqrt(n_in) or 0.1, and s[e] on the last layer.
                    factor = 1.0
                    if name[0] == "W" and name != "head_W":
                        factor = math.sqrt(target.shape[1])
                    elif name[0] == "b" and name != "head_b":
                        factor = 1.0 / BIAS_FACTOR
                    last = name in (f"W{n_layers}", f"b{n_layers}")
                    shared = []
                    for e, el in enumerate(elements):
                        value = get(f"member/{m}/{el}/{name}")
                        if value.shape != tuple(target.shape):
                            raise ValueError(
                                f"record member/{m}/{el}/{name} has shape {list(value.shape)}, "
                                f"expected {list(target.shape)}"
                            )
                        shared.append(value * factor / (s[e] if last else 1.0))
                    for el, value in zip(elements[1:], shared[1:], strict=True):
                        if not np.allclose(value, shared[0], rtol=1e-9, atol=1e-12):
                            raise ValueError(
                                f"record member/{m}/{el}/{name} differs from member/{m}/{elements[0]}/{name}"
                                ": "
                                "a GM-NN shares one network among its elements"
                            )
                    target.copy_(torch.from_numpy(shared[0]))
        return net
