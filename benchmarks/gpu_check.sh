#!/usr/bin/env bash
# What runs only on a GPU, in one go: prints PASS/FAIL per item with its figures, exits 1 if any failed.
#
#   bash benchmarks/gpu_check.sh                    # on a machine with CUDA GPUs
#   bash benchmarks/gpu_check.sh --cpu              # dry run of the same code paths on CPU (gloo, float32,
#                                                   # width 0.25 unless WIDTH_CPU is set)
#   HUBERT_MODEL=/models/hubert-large-ls960-ft bash benchmarks/gpu_check.sh   # the real HuBERT if local
#   STORE=demo_out/store bash benchmarks/gpu_check.sh   # loader vs step on a real store (default: a fabricated one)
#
# Items:
#   1. cuda          torch sees the GPU(s): name, memory, torch / CUDA versions
#   2. bf16-step     benchmarks/step.py at width 1.0, batch 64, bf16 autocast: steps/s per combo, finite loss
#   3. fit-bf16      training/fit.py for 30 steps on a fabricated store (bf16 autocast, loader workers,
#                    pinned non_blocking copies): the loss falls, final.json written
#   4. ddp           torchrun --nproc-per-node=<GPUs> training/fit.py (NCCL; 2 CPU processes on gloo
#                    with --cpu), then --resume: every rank's loader state saved, steps continue exactly
#   5. hubert        HuBERT features on the GPU in fp16 (a random tiny HuBERT of the real architecture,
#                    or $HUBERT_MODEL when it is a local directory): 50 Hz rows, finite, device used
#   6. loader-vs-step  benchmarks/step.py --store: loader windows/s per core and with workers against
#                    the device's pairs/s at width 1.0 (ratio >= 1: the GPU is fed)
# Needs only this repository's .venv (make install); writes under ${WORK:-/tmp/unisync_gpu_check}.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
WORK=${WORK:-/tmp/unisync_gpu_check}
rm -rf "$WORK" && mkdir -p "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=cuda
[ $CPU = 1 ] && DEVICE=cpu
WIDTH=${WIDTH:-1.0}  # the paper's size; the --cpu dry run defaults to 0.25 (same code, minutes not hours)
[ $CPU = 1 ] && WIDTH=${WIDTH_CPU:-0.25}
FAILED=()
LOG="$WORK/log.txt"

run() {  # run NAME CMD...: prints PASS/FAIL NAME and the command's last lines (its figures)
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$WORK/$name.out" 2>&1; then
    echo "PASS $name ($((SECONDS - t0)) s)"
  else
    echo "FAIL $name ($((SECONDS - t0)) s; full output: $WORK/$name.out)"
    FAILED+=("$name")
  fi
  grep -v -e '^\s*$' -e 'it/s\]' "$WORK/$name.out" | tail -n "${TAIL:-8}" | sed 's/^/    /'
  cat "$WORK/$name.out" >>"$LOG"
}

echo "== unisync GPU check ($( [ $CPU = 1 ] && echo 'CPU dry run: gloo, float32' || echo 'CUDA: NCCL, bf16')) $(date -u +%FT%TZ)"

# 1. the device
run cuda "$PY" - "$DEVICE" <<'EOF'
import sys, torch
device = sys.argv[1]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if device == "cpu":
    print(f"CPU dry run: {torch.get_num_threads()} threads"); sys.exit(0)
assert torch.cuda.is_available(), "torch sees no CUDA device"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
EOF
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
[ $CPU = 1 ] && NGPU=2

# a fabricated store with every field the trainer reads (real tars and catalog layout)
"$PY" - "$WORK/store" <<'EOF' >>"$LOG" 2>&1
import sys
from pathlib import Path
from tests.test_training import make_store
make_store(Path(sys.argv[1]), utts_per_speaker=4, n_frames=60, broken=False)
print("fabricated store", sys.argv[1])
EOF
STORE=${STORE:-$WORK/store}

# 2. bf16 autocast training steps at paper size
STEPS=20; [ $CPU = 1 ] && STEPS=2
run bf16-step "$PY" benchmarks/step.py --device "$DEVICE" --dtype bf16 --width "$WIDTH" --batch-size 64 \
    --steps $STEPS --combos mel_rgb mel_landmarks hubert_rgb hubert_parsing --json "$WORK/step.json"

