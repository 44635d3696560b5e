#!/usr/bin/env bash
# Issue 13's one evaluation on the embedded emoji model (CPU or GPU):
# calibrate on training captions (default rule, then budget mode at three
# SSIM targets from the same dense statistics), then every method on the
# held-out captions with the same seeds: dense, FastVAR, SkipVAR (the shipped
# classifier and the static skip-1 action), adaptive ToProVAR, the two
# hand-written plans and the four calibrated ones.
#   CAL_N (16) calibration images, EVAL_N (32) held-out images,
#   MAX_EVALS (6) budget-mode candidates per target, W (workdirs/emoji_eval).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-workdirs/emoji_eval}
CAL_N=${CAL_N:-16}
EVAL_N=${EVAL_N:-32}
MAX_EVALS=${MAX_EVALS:-6}
TARGETS=${TARGETS:-"0.80 0.85 0.90"}
mkdir -p "$W"
train=configs/prompts/emoji_train_32.txt
heldout=configs/prompts/emoji_heldout_32.txt
t0=$(date +%s)
python -m experiments.calibrate --config=configs/emoji.py --prompts=$train \
  --num_images="$CAL_N" --batch_size=8 --workdir="$W/calib"
plans="dense,fastvar,skipvar,adaptive,skipvar_skip1,emoji_default,emoji_paper,$W/calib/plan.json"
prev="$W/calib"
for t in $TARGETS; do
  # A finished search (frontier.json) is kept: a rerun goes on from there.
  # Each target starts from a copy of the previous one's workdir, so the
  # plans already generated (its frontier.json) are reused, not generated.
  if [[ ! -f "$W/calib_$t/frontier.json" ]]; then
    rm -rf "$W/calib_$t"
    cp -r "$prev" "$W/calib_$t"
    python -m experiments.calibrate --config=configs/emoji.py \
      --prompts=$train --num_images="$CAL_N" --batch_size=8 \
      --workdir="$W/calib_$t" --target_ssim="$t" --max_evals="$MAX_EVALS"
  fi
  plans="$plans,$W/calib_$t/plan.json"
  prev="$W/calib_$t"
done
t1=$(date +%s)
python -m experiments.evaluate --config=configs/emoji.py --prompts=$heldout \
  --plans="$plans" --num_samples="$EVAL_N" --batch_size=8 --seed=0 \
  --workdir="$W/eval" --overwrite
t2=$(date +%s)
echo "calibration $((t1 - t0)) s, evaluation $((t2 - t1)) s" | tee "$W/wall.txt"
