#!/bin/sh
# Study 1 from scratch (README): datasets, BP-NN, diagnosis. Every step resumes when rerun.
set -e
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
mlipbias data generate -c data_train.yaml
mlipbias data generate -c data_test.yaml
[ -f work/bpnn/bpnn.mlip ] || mlipbias train train.yaml --resume
mlipbias adversarial --approx work/bpnn/bpnn.mlip --accurate bks --data work/test.db --out work/adv \
    --use-dataset-labels --gd-configs 50 --skip-failed
