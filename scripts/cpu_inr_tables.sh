#!/usr/bin/env bash
# The INR tables on a CPU, as three one-thread lanes (GUIDE section 8): INR frequency regression for
# every encoder (50 epochs; NG-GNN and NG-T 25, about 1.5 h each on one thread; SNE also with its
# source-neuron features), digit-INR classification (30 epochs; SNE also with its optional inputs) and dilation style editing
# (30 epochs). SNE comes last in the INR lane: its row then replaces the GPU-trained one with one
# trained on this CPU-made zoo. Every run resumes where it stopped, so an interrupted invocation is simply re-run.
# Then: make results.   usage: scripts/cpu_inr_tables.sh [INIT]   (default: independent)
set -euo pipefail
cd "$(dirname "$0")/.."
INIT=${1:-independent}
SNE=${SNE:-.venv/bin/sne}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p logs
$SNE zoo generate sine-inr --n 5000 --seed 0 --init "$INIT" --device cpu --out "zoos/sine-$INIT"
$SNE zoo generate digit-inr --n 1797 --seed 0 --init "$INIT" --device cpu --out "zoos/digit-inr-$INIT"
(
  for e in mlp statnn hyperrep deepsets nfn_np nfn_hnp dwsnet nft mlp_canonical; do
    $SNE bench inr --zoo "zoos/sine-$INIT" --encoders $e --epochs 50 --seeds 0 --runs "runs/inr-$INIT" --device cpu
  done
  for e in ng_gnn ng_t; do
    $SNE bench inr --zoo "zoos/sine-$INIT" --encoders $e --epochs 25 --seeds 0 --runs "runs/inr-$INIT" --device cpu
  done
  $SNE bench inr --zoo "zoos/sine-$INIT" --encoders sne --epochs 50 --seeds 0 --runs "runs/inr-$INIT" --device cpu
  $SNE bench inr --zoo "zoos/sine-$INIT" --encoders sne -o sne.use_source_features=true --epochs 50 --seeds 0 \
    --runs "runs/inr-$INIT" --device cpu
) > "logs/inr-$INIT.log" 2>&1 &
(
  for e in statnn mlp sne ng_gnn ng_t deepsets nfn_np nfn_hnp dwsnet nft; do
    $SNE bench digit-inr --zoo "zoos/digit-inr-$INIT" --encoders $e --epochs 30 --seeds 0 \
      --runs "runs/digit-inr-$INIT" --device cpu
  done
  for options in "-o sne.use_source_features=true -o sne.use_input_positions=true" "-o sne.use_input_positions=true"; do
    # shellcheck disable=SC2086  # two words per option, split on purpose
    $SNE bench digit-inr --zoo "zoos/digit-inr-$INIT" --encoders sne $options --epochs 30 --seeds 0 \
      --runs "runs/digit-inr-$INIT" --device cpu
  done
) > "logs/digit-inr-$INIT.log" 2>&1 &
(
  for e in dwsnet nfn_hnp nfn_np mlp nft sne ng_gnn ng_t; do
    $SNE bench style-edit --zoo "zoos/digit-inr-$INIT" --encoders $e --epochs 30 --batch-size 32 --seeds 0 \
      --runs "runs/style-edit-$INIT" --device cpu
  done
) > "logs/style-edit-$INIT.log" 2>&1 &
wait