# 3. fit.py with bf16 autocast, loader workers, pinned memory
FIT=(--store "$WORK/store" --width 0.25 --lr 1e-3 --batch-size 32 --eval-every 15 --eval-pairs 128
     --log-every 5 --offset-windows 0 --no-progress --device "$DEVICE" --dtype bf16)
fit_bf16() {
  "$PY" training/fit.py --combo mel_rgb --out "$WORK/fit" --steps 30 --workers 2 "${FIT[@]}" || return 1
  "$PY" - "$WORK/fit" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
final = json.loads((out / "final.json").read_text())
print(f"loss {rec[0]['loss']:.3f} -> {rec[-1]['loss']:.3f}; {final['step_seconds']} s/step; "
      f"{final['workers']} loader workers; val balanced accuracy {final['val']['balanced_accuracy']:.3f}")
assert rec[-1]["loss"] < rec[0]["loss"], "the loss did not fall"
EOF
}
run fit-bf16 fit_bf16

# 4. DDP: NCCL on GPUs (gloo on CPU), then an exact resume
NPROC=$(( NGPU > 0 ? NGPU : 1 ))
DDP=(--combo mel_landmarks --store "$WORK/store" --out "$WORK/ddp" --width 0.25 --batch-size 16
     --eval-every 6 --eval-pairs 64 --log-every 5 --offset-windows 0 --no-progress --device "$DEVICE" --workers 1)
ddp() {
  "$PY" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" training/fit.py "${DDP[@]}" --steps 6 || return 1
  "$PY" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" training/fit.py "${DDP[@]}" --steps 12 --resume || return 1
  "$PY" - "$WORK/ddp" "$NPROC" <<'EOF'
import json, sys
from pathlib import Path
import torch
out, world = Path(sys.argv[1]), int(sys.argv[2])
ck = torch.load(out / "checkpoint.pt", weights_only=False)
steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
assert ck["world"] == world and len(ck["rank_states"]) == world, (ck["world"], world)
assert ck["step"] == 12 and steps == [5, 6, 10, 12], (ck["step"], steps)
drawn = [s["sampler"]["drawn"] for s in ck["rank_states"]]
assert drawn == [12 * 16] * world, drawn
print(f"{world} rank(s) ({'nccl' if torch.cuda.is_available() else 'gloo'}); resumed 6 -> 12 steps; "
      f"pairs drawn per rank {drawn}")
EOF
}
run ddp ddp

# 5. HuBERT on the GPU (fp16), tiny random model unless $HUBERT_MODEL is a local directory
run hubert "$PY" - "$WORK/tiny_hubert" "${HUBERT_MODEL:-}" "$DEVICE" <<'EOF'
import sys, time
from pathlib import Path
import numpy as np, torch
from features import hubert
tiny, real, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if real and Path(real).is_dir():
    model = real
else:
    from tests.conftest import tiny_hubert
    model = str(tiny_hubert(tiny))
    print("random tiny HuBERT of the real architecture (set HUBERT_MODEL=DIR for real weights)")
net, dev, rev = hubert.load_model(model, device)
assert dev.startswith(device), dev
audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 30).astype(np.float32)  # 30 s: 2 chunks
hubert.hubert_features(audio[:16000], model)
t0 = time.perf_counter()
feats = hubert.hubert_features(audio, model)
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
assert feats.shape[0] == 2 * len(audio) // 640 and np.isfinite(feats).all(), feats.shape
print(f"{model}: {feats.shape} on {dev} ({next(net.parameters()).dtype}); "
      f"{len(audio) / 16000 / seconds:.0f} s of audio per second")
EOF

# 6. loader vs step at paper size
HUB=16; [ "$STORE" = "$WORK/store" ] && HUB=1024
run loader-vs-step "$PY" benchmarks/step.py --device "$DEVICE" --width "$WIDTH" --batch-size 64 --steps $STEPS \
    --combos mel_rgb mel_landmarks --store "$STORE" --workers 2 --hubert-dim $HUB --json "$WORK/loader_vs_step.json"

echo "== ${#FAILED[@]} failed${FAILED[*]:+: ${FAILED[*]}}; logs in $WORK"
[ ${#FAILED[@]} = 0 ]
