"""Oracle potentials: reference energies, forces and stresses for training and testing.

* :class:`BKS` - the BKS silica potential (C++ core, LAMMPS-identical), an ASE calculator.
"""

from mlipbias.potentials.bks import BKS

__all__ = ["BKS"]
