"""mlipbias.analysis: ACF/ESS/ACT against arviz and theory, CV coverage on known answers, dihedrals, plots."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlipbias.analysis import (
    alanine_dipeptide_dihedrals,
    autocorrelation,
    coverage,
    coverage_curve,
    dihedral,
    effective_sample_size,
    integrated_autocorrelation_time,
)

az = pytest.importorskip("arviz")


def _ar1(n, a, rng, components=1):
    noise = rng.standard_normal((n, components))
    x = np.empty_like(noise)
    x[0] = noise[0] / np.sqrt(1 - a**2)
    for t in range(1, n):
        x[t] = a * x[t - 1] + noise[t]
    return x[:, 0] if components == 1 else x


def test_acf_equals_arviz_for_a_series_and_the_dot_product_for_vectors():
    rng = np.random.default_rng(0)
    x = _ar1(3000, 0.8, rng)
    np.testing.assert_allclose(autocorrelation(x), az.autocorr(x), atol=1e-12)
    frames = _ar1(2000, 0.7, rng, components=6).reshape(2000, 2, 3)  # e.g. positions of 2 atoms
    acov = az.autocov(frames.reshape(2000, 6).T)  # per component, 1/N
    np.testing.assert_allclose(autocorrelation(frames), acov.sum(0) / acov[:, 0].sum(), atol=1e-12)
    np.testing.assert_allclose(
        autocorrelation(frames, per_component=True), az.autocorr(frames.reshape(2000, 6).T).T, atol=1e-12
    )


def test_ess_matches_arviz_and_the_ar1_act():
    rng = np.random.default_rng(1)
    a = 0.9
    x = _ar1(100_000, a, rng)
    ess = effective_sample_size(x)
    # Same ACF, different truncation (TFP: first negative lag; arviz: Geyer's positive pairs).
    assert ess == pytest.approx(float(az.ess(x[None, :], method="mean")), rel=0.05)
    assert integrated_autocorrelation_time(x) == pytest.approx((1 + a) / (1 - a), rel=0.12)
    noise = rng.standard_normal(20_000)  # independent frames: ACT 1
    assert integrated_autocorrelation_time(noise) == pytest.approx(1.0, abs=0.05)
    assert effective_sample_size(noise) == pytest.approx(
        float(az.ess(noise[None, :], method="mean")), rel=0.05
    )


def test_ess_is_the_tensorflow_probability_formula_with_its_truncation():
    # Hand computation. The 1/(N-k) ACF of this triangle wave is 1, 0.517, -0.116, ..., 0.187,
    # 0.903, ...: the default cut keeps lags 0-1, a cut at 0.6 keeps lag 0 only.
    x = np.array([0.0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 4])
    n = len(x)
    c = x - x.mean()
    biased = np.array([np.sum(c[: n - k] * c[k:]) for k in range(n)]) / np.sum(c * c)
    unbiased = biased * n / (n - np.arange(n))
    stop = np.argmax(unbiased < 0)
    expected = n / (-1 + 2 * biased[:stop].sum())
    assert effective_sample_size(x) == pytest.approx(expected, rel=1e-12)
    assert stop == 2
    assert effective_sample_size(x, filter_threshold=0.6) == pytest.approx(n / (-1 + 2 * 1.0), rel=1e-12)
    per = effective_sample_size(np.stack([x, x[::-1]], axis=1), per_component=True)
    assert per.shape == (2,) and per[0] == pytest.approx(expected, rel=1e-12)


def test_bad_trajectories_are_named():
    with pytest.raises(ValueError, match="constant"):
        autocorrelation(np.ones(10))
    with pytest.raises(ValueError, match="at least 2 frames"):
        effective_sample_size(np.ones(1))
    with pytest.raises(ValueError, match="NaN"):
        autocorrelation(np.array([0.0, np.nan, 1.0]))


def _tree_coverage(points, bounds, k, depth):
    """Explicit tree: a node is its box; weight 1/k^(d l) when first visited (the paper's description)."""
    d = len(bounds)
    visited, total = set(), 0.0

    def visit(point, box, level):
        nonlocal total
        if level > depth:
            return
        for cell in itertools.product(range(k), repeat=d):
            lo = [box[i][0] + cell[i] * (box[i][1] - box[i][0]) / k for i in range(d)]
            hi = [box[i][0] + (cell[i] + 1) * (box[i][1] - box[i][0]) / k for i in range(d)]
            inside = all(lo[i] <= point[i] < hi[i] or (point[i] == hi[i] == bounds[i][1]) for i in range(d))
            if inside:
                key = (level, tuple(round(v, 12) for v in lo))
                if key not in visited:
                    visited.add(key)
                    total += 1.0 / k ** (d * level)
                visit(point, list(zip(lo, hi, strict=True)), level + 1)
                return

    curve = []
    for point in points:
        visit(point, bounds, 1)
        curve.append(total / depth)
    return np.array(curve)


def test_coverage_known_answers():
    bounds = [(-np.pi, np.pi), (-np.pi, np.pi)]
    one = coverage([[0.3, -1.0]], bounds, num_splits=2, depth=6)
    assert one == pytest.approx(sum(4.0**-level for level in range(1, 7)) / 6)
    # Every leaf visited once: full coverage; the same points again add nothing.
    centres = (np.arange(64) + 0.5) / 64 * 2 * np.pi - np.pi
    grid = np.array(list(itertools.product(centres, centres)))
    assert coverage(grid, bounds, 2, 6) == pytest.approx(1.0)
    curve = coverage_curve(np.concatenate([grid, grid]), bounds, 2, 6)
    assert curve[len(grid) - 1] == pytest.approx(1.0) and curve[-1] == pytest.approx(1.0)
    # Every leaf of one quadrant: a quarter of each level, so 1/4 however deep.
    quadrant = grid[(grid[:, 0] < 0) & (grid[:, 1] < 0)]
    assert coverage(quadrant, bounds, 2, 6) == pytest.approx(0.25)
    # Three splits per side, three dimensions: the upper bound belongs to the last cell.
    assert coverage([[1.0, 1.0, 1.0]], [(0, 1)] * 3, num_splits=3, depth=2) == pytest.approx(
        (1 / 27 + 1 / 729) / 2
    )


def test_coverage_curve_equals_an_explicit_tree_and_rewards_spreading():
    rng = np.random.default_rng(5)
    bounds = [(-1.0, 2.0), (0.0, 1.0)]
    points = np.column_stack([rng.uniform(-1, 2, 300), rng.uniform(0, 1, 300)])
    np.testing.assert_allclose(
        coverage_curve(points, bounds, 3, 3), _tree_coverage(points, bounds, 3, 3), rtol=1e-12
    )
    stuck = np.column_stack([rng.uniform(-1, -0.9, 300), rng.uniform(0, 0.1, 300)])
    assert coverage(stuck, bounds, 3, 3) < coverage(points, bounds, 3, 3)
    assert np.all(np.diff(coverage_curve(points, bounds, 3, 3)) >= 0)
    with pytest.raises(ValueError, match="outside the bounds; the first: point 1"):
        coverage([[0.0, 0.5], [3.0, 0.5]], bounds)


def test_dihedrals_match_ase_and_are_c7eq_for_the_shipped_molecule():
    from mlipbias.structures import default_structure

    atoms = default_structure("alanine-dipeptide")
    rng = np.random.default_rng(2)
    frames = atoms.positions + rng.normal(scale=0.3, size=(20, len(atoms), 3))
    angles = alanine_dipeptide_dihedrals(frames)
    for frame, (phi, psi) in zip(frames, angles, strict=True):
        atoms.positions = frame
        ase_phi, ase_psi = atoms.get_dihedral(4, 6, 8, 10), atoms.get_dihedral(6, 8, 10, 16)
        assert np.degrees(phi) % 360 == pytest.approx(ase_phi, abs=1e-8)
        assert np.degrees(psi) % 360 == pytest.approx(ase_psi, abs=1e-8)
    assert np.all(np.abs(angles) <= np.pi)
    assert dihedral(frames[0], (4, 6, 8, 10)) == pytest.approx(angles[0, 0])
    phi, psi = np.degrees(alanine_dipeptide_dihedrals(default_structure("alanine-dipeptide")))
    assert phi == pytest.approx(-84, abs=10) and psi == pytest.approx(70, abs=10)


def test_plots_write_png_files(tmp_path):
    from mlipbias.analysis import plots

    sizes = np.array([8, 16, 32, 64])
    runs = {
        "biased 300 K": np.array([[0.2, 0.4, 0.6, 0.8], [0.3, 0.5, 0.6, np.nan]]),
        "unbiased": [0.1, 0.2, 0.3, 0.4],
    }
    path = plots.plot_learning_curves(sizes, runs, runs, runs, tmp_path / "fig3.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.plot_exploration(np.arange(4.0), runs, tmp_path / "fig4a.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="curve 'bad'"):
        plots.plot_curves(sizes, {"bad": [1, 2]}, tmp_path / "x.png", "x", "y")
