"""Is there a usable CUDA device for the mlipbias kernels?

The extension module links the CUDA runtime statically, so it imports on machines without
an NVIDIA driver; the functions here say why no device can be used.
"""

from __future__ import annotations

from mlipbias import _core


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
