"""Sketched gradient features (Zaverkin et al. 2024): posterior- and distance-based uncertainties.

The definitions are those of ``docs/model_file.md`` ("Sketched gradient features",
"Uncertainties"), which the C++ inference shares. For member 0 and layer l of the network of
element e, with ``a_l = [h_(l-1); 1]`` and ``delta_l = dE_i/dz_l``, the gradient of the atomic
energy with respect to ``[W_l b_l]`` is the outer product ``delta_l a_l^T``; its tensor sketch is

    phi_i[e, l] = (R1[e,l] delta_l) * (R2[e,l] a_l) / sqrt(k)

with Gaussian R1 (k x n_out), R2 (k x (n_in + 1)). ``E[phi . phi'] = g . g'`` for the full gradients
g, g' (the sketch preserves inner products in expectation). Zaverkin et al. 2024 (Eqs. 20-21) sum the
sketches of the layers into one k-vector; we concatenate them per element network and layer (K = elements x
layers x k): at equal K this ranked per-atom force errors at least as well in domain and, unlike the sums,
still out of domain (``examples/sio2_uncertainty/feature_layout.md``). The structure feature is the sum
``Phi = sum_i phi_i``; ``pbar = Phi / N`` (Zaverkin et al. 2024, Eq. 21).

    posterior:  U = sqrt(Phi^T A_E Phi),            U_i = sqrt(phi_i^T A_F phi_i)
    distance:   U = N min_s |Phi / N - pbar_s|,     U_i = min_j |phi_i - t_j|

``A_E = (sum_s pbar_s pbar_s^T + lambda I)^-1`` over training structures,
``A_F = (sum_j phi_j phi_j^T + lambda I)^-1`` over training atoms, ``t_j`` the training atoms'
features: all of them up to ``atom_subset`` (default :data:`DEFAULT_ATOM_SUBSET`), else their greedy
max-dist subset of that size (:func:`mlipbias.uq.selection.select_max_dist`, as seed 002 does). The
reference set costs K x 8 bytes per atom in the model file and K flops per atom pair at run time
(20,000 atoms x K = 192: 31 MB, ~4 Mflop per atom and step); the max-dist selection, needed only
above the cap, costs ~atom_subset x n_training_atoms x K flops once per training. These raw
values have no fixed unit; the model's conformal factors c_E, c_F (fitted on validation data by
``mlipbias train``) make them standard deviations in eV and eV/A.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

DEFAULT_K = 32
DEFAULT_LAMBDA = 1e-6
#: Training atoms kept as the reference of the distance uncertainty (all of them below this).
DEFAULT_ATOM_SUBSET = 20000


class GradientFeatures:
    """Sketch matrices of every element and layer, and the training data of the two uncertainties.

    ``R1[(e, l)]`` (k, n_out), ``R2[(e, l)]`` (k, n_in + 1) for element index e and layer l (1-based).
    The fitted arrays (``precision_energy``, ``precision_atom``, ``train_energy``, ``train_atom``)
    are None until :meth:`fit` (or loading) sets them.
    """

    def __init__(self, elements, k: int, R1: dict, R2: dict, lam: float = DEFAULT_LAMBDA):
        self.elements = tuple(elements)
        self.k = int(k)
        self.R1 = {key: np.asarray(v, dtype=float) for key, v in R1.items()}
        self.R2 = {key: np.asarray(v, dtype=float) for key, v in R2.items()}
        self.lam = float(lam)
        self.precision_energy: np.ndarray | None = None
        self.precision_atom: np.ndarray | None = None
        self.train_energy: np.ndarray | None = None
        self.train_atom: np.ndarray | None = None
        self._cache: dict = {}

    @classmethod
    def random(
        cls, network, k: int = DEFAULT_K, seed: int = 0, lam: float = DEFAULT_LAMBDA
    ) -> GradientFeatures:
        """Standard-normal sketch matrices for every element and layer of ``network``."""
        if int(k) != k or k < 1:
            raise ValueError(f"the sketch size k must be a positive integer, got {k}")
        rng = np.random.default_rng(seed)
        R1, R2 = {}, {}
        for e in range(network.n_elements):
            for layer, (n_in, n_out) in enumerate(zip(network.sizes[:-1], network.sizes[1:], strict=True), 1):
                R1[(e, layer)] = rng.standard_normal((k, n_out))
                R2[(e, layer)] = rng.standard_normal((k, n_in + 1))
        return cls(network.elements, k, R1, R2, lam)

    @property
    def n_features(self) -> int:
        """K = n_elements * n_layers * k."""
        n_layers = len(self.R1) // len(self.elements)
        return len(self.elements) * n_layers * self.k

    def sketch(self, like: torch.Tensor):
        """(R1, R2) as tensors of the dtype and device of ``like``, for :meth:`BPNN.forward`."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            to = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
            self._cache[key] = (
                {k: to(v) for k, v in self.R1.items()},
                {k: to(v) for k, v in self.R2.items()},
            )
        return self._cache[key]

    def _tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"the gradient features have no {name} (fit them on training data first)")
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        return self._cache[key]

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        atom_features: np.ndarray,
        structure: np.ndarray,
        n_atoms: np.ndarray,
        atom_subset: int = DEFAULT_ATOM_SUBSET,
    ) -> GradientFeatures:
        """Precisions and training features from the training atoms' features (n_atoms, K).

        ``structure`` (n_atoms,) is each atom's structure index, ``n_atoms`` the atoms per structure.
        ``atom_subset``: the atom distance keeps every training atom up to this many, else the
        greedy max-dist subset of this size.
        """
        from mlipbias.uq.selection import select_max_dist

        phi = np.asarray(atom_features, dtype=float)
        K = phi.shape[1]
        if K != self.n_features:
            raise ValueError(f"atom features have {K} columns, the sketch has {self.n_features}")
        Phi = np.zeros((len(n_atoms), K))
        np.add.at(Phi, structure, phi)
        pbar = Phi / np.asarray(n_atoms, dtype=float)[:, None]
        eye = self.lam * np.eye(K)
        self.precision_energy = _symmetric_inverse(pbar.T @ pbar + eye)
        self.precision_atom = _symmetric_inverse(phi.T @ phi + eye)
        self.train_energy = pbar
        if len(phi) <= int(atom_subset):
            self.train_atom = phi.copy()
        else:
            self.train_atom = phi[select_max_dist(phi, int(atom_subset))]
        self._cache = {key: v for key, v in self._cache.items() if not isinstance(key[0], str)}
        return self

    # ------------------------------------------------------------------ uncertainties (raw, uncalibrated)

    def posterior_energy(self, Phi: torch.Tensor) -> torch.Tensor:
        """(n_structures,) sqrt(Phi^T A_E Phi) from structure features (n_structures, K)."""
        A = self._tensor("precision_energy", Phi)
        return _sqrt(torch.einsum("sk,kl,sl->s", Phi, A, Phi))

    def posterior_atom(self, phi: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) sqrt(phi_i^T A_F phi_i)."""
        A = self._tensor("precision_atom", phi)
        return _sqrt(torch.einsum("ik,kl,il->i", phi, A, phi))

    def distance_energy(self, Phi: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """(n_structures,) N min_s |Phi / N - pbar_s|."""
        return n_atoms * _min_distance(Phi / n_atoms[:, None], self._tensor("train_energy", Phi))

    def distance_atom(self, phi: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) min_j |phi_i - t_j|."""
        return _min_distance(phi, self._tensor("train_atom", phi))

    # ------------------------------------------------------------------ records

    def to_records(self) -> dict[str, np.ndarray]:
        records = {
            "uq/gradient/k": np.array([self.k], dtype=np.int64),
            "uq/gradient/lambda": np.array([self.lam]),
        }
        for (e, layer), r1 in self.R1.items():
            records[f"uq/gradient/{self.elements[e]}/R1_{layer}"] = r1
            records[f"uq/gradient/{self.elements[e]}/R2_{layer}"] = self.R2[(e, layer)]
        for name in ("precision_energy", "precision_atom", "train_energy", "train_atom"):
            value = getattr(self, name)
            if value is not None:
                records[f"uq/gradient/{name}"] = value
        return records

    @classmethod
    def from_records(cls, records: Mapping, elements, n_layers: int) -> GradientFeatures:
        def get(name):
            if name not in records:
                raise ValueError(f"missing record {name}")
            return records[name]

        k = int(np.ravel(get("uq/gradient/k"))[0])
        R1, R2 = {}, {}
        for e, el in enumerate(elements):
            for layer in range(1, n_layers + 1):
                R1[(e, layer)] = get(f"uq/gradient/{el}/R1_{layer}")
                R2[(e, layer)] = get(f"uq/gradient/{el}/R2_{layer}")
        lam = float(np.ravel(records.get("uq/gradient/lambda", [DEFAULT_LAMBDA]))[0])
        out = cls(elements, k, R1, R2, lam)
        for name in ("precision_energy", "precision_atom", "train_energy", "train_atom"):
            if f"uq/gradient/{name}" in records:
                setattr(out, name, np.asarray(records[f"uq/gradient/{name}"], dtype=float))
        return out


def _symmetric_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite matrix through its Cholesky factor, symmetrised."""
    import scipy.linalg

    inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(matrix, lower=True), np.eye(len(matrix)))
    return 0.5 * (inverse + inverse.T)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(x, min=1e-300))


def _min_distance(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Distance of each row of x to its nearest row of train, differentiable in x."""
    with torch.no_grad():
        d2 = (x * x).sum(1)[:, None] + (train * train).sum(1)[None, :] - 2.0 * x @ train.T
        nearest = torch.argmin(d2, dim=1)
    return _sqrt(((x - train[nearest]) ** 2).sum(dim=1))
