#!/usr/bin/env bash
# GPU-machine driver: bash bench/gpu.sh STEP [STEP...]. Data must be in $CIFARLAB_DATA.
# Work goes to /tmp/work; each step packs its results (no weights) into $OUT/<step>.tgz.
set -uo pipefail
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 CIFARLAB_NO_PROGRESS=1
OUT=${OUT:-/tmp/out}
W=/tmp/work
mkdir -p "$W" "$OUT"
cl() { python3 -m cifarlab "$@"; }
pack() { tar czf "$OUT/$1.tgz" --exclude=model.pt --exclude=predictions.npz -C "$W" "$1"; }
study() {  # study NAME SPEC [flags...]
  local name=$1 spec=$2; shift 2
  cl study "$spec" --out "$W/$name" "$@" && cl report "$W/$name" >/dev/null; pack "$name"
  python3 bench/summary.py "$W/$name" | tee -a "$OUT/summary.txt"
}
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    env) nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" ;;
    fake)  # random images in the official batch layout, to time the CUDA path before the real data arrives
      python3 bench/fake_data.py /tmp/fake && export CIFARLAB_DATA=/tmp/fake ;;
    speed)  # compile modes on budget-net, 2 epochs each
      for c in off on reduce-overhead; do
        cl train --model budget-net --epochs 2 --batch-size 512 --lr 0.8 --augment crop --compile $c \
          --out "$W/speed-$c" --overwrite | tail -2
      done ;;
    cuda-paths)  # val split + EMA + TTA eagerly; s8-net compiled; a 2-process study with its report
      cl train --model s8-net --norm ln --epochs 1 --val 5000 --ema 0.99 --tta --compile off \
        --out "$W/paths-ln" --overwrite | tail -2
      cl train --model s8-net --norm bn --epochs 2 --compile on --out "$W/paths-s8" --overwrite | tail -2
      cl study studies/smoke.toml --jobs 2 --out "$W/paths-smoke" --report | tail -3 ;;
    s8-default) cl train --model s8-net --norm bn --epochs 20 --out "$W/s8-default" --overwrite --tta \
                  | tee "$OUT/s8-default.log" ;;
    tune-s8) study tune-s8 studies/tune/s8.toml --jobs 4 ;;
    tune-budget) study tune-budget studies/tune/budget.toml --jobs 4 ;;
    normalization) study normalization studies/normalization.toml --seeds 5 ;;
    keras) study keras-cifar10 studies/keras-cifar10.toml --seeds 3 --jobs 3 ;;
    bench)  # budget-net (the tune-budget winners if that step ran, else studies/budget.toml) + bench/s8.toml,
            # 5 seeds each, resumable in $W/bench
      tuned=(); rows=budget
      [ -f "$W/tune-budget/store.sqlite" ] && tuned=(--tuned "$W/tune-budget") && rows=budget-tuned
      python3 bench/bench.py gpu --out "$W/bench" "${tuned[@]}" | tee "$OUT/bench.txt"; pack bench
      python3 bench/summary.py "$W/bench/$rows" "$W/bench/bench-s8" | tee -a "$OUT/summary.txt" ;;
    *) echo "unknown step $step" ;;
  esac
done
cat "$OUT/summary.txt" 2>/dev/null
