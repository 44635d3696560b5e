#!/usr/bin/env bash
# The two GPU commands that train the emoji model v2 (issue 12), run from
# the repository root on the device machine, one H200, in one lease:
#
#   bash scripts/train_emoji_gpu.sh 1    # carry: [".carry"]; ~530 s
#   bash scripts/train_emoji_gpu.sh 2    # carry: [".carry"]; ~450 s, next
#
# Command 2 must follow command 1 on the same (still warm) machine: it
# resumes the transformer from the checkpoints command 1 left in $WORKDIR.
# Command 1 plans the transformer's cosine schedule over both commands
# (experiments/train_emoji.py --later_s), command 2 finishes it (--resume).
#
# .carry/ (git-ignored, see toprovar_jax/assets/emoji/README.md for how it
# is made) holds emoji128/emoji_128.npz (build_emoji_dataset),
# emoji_text.npz (encode_captions --max_len=32 --float16) and whl/ with the
# ml_collections wheel, which the GPU image lacks.
#
# $OUT gets, per command: tokenizer_000.npz + tokenizer.manifest.json,
# transformer_000.npz, transformer_001.npz + transformer.manifest.json (the
# bf16 exports as they stand at the end of the command; command 2's are the
# final weights), logs.tar.gz (each stage's results.json, metrics.jsonl,
# curves, config.json, tokenizer reconstructions, summary.json) and
# log_<N>.txt (the whole console log): 7 files, each < 16 MiB.
#
# Environment overrides (seconds; the defaults are the plan for one H200 in
# 19 minutes of device time): TOK_S (tokenizer stage), TF1_S / TF2_S
# (transformer in command 1 / 2), PROBE_S / TOK_PROBE_S (rate probes),
# ATTN_IMPLS (order of attention implementations to try, e.g. cudnn,xla),
# WORKDIR, CARRY, and EXTRA (more train_emoji flags, e.g. for a CPU dry run:
# EXTRA="--override=transformer:--config.batch_size=2").
set -euo pipefail
part="${1:?usage: bash scripts/train_emoji_gpu.sh 1|2}"
: "${OUT:?OUT must name the folder that receives the results}"
WORKDIR="${WORKDIR:-/tmp/emoji_v2}"
CARRY="${CARRY:-.carry}"
TOK_S="${TOK_S:-210}" TF1_S="${TF1_S:-300}" TF2_S="${TF2_S:-430}"
PROBE_S="${PROBE_S:-110}" TOK_PROBE_S="${TOK_PROBE_S:-110}"
# cuDNN refused the transformer's block mask on jax 0.11.2 (2026-12-03: its
# probe failed after 72 s), so XLA attention (with remat) is the default.
ATTN_IMPLS="${ATTN_IMPLS:-xla}"
mkdir -p "$OUT"
if ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
common=(--workdir="$WORKDIR" --dataset="$CARRY/emoji128/emoji_128.npz"
        --captions="$CARRY/emoji_text.npz" --out="$OUT"
        --probe_s="$PROBE_S" --tokenizer_probe_s="$TOK_PROBE_S"
        --attn_impls="$ATTN_IMPLS")
case "$part" in
  1) args=(--tokenizer_s="$TOK_S" --transformer_s="$TF1_S"
           --later_s="$TF2_S") ;;
  2) args=(--resume --transformer_s="$TF2_S") ;;
  *) echo "train_emoji_gpu.sh: part must be 1 or 2, got '$part'" >&2
     exit 2 ;;
esac
set -o pipefail
{ (nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null ||
   true); date -u
  # shellcheck disable=SC2086
  python3 -m experiments.train_emoji "${common[@]}" "${args[@]}" ${EXTRA:-}
} 2>&1 | tee "$OUT/log_$part.txt"
