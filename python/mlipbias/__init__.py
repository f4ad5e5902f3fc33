"""mlipbias: make machine-learned interatomic potentials honest about where they fail.

Units throughout: eV, Angstrom, fs, amu (LAMMPS ``units metal``).

Submodules are imported on demand so that ``import mlipbias`` and the command line stay
fast; torch is only loaded by the parts that train or evaluate models.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
