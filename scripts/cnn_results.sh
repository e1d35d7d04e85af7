#!/usr/bin/env bash
# The cross-dataset and cross-architecture tables in docs/RESULTS.md, on the zoos made by
# scripts/cnn_zoos.sh. Two lanes run side by side, one thread each, each with its own encoders:
# train on each small-cnn zoo and score on every small-cnn zoo (cross-dataset), then score the same
# runs on the cnn-s zoos (cross-architecture). Both lanes merge their rows into
# results/cross_dataset.json and results/cross_arch.json. Run again to resume after an interruption.
#   usage: scripts/cnn_results.sh     env: EPOCHS=15 SEEDS=0 SNE=sne ZOOS=zoos RUNS=runs/cnn
set -euo pipefail
cd "$(dirname "$0")/.."
SNE=${SNE:-sne}
Z=${ZOOS:-zoos}
RUNS=${RUNS:-runs/cnn}
EPOCHS=${EPOCHS:-15}
SEEDS=${SEEDS:-0}
SMALL="$Z/small-cnn-digits,$Z/small-cnn-digits-affine,$Z/small-cnn-shapes10,$Z/small-cnn-gratings10"
CNNS="$Z/cnn-s-digits,$Z/cnn-s-shapes10,$Z/cnn-s-gratings10"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
lane() {  # comma-separated encoders, each finished (and its rows written) before the next starts
  for encoder in ${1//,/ }; do
    $SNE bench cross-dataset --zoos "$SMALL" --encoders "$encoder" --epochs "$EPOCHS" --seeds "$SEEDS" \
      --runs "$RUNS" --device cpu
    $SNE bench cross-arch --train "$SMALL" --test "$CNNS" --encoders "$encoder" --epochs "$EPOCHS" \
      --seeds "$SEEDS" --runs "$RUNS" --device cpu
  done
}
mkdir -p "$(dirname "$RUNS")"
lane sne,deepsets > "$RUNS.lane1.log" 2>&1 &
a=$!
lane ng_gnn,statnn > "$RUNS.lane2.log" 2>&1 &
b=$!
# Each lane's status, so that a failed run fails the script.
wait $a && wait $b
