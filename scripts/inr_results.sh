#!/usr/bin/env bash
# The INR frequency results in docs/RESULTS.md: a 5000-INR sine zoo per initialisation protocol
# (split 3000/1000/1000) and SNE trained on it with and without the logit-invariance
# regulariser, collected by `sne bench inr` into results/inr_frequency_<init>.json.
# Every step resumes if interrupted: run the same command again.
#   usage: scripts/inr_results.sh [DEVICE] [EPOCHS]      (default: cuda 50)
#   env:   INITS="independent shared"  LAMBDAS=0,0.1  N=5000  SNE=sne
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda}
EPOCHS=${2:-50}
SNE=${SNE:-sne}
N=${N:-5000}
for init in ${INITS:-independent shared}; do
  $SNE zoo generate sine-inr --n "$N" --seed 0 --init "$init" --device "$DEVICE" --compile --out "zoos/sine-$init"
  $SNE bench inr --zoo "zoos/sine-$init" --encoders sne --invariance-weights "${LAMBDAS:-0,0.1}" \
    --epochs "$EPOCHS" --seeds 0 --runs "runs/inr-$init" --device "$DEVICE"
done
