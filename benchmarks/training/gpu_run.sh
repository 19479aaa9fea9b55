#!/usr/bin/env bash
# The project's training on one GPU beside airbench94 on the same card and data, in one call.
#
#   bash benchmarks/training/gpu_run.sh PEERS_DIR OUT_DIR [FASHION_MNIST_IDX_DIR]
#
# PEERS_DIR holds airbench's scripts (prepare_data.py, airbench94_torch.py) and the CIFAR-10
# JPEG copy's train.tar.gz; OUT_DIR receives the log and the exported models. Needs only
# python3 with jax (CUDA), flax, optax, orbax, numpy and Pillow (no TensorFlow): the project
# reads the JPEG folder itself (--input=device --data_source). If the machine's flax/optax/orbax
# do not run the project, wheels in .whl/ (same versions as pyproject's floor) are tried.
#
# How it ran (the `device` tool of this workplace; the folders are git-ignored and carried):
#   mkdir -p .peers/fmnist && cp ../shared/peers/gpu/*.py ../shared/datasets/cifar10-jpeg/train.tar.gz .peers/
#   cp /usr/share/datasets/fashion-mnist/train-* .peers/fmnist/
#   bash benchmarks/training/gpu_run.sh .peers "$OUT" .peers/fmnist
#
# Runs, all the real `python -m research.train` command on the 45,000/5,000 split that
# `research.data import-folder` makes (last 500 of each class held out for validation):
#   1. airbench94's 9.9 epochs (--recipe=airbench94), compute dtype auto (bfloat16 on GPU): loop
#      time and accuracy
#   2. airbench94_torch.py (3 runs) on the same split: its own loop time and accuracy
#   2b. (muon) airbench94_muon's recipe, 8 epochs, one 2,000-image pass a step
#   3. robust augmentation (trivial policy), 20 epochs: a candidate for serving (issue 13)
#   4. Fashion-MNIST with robust augmentation, its recipe at 30 epochs, when idx files are given
#   5. the 9.9 epochs of 1 in float32 (the bfloat16-against-float32 curve)
#   6. (bf16_quiet, when named in GPU_RUNS) run 1 evaluated once, at the end, no checkpoints
#   7. (bf16_12, when named) run 1 at 12 epochs
# Each run's log (with its results.json) lands in OUT_DIR as it ends, the models as NAME.tgz.
set -u
PEERS=${1:?peers folder}
OUT=${2:?output folder}
FMNIST=${3:-}
mkdir -p "$OUT" /tmp/gpurun
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
log() { echo "=== $(date +%T) $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import importlib.metadata as md
import jax
print({p: md.version(p) for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")})
print(jax.devices())
EOF

log "data"
tar -xzf "$PEERS/train.tar.gz" -C /tmp/gpurun
DATA=/tmp/gpurun/train

train() {  # train NAME SECONDS ARGS...: the real command; its log and results.json to OUT
    local name=$1 limit=$2
    shift 2
    log "train $name: $*"
    # GPU_RUN_EXTRA: flags added to every run (a CPU smoke test of this script: --max_steps=2)
    timeout "$limit" python3 -m research.train --workdir="/tmp/gpurun/w_$name" "$@" \
        ${GPU_RUN_EXTRA:-} 2>&1 \
        | tr '\r' '\n' | grep --line-buffered -v -E "step/s|^\s*$" | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    cat "/tmp/gpurun/w_$name/results.json" >>"$OUT/$name.log" 2>/dev/null
    return "$rc"
}

export_model() {  # export_model NAME: the exported model and its curves, as OUT/NAME.tgz
    local name=$1
    [ -f "/tmp/gpurun/w_$name/results.json" ] || return 0
    python3 -m research.export --workdir "/tmp/gpurun/w_$name" --out "/tmp/gpurun/m_$name" \
        --notes "Trained on one $(nvidia-smi --query-gpu=name --format=csv,noheader)" 2>&1 \
        | tail -2
    cp "/tmp/gpurun/w_$name/metrics.jsonl" "/tmp/gpurun/m_$name/" 2>/dev/null
    tar -czf "$OUT/$name.tgz" -C /tmp/gpurun "m_$name"
}

AIRBENCH94_9_9=(--dataset=cifar10 --recipe=airbench94 --input=device "--data_source=$DATA"
    --epochs=9.9 --warmup_epochs=2.277)  # airbench94's warm-up is 23% of the run
# airbench94_muon's recipe (8 epochs), in one 2,000-image pass a step on a GPU
MUON=(--dataset=cifar10 --recipe=airbench94_muon --input=device "--data_source=$DATA"
    --microbatches=1)

# GPU_RUNS: the runs to do, of: bf16 airbench94 bf16_quiet muon bf16_12 robust20 fm_robust fp32
RUNS=" ${GPU_RUNS:-bf16 airbench94 muon robust20 fm_robust fp32} "
want() { [[ "$RUNS" == *" $1 "* ]]; }

SECONDS=0
if want bf16 && ! train bf16 150 "${AIRBENCH94_9_9[@]}" && [ "$SECONDS" -lt 60 ]; then
    log "failed at once: trying the carried flax/optax/orbax wheels"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    rm -rf /tmp/gpurun/w_bf16
    train bf16 150 "${AIRBENCH94_9_9[@]}"
fi

if want airbench94; then
    log "airbench94 (PyTorch), same split"
    python3 "$PEERS/prepare_data.py" --root /tmp/gpurun --out /tmp/gpurun/c.npz \
        --validation_per_class 500 2>&1 | tail -2
    timeout 120 python3 "$PEERS/airbench94_torch.py" --data /tmp/gpurun/c.npz --runs 3 2>&1 \
        | tail -30 | tee "$OUT/airbench94.log"
fi
# The same run evaluated once, at the end, and no checkpoint before it: the loop alone.
want bf16_quiet && train bf16_quiet 120 "${AIRBENCH94_9_9[@]}" --eval_every_epochs=9.9 \
    --checkpoint_every_steps=100000

want muon && train muon 120 "${MUON[@]}"

# 12 epochs instead of 9.9: what the extra accuracy costs
want bf16_12 && train bf16_12 120 --dataset=cifar10 --recipe=airbench94 --input=device \
    "--data_source=$DATA" --epochs=12 --warmup_epochs=2.76

want robust20 && train robust20 150 --dataset=cifar10 --recipe=airbench94 --input=device \
    "--data_source=$DATA" --epochs=20 --warmup_epochs=4.6 --robust_augment=trivial
want robust20 && export_model robust20
if want fm_robust && [ -n "$FMNIST" ]; then
    train fm_robust 120 --dataset=fashion_mnist --input=device "--data_source=$FMNIST" \
        --epochs=30 --robust_augment=trivial
    export_model fm_robust
fi
want fp32 && train fp32 120 "${AIRBENCH94_9_9[@]}" --compute_dtype=float32
ls -la "$OUT"
log "done"
