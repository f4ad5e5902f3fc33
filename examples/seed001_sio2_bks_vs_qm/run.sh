#!/bin/sh
# Study 2 from scratch (README): GFN1-xTB dataset about the GFN1-xTB minimum, diagnosis of BKS.
# Rerun to resume (the relaxation itself is redone if it was interrupted).
set -e
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
mlipbias data generate -c data.yaml
# The dataset's GFN1-xTB labels serve for the undistorted configurations; the distortion table,
# the Newton step and gradient descent need new reference calls, so they run on subsets.
mlipbias adversarial --approx bks --accurate gfn1-xtb --data work/sio2_xtb.db --out work/adv \
    --energy-offset per-element --use-dataset-labels \
    --distortion-configs 10 --newton-configs 30 --gd-configs 3 --bin-size 20
