"""The networks' vectorised activations (cpp/activation_simd.inc) against libm (numpy) and mpmath,
at every SIMD width, on a grid with 0, tiny, large and negative pre-activations."""

import mpmath
import numpy as np
import pytest

from mlipbias import _core

WIDTHS = [2, 4, 8]


def grid() -> np.ndarray:
    tiny = [5e-324, 1e-310, 1e-300, 1e-20, 1e-10, 1e-5, 0.0, -0.0]
    near_switch = np.linspace(0.34, 0.36, 2001)  # the polynomial / exp switch at |z| = 0.35
    large = [19.0, 20.0, 40.0, 300.0, 708.0, 710.0, 1e4, 1e300]
    dense = np.linspace(-25.0, 25.0, 200_001)
    logs = np.logspace(-12, 1.5, 20_001)
    pos = np.concatenate([tiny, near_switch, large, logs])
    return np.concatenate([pos, -pos, dense])


def at_width(width: int, kind: str, z: np.ndarray):
    try:
        best = _core.nn_simd_width(0)
        assert _core.nn_simd_width(width) == min(width, best)
        return _core.nn_activation(kind, z)
    finally:
        _core.nn_simd_width(0)


@pytest.mark.parametrize("width", WIDTHS)
def test_tanh_matches_libm(width):
    z = grid()
    t, d1, d2 = at_width(width, "tanh", z)
    ref = np.tanh(z)
    # relative to |tanh z| (so tiny z are checked to full relative precision): at most 3 ulp (measured: 3,
    # 0.1 % of the grid above 2, 8 % above 1)
    ulp = np.spacing(np.abs(ref))
    assert np.all(np.abs(t - ref) <= 3 * ulp), np.abs((t - ref) / ulp).max()
    assert np.all(np.signbit(t) == np.signbit(ref))  # odd, -0 included
    assert np.all(t[np.abs(z) >= 20.0] == np.sign(z[np.abs(z) >= 20.0]))  # saturates exactly
    dt = 1.0 - ref * ref
    # 1 - t^2 carries 2 |t| times t's error as an absolute error (as it does with libm's t)
    np.testing.assert_allclose(d1, dt, rtol=0, atol=1.5e-15)
    np.testing.assert_allclose(d2, -2.0 * ref * dt, rtol=0, atol=3e-15)


def test_tanh_against_mpmath():
    """The error against the exact tanh (mpmath, 30 digits) on a sample, libm's beside ours."""
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.uniform(-3, 3, 3000), np.logspace(-15, 1, 500) * rng.choice([-1, 1], 500)])
    mpmath.mp.dps = 30
    exact = np.array([float(mpmath.tanh(mpmath.mpf(x))) for x in z])
    t = _core.nn_activation("tanh", z)[0]
    ulp = np.spacing(np.abs(exact))
    assert np.all(np.abs(t - exact) <= 3 * ulp)
    assert np.all(np.abs(np.tanh(z) - exact) <= 2 * ulp)  # libm itself, for scale


@pytest.mark.parametrize("width", WIDTHS)
def test_silu_matches_libm(width):
    z = grid()
    v, d1, d2 = at_width(width, "silu", z)
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-z))
    ds = s * (1.0 - s)
    scale = np.maximum(np.abs(z), 1.0)
    np.testing.assert_allclose(v, z * s, rtol=1.2e-15, atol=1e-300)  # measured: 5 ulp
    assert np.all(np.abs(d1 - (s + z * ds)) <= 1.5e-15 * scale)
    assert np.all(np.abs(d2 - ds * (2.0 + z * (1.0 - 2.0 * s))) <= 1.5e-15 * scale)


@pytest.mark.parametrize("width", WIDTHS)
def test_entries_do_not_depend_on_position(width):
    """Every length (full vectors and the padded tail) gives each entry the same numbers."""
    z = np.random.default_rng(1).normal(scale=2.0, size=37)
    for kind in ("tanh", "silu"):
        full = at_width(width, kind, z)
        for n in range(1, 20):
            part = at_width(width, kind, z[n:])
            for a, b in zip(part, full, strict=True):
                np.testing.assert_array_equal(a, b[n:])


def test_bad_input():
    with pytest.raises(ValueError, match="SIMD width must be 0"):
        _core.nn_simd_width(3)
    with pytest.raises(ValueError, match="activation must be 'tanh' or 'silu'"):
        _core.nn_activation("relu", np.zeros(3))
