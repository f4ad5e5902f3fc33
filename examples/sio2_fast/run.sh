#!/bin/sh
# The fast SiO2 preset from scratch (README): seed 001's data, training, a short LAMMPS run. Each step resumes.
set -e
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
(cd ../seed001_sio2_bpnn && mlipbias data generate -c data_train.yaml && mlipbias data generate -c data_test.yaml)
[ -f work/fast/sio2_fast.mlip ] || mlipbias train train.yaml --threads 1
[ -f work/fast_forces/sio2_fast.mlip ] || mlipbias train train_forces.yaml --threads 1 --init-model work/fast/sio2_fast.mlip
[ -f sio2_fast.mlip ] || cp work/fast_forces/sio2_fast.mlip .
python -c "
from ase.io import write
from mlipbias.structures import default_structure
write('work/sio2.data', default_structure('sio2-amorphous-96'), format='lammps-data', specorder=['Si', 'O'], masses=True)
"
lmp -in in.nvt -log work/nvt.log
