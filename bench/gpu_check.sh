#!/usr/bin/env bash
# GPU check of issue #16, in under 8 minutes on one GPU. Run from the repository root:
#
#     bash bench/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#
# Parts (each with its own time limit; every output goes under bench/results/gpu_check-<time>/):
#   1. the test suite's CUDA-marked tests (pytest -m cuda)                                    2 min
#   2. training throughput: fp32 / bf16 / fp16 x channels_last_3d on/off, paper-size stages   3 min
#      (rewrites BENCHMARKS.md's "Training throughput on a GPU" section)
#   3. prediction of the three KiTS19 geometries (random weights) with peak GPU memory       1.5 min
#   4. the CUDA out-of-memory fallback (part of 1: tests/test_cuda.py)
#   5. a 1-GPU torchrun (NCCL) training run of 2 epochs on a tiny synthetic dataset          1 min
# Without a GPU it stops at once with a message (exit status 3). A part that fails or runs out of
# time is reported and the others still run; the exit status is then 1.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=bench/results/gpu_check-$(date +%Y%m%d-%H%M%S)

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda)' 2>&1 | tail -1)); nothing to check" >&2
    exit 3
fi
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
echo "gpu_check: outputs under $OUT"
FAILED=()

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit} s): $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    if [ $rc -ne 0 ]; then
        [ $rc -eq 124 ] && echo "=== $name: ran out of its ${limit} s" || echo "=== $name: failed (exit status $rc)"
        FAILED+=("$name")
    fi
    echo "=== $name: $((SECONDS - t0)) s"
}

# 1 + 4. CUDA-marked tests, the out-of-memory fallback among them
part cuda_tests 120 "$PY" -m pytest -q -p no:xdist -m cuda tests/test_cuda.py --junitxml="$OUT/cuda_tests.xml"

# 2. Training throughput. The modes are those bench_throughput.py offers (--help); adjust this line
#    if they change. --profiles paper: the papers' patch and batch sizes.
MODES="fp32 bf16 fp16 fp32_cl bf16_cl fp16_cl"   # <- adjust to bench_throughput.py --modes
part throughput 180 "$PY" bench/bench_throughput.py --device cuda --profiles paper --modes $MODES --warmup 2 --steps 5

# 3. Prediction of the three KiTS19 geometries on the GPU: seconds and peak CUDA memory per case.
part predict 90 "$PY" - "$OUT" <<'PYEOF'
import json, sys, time
sys.path.insert(0, "bench")
import torch
from bench_inference import CASES, _recipe, _run, fake_ct
from kitseg.inference import predict_case
from kitseg.io import read_volume

run, rows = _run(_recipe(tiny=False, single=False)), []
for which, case in CASES.items():
    ct = read_volume(fake_ct(case))
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    predict_case(ct, run, device="cuda")
    torch.cuda.synchronize()
    rows.append({"case": case, "which": which, "shape": list(ct.shape), "seconds": round(time.perf_counter() - t0, 2),
                 "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20)})
    print(rows[-1], flush=True)
json.dump({"gpu": torch.cuda.get_device_name(0), "recipe": "kitseg_cascade (random weights)", "rows": rows},
          open(f"{sys.argv[1]}/predict.json", "w"), indent=1)
PYEOF

# 5. torchrun, one process per GPU (NCCL), 2 epochs of the tiny profile on a tiny synthetic dataset
part synth 60 "$PY" -m kitseg.cli.main synth "$OUT/data" --cases 6 --size tiny --seed 0
part torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m kitseg.cli.main train \
    --recipe kitseg_cascade --data "$OUT/data" -o "$OUT/torchrun_run" --tiny --epochs 2 --fold 0 --device cuda \
    --no-progress

echo "gpu_check: done in $SECONDS s; outputs under $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: failed or out of time: ${FAILED[*]}" >&2
    exit 1
fi
