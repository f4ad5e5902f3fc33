"""Is there a usable CUDA device for the mlipbias kernels, and models on it.

The extension module links the CUDA runtime statically, so it imports on machines without
an NVIDIA driver; the functions here say why no device can be used. :class:`ModelDevice`
evaluates a GM-NN or BP-NN file with its posterior uncertainty and bias forces on the device
(:class:`GMNNDevice`: the same, for GM-NN files only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlipbias import _core
from mlipbias.inference import Evaluation


def compiled() -> bool:
    """True when this build of mlipbias contains the CUDA kernels."""
    return bool(_core.cuda_compiled())


def device_count() -> int:
    """Number of usable CUDA devices (0 when none)."""
    return int(_core.cuda_device_count()[0])


def unavailable_reason() -> str | None:
    """None when a device is usable, otherwise the reason (for pytest skips and errors)."""
    count, why = _core.cuda_device_count()
    return None if count > 0 else f"no CUDA device: {why}"


def require() -> None:
    """Raise RuntimeError("no CUDA device: ...") unless a device is usable."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)


# Per descriptor kind of the file: the staged host run and the device evaluator of _core.
_STAGED = {
    "gaussian_moments": ("gmnn_evaluate_staged_host", "GMNNDeviceEvaluator"),
    "symmetry_functions": ("bpnn_evaluate_staged_host", "BPNNDeviceEvaluator"),
}


def model_kind(path) -> str:
    """The descriptor kind of a ``.mlip`` file: "symmetry_functions" (BP-NN) or "gaussian_moments" (GM-NN)."""
    from mlipbias.modelfile import read_model_file

    return str(read_model_file(path).get("descriptor/kind", "symmetry_functions"))


class ModelDevice:
    """A ``.mlip`` model (GM-NN or BP-NN) evaluated on a CUDA device: energies, forces, virial,
    the posterior (gradient-feature) uncertainty ``U``, ``dU/dx``, its virial and the bias forces.

    The kernels run the stages of ``cpp/gmnn_stages.hpp`` (GM-NN) or ``cpp/bpnn_stages.hpp``
    (BP-NN, symmetry functions), the same math as :meth:`evaluate_host` (which the CPU tests hold
    to the C++ evaluator to 1e-10). Neighbours are built on the host
    (:meth:`mlipbias.inference.CppModel.neighbours`) and copied over each call.

        device = ModelDevice("model.mlip")
        r = device.evaluate(atoms, uncertainty="posterior", gradient=True, tau=0.2)
        r.energy, r.forces, r.uncertainty, r.bias_forces

    Raises:
        RuntimeError: "no CUDA device: ..." without a usable device (only when the device is used:
            :meth:`evaluate_host` works everywhere).
        ValueError: a method other than "none" and "posterior".
    """

    kinds = tuple(_STAGED)

    def __init__(self, path, device: int = 0):
        from mlipbias.inference import CppModel

        self.kind = model_kind(path)
        if self.kind not in self.kinds:
            kinds = " or ".join(self.kinds)
            raise ValueError(
                f"{path}: is a {self.kind} model; {type(self).__name__} evaluates {kinds} models"
            )
        self.model = CppModel(path)
        self.device = device
        self._evaluator = None

    def _device(self):
        if self._evaluator is None:
            require()
            self._evaluator = getattr(_core, _STAGED[self.kind][1])(self.model.core, self.device)
        return self._evaluator

    def _tau(self, tau) -> list[float]:
        if isinstance(tau, dict):
            unknown = sorted(set(tau) - set(self.model.elements))
            if unknown:
                raise ValueError(
                    f"tau names element(s) {unknown} not in the model {list(self.model.elements)}"
                )
            return [float(tau.get(el, 0.0)) for el in self.model.elements]
        return [float(tau)] * len(self.model.elements)

    def evaluate(self, atoms, uncertainty: str = "none", gradient: bool = False, tau=0.0) -> DeviceEvaluation:
        """Evaluate ``atoms`` on the device. tau: bias strength (one number, or {element: tau});
        ``bias_forces = tau_(Z) dU/dx`` (eV/A) with ``gradient``."""
        out = self._device().evaluate(*self.model.neighbours(atoms), uncertainty, gradient, self._tau(tau))
        return DeviceEvaluation(**out)

    def evaluate_host(
        self, atoms, uncertainty: str = "none", gradient: bool = False, tau=0.0
    ) -> DeviceEvaluation:
        """The same stages serially on the host (no device needed; slow: for tests and comparisons)."""
        host = getattr(_core, _STAGED[self.kind][0])
        out = host(self.model.core, *self.model.neighbours(atoms), uncertainty, gradient, self._tau(tau))
        return DeviceEvaluation(**out)

    def time_runs(self, repeats: int) -> float:
        """Seconds for ``repeats`` more device evaluations of the last :meth:`evaluate` input (no copies)."""
        return float(self._device().time_runs(repeats))


class GMNNDevice(ModelDevice):
    """:class:`ModelDevice` for GM-NN files only (ValueError for any other file)."""

    kinds = ("gaussian_moments",)


@dataclass
class DeviceEvaluation(Evaluation):
    """What :meth:`ModelDevice.evaluate` returns: :class:`mlipbias.inference.Evaluation` (units and signs
    as there; no per-atom uncertainties or member forces) plus ``bias_forces = tau_(Z) dU/dx`` in eV/A."""

    bias_forces: np.ndarray | None = None
