#!/usr/bin/env bash
# The any-architecture tables (issue 14) on zoos this script makes from offline data, each in its
# own results file and RESULTS.md section:
#   transformer_transfer  trained on the small-cnn zoos, tested on the ViT zoo (SNE paper, section 4.2)
#   unseen_kernels        trained on 3x3 small-cnn digits, tested on a 7x7 small-cnn digits zoo
#   reverse_cross_arch    trained on the cnn-s zoos, tested on the small-cnn zoos (SNE paper, appendix F.2)
#   wild_park             trained and tested on the mixed CNN Wild Park zoo (Neural Graphs); StatNN
#                         and the NFNs refuse a zoo of several architectures: their rows say so
#   digit_inr_label_independent_views<K>   INR classification on K independent INRs per digits image
# The small-cnn and cnn-s zoos are scripts/cnn_zoos.sh's. Every step resumes if interrupted: run
# the same command again. Sized for a GPU: on one CPU thread the ViT zoo alone takes ~2.3 h per 1000.
#   usage: scripts/architecture_results.sh [DEVICE] [EPOCHS]         (default: cuda 30)
#   env:   VIT_N=1000 RESNET_N=1000 WILD_N=2000 KERNEL_N=1000 DIGIT_N=1797 VIEWS=10 SEEDS=0,1 SNE=sne ZOOS=zoos RUNS=runs/arch
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda}
EPOCHS=${2:-30}
SNE=${SNE:-sne}
Z=${ZOOS:-zoos}
RUNS=${RUNS:-runs/arch}
SEEDS=${SEEDS:-0,1}
SMALL="$Z/small-cnn-digits,$Z/small-cnn-digits-affine,$Z/small-cnn-shapes10,$Z/small-cnn-gratings10"
CNNS="$Z/cnn-s-digits,$Z/cnn-s-shapes10,$Z/cnn-s-gratings10"
common=(--epochs "$EPOCHS" --seeds "$SEEDS" --runs "$RUNS" --device "$DEVICE")
zoo() {  # out recipe n [generate options...]: make (or resume) a zoo, then its summary (and accuracy histogram)
  local out=$1 recipe=$2 n=$3
  shift 3
  $SNE zoo generate "$recipe" --n "$n" --seed 0 "$@" --out "$Z/$out"
  mkdir -p results/plots
  local plot=()
  [ "$recipe" != digit-inr ] && plot=(--plot "results/plots/zoo_${out}_accuracy.png")
  $SNE zoo info "$Z/$out" --json "${plot[@]}" > "results/zoo_$out.json.tmp"
  mv "results/zoo_$out.json.tmp" "results/zoo_$out.json"
}

zoo vit vit "${VIT_N:-1000}" --device "$DEVICE"
zoo resnet resnet "${RESNET_N:-1000}" --device "$DEVICE"
# Wild Park at 16x16: the digits images are 8x8, so this keeps all they hold, at a third of the cost of 28x28
# (the recipe pools to a quarter of the image size before its deeper convolutions).
zoo wild-park wild-park "${WILD_N:-2000}" -o image_size=16 --device "$DEVICE"
zoo small-cnn-digits-k7 small-cnn "${KERNEL_N:-1000}" --dataset digits -o epochs=8 -o kernel=7 --device "$DEVICE"
zoo "digit-inr-views${VIEWS:-10}" digit-inr "${DIGIT_N:-1797}" -o "views=${VIEWS:-10}" --init independent --device "$DEVICE"

# The ViTs embed patches with 4x4, 7x7 and 14x14 convolutions and the deepest have 40 layers: Neural Graphs
# is told its largest kernel and most layers before training (its defaults, 5 and 32, refuse the zoo).
$SNE bench cross-arch --train "$SMALL" --test "$Z/vit" --encoders sne,deepsets,ng_gnn -o ng_gnn.max_kernel_size=14 \
  -o ng_gnn.max_layers=64 \
  --name transformer_transfer "${common[@]}"
$SNE bench cross-arch --train "$Z/small-cnn-digits" --test "$Z/small-cnn-digits,$Z/small-cnn-digits-k7" \
  --encoders sne,deepsets,ng_gnn,ng_t,statnn --name unseen_kernels "${common[@]}"
$SNE bench cross-arch --train "$CNNS" --test "$SMALL" --encoders sne,deepsets,ng_gnn,statnn \
  --name reverse_cross_arch "${common[@]}"
# Wild Park has 7x7 kernels: Neural Graphs reads them with a larger maximum kernel size, as its paper
# sets it. StatNN and the NFNs take one fixed architecture and refuse a mixed zoo before training:
# the table records the refusal as their row ("cannot train") and goes on.
$SNE bench cross-dataset --zoos "$Z/wild-park" --encoders sne,ng_gnn,ng_t,deepsets,statnn,nfn_np,nfn_hnp \
  -o ng_gnn.max_kernel_size=7 -o ng_t.max_kernel_size=7 --name wild_park "${common[@]}"
$SNE bench digit-inr --zoo "$Z/digit-inr-views${VIEWS:-10}" --encoders all "${common[@]}"
echo "tables written to results/; regenerate docs/RESULTS.md with 'make results'"
