#!/usr/bin/env bash
# The INR frequency results in docs/RESULTS.md: two 5000-INR zoos (independent and shared init,
# split 3000/1000/1000) and SNE trained with and without the logit-invariance regulariser.
# Trainings run in parallel (one GPU serves them all); `sne bench inr` then collects the finished
# runs into results/inr_frequency_<init>.json. Every step resumes if interrupted.
#   usage: scripts/inr_results.sh [DEVICE] [EPOCHS]      (default: cuda 100)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda}
EPOCHS=${2:-100}
SNE=${SNE:-sne}
LAMBDA=1
N=${N:-5000}
for init in independent shared; do
  $SNE zoo generate sine-inr --n "$N" --seed 0 --init "$init" --device "$DEVICE" --compile --out "zoos/sine-$init"
done
train() {  # init lambda
  $SNE train --zoo "zoos/sine-$1" --encoder sne --target frequency --epochs "$EPOCHS" --seed 0 \
    --invariance-weight "$2" --device "$DEVICE" --out "runs/inr-$1/sne_lambda$2_seed0"
}
train independent 0 > "${LOGS:-runs}/train-independent-0.log" 2>&1 &
train independent "$LAMBDA" > "${LOGS:-runs}/train-independent-$LAMBDA.log" 2>&1 &
train shared "$LAMBDA" > "${LOGS:-runs}/train-shared-$LAMBDA.log" 2>&1 &
wait
$SNE bench inr --zoo zoos/sine-independent --encoders sne --invariance-weights "0,$LAMBDA" --epochs "$EPOCHS" \
  --runs runs/inr-independent --device "$DEVICE"
$SNE bench inr --zoo zoos/sine-shared --encoders sne --invariance-weights "$LAMBDA" --epochs "$EPOCHS" \
  --runs runs/inr-shared --device "$DEVICE"
