#!/usr/bin/env bash
# The Morpho-MNIST label-fraction sweep at the hold-1 latent-cycle settings (10 % and all labels,
# two seeds, experiments/configs/morphomnist_v2_cycle_01.yaml) on one CUDA GPU: a time budget per
# run, the four runs side by side (--jobs 4, so the speed is measured with four runs sharing the
# GPU), scored on the GPU by the sweep itself; then every run's EMA weights are exported in float32
# so that the runs can be scored again on a CPU (docs/results.md, "Label fraction").
#
#   experiments/device_label_fraction.sh OUT [TIME] [DEVICE]
#
# OUT receives <run>.safetensors for each run and sweep.tgz (the sweep's report, time plan, logs and
# scores; no training checkpoints). TIME (default 330s) is each run's training time, or a step count
# (e.g. 1341) to train exactly that; DEVICE (default cuda) lets the script be tried on a CPU first.
# $CONFIG, $FRACTIONS, $SEEDS and $JOBS change the sweep (defaults: the hold-1 cycle config, "0.1 1",
# 2, 4). The sweep itself works in $SWEEP (default /tmp/device-sweep) and is stopped after
# $SWEEP_TIMEOUT seconds (default 545; its workers then save a checkpoint), so that the export still
# runs inside a 10-minute call.
set -uo pipefail
out=${1:?usage: experiments/device_label_fraction.sh OUT [TIME] [DEVICE]}
budget=${2:-330s}
device=${3:-cuda}
sweep=${SWEEP:-/tmp/device-sweep}
py=${PYTHON:-python3}
mkdir -p "$out"
start=$(date +%s)
case "$budget" in *[!0-9]*) plan=(--time "$budget") ;; *) plan=(--steps "$budget") ;; esac
timeout "${SWEEP_TIMEOUT:-545}" "$py" -m causaldiffae ablate label-fraction --graph morphomnist_v2 --data morphomnist \
    --config "${CONFIG:-experiments/configs/morphomnist_v2_cycle_01.yaml}" "${plan[@]}" --fractions ${FRACTIONS:-0.1 1} \
    --seeds "${SEEDS:-2}" --baselines --predictors causaldiffae/pretrained/morphomnist.predictors.safetensors \
    --jobs "${JOBS:-4}" --device "$device" --no-progress ${SWEEP_EXTRA:-} --out "$sweep"
echo "ablate exited with $? after $(( $(date +%s) - start )) s"
for run in "$sweep"/runs/*/; do
    [ -f "$run/checkpoint.safetensors" ] || continue
    "$py" -m causaldiffae export --run "$run" -o "$out/$(basename "$run").safetensors" --dtype float32
done
(cd "$sweep" && tar czf "$out/sweep.tgz" --exclude='checkpoint.safetensors' --exclude='samples' --exclude='*.png' .)
echo "done after $(( $(date +%s) - start )) s"
