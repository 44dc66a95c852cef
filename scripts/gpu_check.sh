#!/usr/bin/env bash
# The `gpu` experiment (64 px, the DDPM `paper` preset) cut down to fit a short GPU lease, run end
# to end to its report, then the `paper` preset's training images/s in bf16 against fp32 (issue #15
# §4). What is cut, and why: one replicate of the NDSB family (long-tailed and balanced), 1 minute
# of DDPM training and 0.3 minute per baseline instead of 60, splits capped at 60/15/30 images per
# class, label fractions 0.1 and 1: the whole run fits in ~8 minutes of one GPU, so it verifies
# the path (training, coarse-to-fine extraction, probes, report), not the paper's numbers.
#
# Usage: scripts/gpu_check.sh OUT NDSB_ZIP [--set KEY=VALUE ...]
#   OUT       folder for the log, the benchmark table and results.tgz (created)
#   NDSB_ZIP  ../shared/datasets/ndsb.zip, or a copy of it (the only dataset read)
#   --set     more overrides, after this script's own (a rehearsal on the CPU cuts further). For
#             a FLOP budget set the minutes caps high too (--set diffusion.max_tflops=1400
#             --set baselines.max_tflops=1400 --set baselines.max_minutes=60): a run stops at
#             whichever budget it reaches first, and this script's own caps are minutes.
# Environment: PYTHON (default python3), PLANKDIFF_CACHE (default OUT/cache), RESULTS (the study's
# results folder, default OUT/results), STUDY_SECONDS (330),
# BENCH_SECONDS (150): each part is stopped at its limit and the next one still runs; BENCH_ARGS:
# more options for the benchmark (a CPU rehearsal: --batch-size 2 --steps 1 --warmup 0 --repeats 1).
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT NDSB_ZIP [--set KEY=VALUE ...]}
ndsb=${2:?usage: scripts/gpu_check.sh OUT NDSB_ZIP [--set KEY=VALUE ...]}
shift 2
[[ -f $ndsb ]] || { echo "scripts/gpu_check.sh: $ndsb: no such file" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
ndsb=$(cd "$(dirname "$ndsb")" && pwd)/$(basename "$ndsb")
py=${PYTHON:-python3}
export PLANKDIFF_CACHE=${PLANKDIFF_CACHE:-$out/cache} PYTHONUNBUFFERED=1
results=${RESULTS:-$out/results}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    $py -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"
    nproc
} > "$out/environment.txt" 2>&1

# 1. The study, to its report.
SECONDS=0
timeout "${STUDY_SECONDS:-330}" $py -m plankdiff.cli run gpu --results "$results" \
    --set 'experiments=[ndsb]' \
    --set 'pretrain={ndsb: {dataset: ndsb, split: long-tailed}}' \
    --set 'seeds=[0]' \
    --set "datasets.ndsb.source=$ndsb" \
    --set 'diffusion.max_minutes=1.0' \
    --set 'baselines.max_minutes=0.3' \
    --set 'caps={train: 60, val: 15, test: 30}' \
    --set 'features={timesteps: [1, 5, 10, 25, 50, 100, 200, 400, 700], per_class_train: 15, per_class_val: 8, keep_timesteps: 2, batch_size: 512}' \
    --set 'protocol={losses: [ce, logit-adjusted], epochs: 30, min_steps: 400, bootstrap: 200}' \
    --set 'label_fractions=[0.1, 1.0]' \
    "$@" > "$out/study.log" 2>&1
echo "study: exit $? after ${SECONDS} s" >> "$out/environment.txt"

# 2. Training throughput, bf16 against fp32, on the split the study pre-trained on.
SECONDS=0
split=$(ls "$PLANKDIFF_CACHE"/prepared/gpu-ndsb-64/splits/long-tailed-s0*.json 2>/dev/null | head -1)
if [[ -n $split ]]; then
    timeout "${BENCH_SECONDS:-150}" $py bench/bench_train_precision.py --data gpu-ndsb-64 \
        --split "$(basename "$split" .json)" --preset paper --repeats 2 --steps 6 --warmup 3 \
        --out "$out/train_precision_gpu.md" ${BENCH_ARGS:-} > "$out/bench.log" 2>&1
    echo "bench: exit $? after ${SECONDS} s" >> "$out/environment.txt"
else
    echo "bench: not run (the study prepared no long-tailed split)" >> "$out/environment.txt"
fi

# 3. One archive of what the study wrote and what its stages recorded (no weights).
tar czf "$out/results.tgz" -C "$(dirname "$results")" "$(basename "$results")" \
    -C "$PLANKDIFF_CACHE" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.npy' studies 2>/dev/null
cat "$out/environment.txt"
