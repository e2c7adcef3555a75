#!/usr/bin/env bash
# Align the LLM: tasks/<T>_{train,valid}.json -> llm/<T>/ (adapter or weights, projectors, tokenizer).
# usage: bash shell/train.sh [configs/X.yaml] --task_type behaviour|intention|both [--nproc N] [--force] [--set key=value ...]
# --nproc N (or NPROC=N in the environment; default: the visible GPUs, 1 without one) is
# the number of training processes; it is not passed on to src.train.
#   N = 1        -> plain python (the Trainer uses the GPU if there is one)
#   N > 1, GPUs  -> `accelerate launch` on N processes with DeepSpeed ZeRO-2
#                   (configs/deepspeed/zero2.json) unless train.deepspeed is set in the config/--set
#   N > 1, CPU   -> `accelerate launch --multi_gpu` on N processes: DDP over gloo (the Trainer's
#                   use_cpu); OMP_NUM_THREADS is lowered so that N x threads <= cores.
#                   (`accelerate launch --cpu --num_processes N` would start ONE process.)
# The effective batch is per_device_batch_size x N x grad_accum (logged, and in meta.json).
source "$(dirname "$0")/_common.sh"
pick_config "$@"
NPROC="${NPROC:-}"
rest=()
i=0
while [ $i -lt ${#ARGS[@]} ]; do
  case "${ARGS[$i]}" in
    --nproc) NPROC="${ARGS[$((i + 1))]:-}"; i=$((i + 2)) ;;
    --nproc=*) NPROC="${ARGS[$i]#--nproc=}"; i=$((i + 1)) ;;
    *) rest+=("${ARGS[$i]}"); i=$((i + 1)) ;;
  esac
done
ARGS=(${rest[@]+"${rest[@]}"})
if [ -n "$NPROC" ] && ! [[ "$NPROC" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --nproc must be a positive integer, got '$NPROC'" >&2; exit 2
fi
ensure_venv

n_gpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  n_gpu="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
fi
[ -n "$NPROC" ] || NPROC=$(( n_gpu > 0 ? n_gpu : 1 ))

if [ "$NPROC" -gt 1 ] && [ "$n_gpu" -gt 0 ]; then
  if [ "$NPROC" -gt "$n_gpu" ]; then
    echo "error: --nproc $NPROC but only $n_gpu GPU(s) visible" >&2; exit 2
  fi
  ds=()
  case " ${ARGS[*]-} " in
    *"train.deepspeed="*) ;;
    *) ds=(--set train.deepspeed=configs/deepspeed/zero2.json) ;;
  esac
  echo "[train] $NPROC of $n_gpu GPUs: accelerate launch + DeepSpeed ZeRO-2" >&2
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes "$NPROC" \
    -m src.train --config "$CONFIG" ${ds[@]+"${ds[@]}"} ${ARGS[@]+"${ARGS[@]}"}
elif [ "$NPROC" -gt 1 ]; then
  cores="$(nproc)"
  per=$(( cores / NPROC )); [ "$per" -ge 1 ] || per=1
  want="${OMP_NUM_THREADS:-$per}"
  [ "$want" -le "$per" ] || want="$per"
  export OMP_NUM_THREADS="$want"
  [ "$NPROC" -le "$cores" ] || echo "[train] warning: $NPROC processes on $cores cores" >&2
  port="${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  echo "[train] CPU: $NPROC processes x $OMP_NUM_THREADS thread(s) (DDP, gloo)" >&2
  accelerate launch --multi_gpu --num_processes "$NPROC" --num_machines 1 --mixed_precision no \
    --dynamo_backend no --main_process_port "$port" \
    -m src.train --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
else
  echo "[train] $n_gpu GPU(s) visible: single process" >&2
  python -m src.train --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
fi
