#!/bin/sh
# The GM-NN example from scratch (README): data, training, two short LAMMPS runs. Every step resumes when rerun.
set -e
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
mlipbias data generate -c data.yaml
[ -f work/train/sio2_gmnn.mlip ] || mlipbias train train.yaml --threads 1
[ -f sio2_gmnn.mlip ] || cp work/train/sio2_gmnn.mlip .
python -c "
from ase.io import write
from mlipbias.structures import default_structure
write('work/sio2.data', default_structure('sio2-amorphous-96'), format='lammps-data', specorder=['Si', 'O'], masses=True)
"
lmp -in in.nvt -var label unbiased -log work/unbiased.log
lmp -in in.nvt -var label biased -var tau 0.3 -log work/biased.log
