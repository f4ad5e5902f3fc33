#!/bin/sh
# Study 3 from scratch (README): MD dataset, split, four models, four diagnoses. Rerun to resume:
# finished models are kept, the diagnoses reuse their evaluations.jsonl.
set -e
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
mlipbias data generate -c data.yaml
[ -f work/test.db ] || python prepare.py
[ -f work/bpnn_energy/bpnn.mlip ] || mlipbias train bpnn_energy.yaml --resume
[ -f work/bpnn_forces/bpnn.mlip ] || mlipbias train bpnn_forces.yaml --resume
# train_gnn.py writes its best model after every improving epoch; the final save adds "valid".
[ -f work/gnn_energy.done ] || { python train_gnn.py gnn_energy.yaml && touch work/gnn_energy.done; }
[ -f work/gnn_forces.done ] || { python train_gnn.py gnn_forces.yaml && touch work/gnn_forces.done; }
# Seed 001 shows for Si only Fig. 4 and 5 (parity, cos theta, |cos| vs Delta E): the dataset's
# GFN1-xTB labels serve, so these cost no reference call. The Newton step of 1 fs (Fig. 2a) adds
# one GFN1-xTB call for each of the first 10 test configurations. Bins of 13 for Fig. 1c (52 configurations).
for model in bpnn_energy bpnn_forces; do
    mlipbias adversarial --approx work/$model/bpnn.mlip --accurate gfn1-xtb --data work/test.db \
        --out work/adv_$model --use-dataset-labels --experiments energy newton --newton-configs 10 --bin-size 13
done
for model in gnn_energy gnn_forces; do
    mlipbias adversarial --approx "mlipbias.models.gnn:GNNCalculator(model='work/$model.pt')" \
        --accurate gfn1-xtb --data work/test.db --out work/adv_$model --use-dataset-labels \
        --experiments energy newton --newton-configs 10 --bin-size 13
done
