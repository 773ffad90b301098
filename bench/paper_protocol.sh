#!/usr/bin/env bash
# The paper's protocol (lr search, 3 seeds, early stopping) at reduced scale on Fashion-MNIST, then the
# report: bench/results/fig6.{md,csv} and bench/results/table1.{md,csv} (+ plots with matplotlib).
# Sweep folders go to runs/paper/ (gitignored); run again to continue an interrupted sweep.
# Full protocol on a GPU: see the README ("Reproducing the paper").
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--dataset fashion-mnist --no-download --quiet)
plot=(); python -c "import matplotlib" 2>/dev/null && plot=(--plot)

# Fig. 6 style: MLP widths 256 and 1024; backprop, mean k=1,4,16, projection k=4,16; both estimators
python -m dualtensor sweep --preset fig6 "${common[@]}" --only width=256,1024 --only k=1,4,16 \
    --scale 0.05 --trials 6 --out runs/paper/fig6
python -m dualtensor report runs/paper/fig6 --out bench/results/fig6 "${plot[@]}"

# Table I style: ResNet18 and ViT (width 128, depth 4) on 512 training samples, 3 epochs, 3 trials;
# backprop, mean k=1, projection k=4,16; both estimators
small=(--limit 512 --val-size 200 --epochs 3 --early-stopping 2 --trials 3 --no-track-test)
for model in resnet18 vit; do
  arch=(); [ "$model" = vit ] && arch=(--width 128 --depth 4)
  python -m dualtensor sweep --preset table1 "${common[@]}" "${small[@]}" "${arch[@]}" --only model=$model \
      --only k=1 --only aggregate=mean --out runs/paper/table1
  python -m dualtensor sweep --preset table1 "${common[@]}" "${small[@]}" "${arch[@]}" --only model=$model \
      --only k=4,16 --only aggregate=projection --out runs/paper/table1
done
python -m dualtensor report runs/paper/table1 --out bench/results/table1 "${plot[@]}"
