#!/usr/bin/env bash
# A long training on a machine with an NVIDIA GPU: the trainer on CUDA with bfloat16
# autocast, rendering on the CPU cores beside it (fresh rooms, world.md v2), checkpoints
# every 100 steps so a stopped run resumes where it was. The CPU path stays the tested one.
#   training/scripts/train_gpu.sh OUT [extra fit flags]
# Then, on any machine: latent_memory_train export --checkpoint OUT/best.pt --out models/NAME
set -euo pipefail
out=${1:?usage: train_gpu.sh OUT [fit flags]}
shift
cores=$(nproc)
workers=$(( cores > 4 ? cores - 2 : 1 ))
data=${DATA:-data}
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
[ -d "$data/val" ] || latent_memory_train render --out "$data/val" --split val --sequences 20 \
    --frames 600 --format npz --jobs "$workers"
[ -d "$data/test" ] || latent_memory_train render --out "$data/test" --split test --sequences 8 \
    --frames 1800 --format npz --jobs "$workers"
resume=()
[ -f "$out/last.pt" ] && resume=(--resume "$out/last.pt")
exec latent_memory_train fit --world --world-workers "$workers" --world-room-every 2 \
    --world-pool 64 --val "$data/val" --heldout "$data/test" --heldout-every 1000 \
    --out "$out" --device cuda --amp true --batch 32 --window 48 --steps 20000 \
    --curriculum-steps 4000 --val-every 500 "${resume[@]}" "$@"
