#!/usr/bin/env bash
# The CNN zoos behind the cross-dataset and cross-architecture tables in docs/RESULTS.md:
# small-cnn on four offline datasets (2000 networks each) and cnn-s on three (1000 each),
# zoo seed 0, sampled training length 1..EPOCHS epochs. Two lanes run side by side, one thread
# each (GUIDE section 8: two processes use two cores better than one process with two threads).
# Every zoo resumes if interrupted: run the script again. Each zoo's summary (split sizes, diverged
# count, target quartiles) and accuracy histogram go to results/zoo_*.json and results/plots/.
#   usage: scripts/cnn_zoos.sh          env: EPOCHS=8 SMALL_N=2000 CNNS_N=1000 SNE=sne OUT=zoos
set -euo pipefail
cd "$(dirname "$0")/.."
SNE=${SNE:-sne}
OUT=${OUT:-zoos}
EPOCHS=${EPOCHS:-8}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
zoo() {  # recipe dataset n
  $SNE zoo generate "$1" --dataset "$2" --n "$3" --seed 0 -o epochs="$EPOCHS" --out "$OUT/$1-$2"
  mkdir -p results/plots
  $SNE zoo info "$OUT/$1-$2" --json --plot "results/plots/zoo_$1-$2_accuracy.png" > "results/zoo_$1-$2.json.tmp"
  mv "results/zoo_$1-$2.json.tmp" "results/zoo_$1-$2.json"
}
lane_a() { zoo small-cnn digits "${SMALL_N:-2000}"; zoo small-cnn shapes10 "${SMALL_N:-2000}";
           zoo cnn-s digits "${CNNS_N:-1000}"; zoo cnn-s gratings10 "${CNNS_N:-1000}"; }
lane_b() { zoo small-cnn digits-affine "${SMALL_N:-2000}"; zoo small-cnn gratings10 "${SMALL_N:-2000}";
           zoo cnn-s shapes10 "${CNNS_N:-1000}"; }
mkdir -p "$OUT"
lane_a > "$OUT/lane_a.log" 2>&1 &
a=$!
lane_b > "$OUT/lane_b.log" 2>&1 &
b=$!
# Each lane's status, so that a failed zoo fails the script.
wait $a && wait $b
