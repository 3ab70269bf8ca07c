#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one call on a lent GPU machine (one H100: < 10 min).
#
#   bash benchmarks/gpu.sh                              # on the device machine; results in $OUT
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh /tmp/dry  # the same commands at tiny sizes, on a CPU
#   STEPS="callbacks" bash benchmarks/gpu.sh            # only the steps named (any of the six)
#
# Steps: incremental occlusion vs Captum vs full forwards (issue 6), DeconvNet vs Captum
# (issue 3), Lightning vs a plain loop at the paper's size (issue 2), pack loader vs folder
# loader feeding the GPU (issue 7), the ImageNet configs' figure callbacks (a scheduled
# FeatureEvolution epoch, the top-9 panels, the filters, occlusion) against a training epoch
# (issue 24), the linear probes' features and solves against scikit-learn on the CPU (issue 23).
# Each step has its own time limit and its own log in the output folder; a step that fails or
# runs out of time does not cost the others. The first four steps fit the device tool's 600 s
# per call (570 s of limits); run `STEPS=callbacks` and `STEPS=probe` as calls of their own. Nothing is
# downloaded: the models have random weights and the data and callbacks steps generate their
# JPEGs (in /tmp, not in the output).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
dev=${DEVICE:-cuda}
mkdir -p "$out"
if [[ -n "${QUICK:-}" ]]; then
  occ=(--models zfnet --image-size 96 --methods full direct incremental)
  dec=(--size 64 --channels 4)
  trn=(--width 0.125 --image-size 64 --batch-size 8 --steps 3 --warmup 2 --repeats 1)
  dat=(--num-images 32 --num-classes 4 --size 72 --crop 64 --width 0.125 --batch-size 8
       --steps 2 --warmup 1)
  cbk=(--num-images 64 --num-val 16 --width 0.125 --batch-size 16 --repeats 1)
  prb=(--num_images 400 --solve_images 100 --repeats 1)
else
  occ=(--repeats 3)
  dec=(--size 224 --repeats 3)
  trn=(--width 1 --image-size 224 --batch-size 256 --precision bf16-mixed --channels-last)
  dat=(--num-images 6000 --width 1 --batch-size 256 --precision bf16-mixed --channels-last
       --folder-workers 16)
  cbk=(--num-images 5120 --num-val 512 --width 1 --batch-size 256 --precision bf16-mixed
       --loader-threads 8 --pack-workers 16 --warmup 4)
  prb=(--num_images 5000 --solve_images 1000 --repeats 3)
fi
steps=${STEPS:-occlusion deconv train data callbacks probe}

step() {  # step NAME SECONDS SCRIPT ARGS...
  local name=$1 limit=$2
  shift 2
  [[ " $steps " == *" $name "* ]] || return 0
  echo "=== $name (limit ${limit} s): python $*"
  timeout "$limit" python "$@" > "$out/$name.log" 2>&1
  echo "=== $name: exit status $?"
  tail -n 25 "$out/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } \
  > "$out/gpu.txt" 2>&1
step occlusion 160 benchmarks/occlusion.py --device "$dev" "${occ[@]}" --out "$out/occlusion.md"
step deconv 100 benchmarks/deconv.py --device "$dev" "${dec[@]}"
step train 130 benchmarks/train.py --device "$dev" "${trn[@]}"
step data 180 benchmarks/data.py --device "$dev" "${dat[@]}" --work-dir /tmp/zflight-gpu-data
step callbacks 240 benchmarks/imagenet_callbacks.py --device "$dev" "${cbk[@]}"
step probe 420 benchmarks/probe.py --device "$dev" "${prb[@]}"
