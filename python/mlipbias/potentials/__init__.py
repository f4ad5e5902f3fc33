"""Oracle potentials: reference energies, forces and stresses for training and testing.

* :class:`BKS` - the BKS silica potential (C++ core, LAMMPS-identical), an ASE calculator.
* :class:`PySCFDFT` - Kohn-Sham DFT for molecules with PySCF (default BP86-D3(BJ)/def2-SVP).
* :class:`OpenMMForceField` - an OpenMM force field (default AMBER ff19SB) for a PDB topology.

PySCF and OpenMM are imported only when their calculator is used.
"""

from mlipbias.potentials.bks import BKS
from mlipbias.potentials.openmm_ff import OpenMMForceField
from mlipbias.potentials.pyscf_dft import PySCFDFT

__all__ = ["BKS", "OpenMMForceField", "PySCFDFT"]
