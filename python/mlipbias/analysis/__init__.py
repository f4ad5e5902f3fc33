"""Analysis of exploration runs (seed 002): autocorrelation, CV-space coverage, dihedrals, plots.

* :func:`autocorrelation`, :func:`effective_sample_size`, :func:`integrated_autocorrelation_time`
  - ACF, ESS (TensorFlow Probability's estimator, as seed 002) and ACT = N / ESS in frames.
* :func:`coverage`, :func:`coverage_curve` - weighted recursive partitioning of a bounded CV space.
* :func:`dihedral`, :func:`alanine_dipeptide_dihedrals` - (phi, psi), the CVs of alanine dipeptide.
* :mod:`mlipbias.analysis.plots` - coverage and errors against dataset size and MD time, as PNG.
"""

from mlipbias.analysis.autocorrelation import (
    autocorrelation,
    effective_sample_size,
    integrated_autocorrelation_time,
)
from mlipbias.analysis.coverage import DIHEDRAL_BOUNDS, coverage, coverage_curve
from mlipbias.analysis.dihedrals import alanine_dipeptide_dihedrals, dihedral

__all__ = [
    "DIHEDRAL_BOUNDS",
    "alanine_dipeptide_dihedrals",
    "autocorrelation",
    "coverage",
    "coverage_curve",
    "dihedral",
    "effective_sample_size",
    "integrated_autocorrelation_time",
]
