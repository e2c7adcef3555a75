#!/usr/bin/env bash
# Align the LLM: tasks/<T>_{train,valid}.json -> llm/<T>/ (adapter or weights, projectors, tokenizer).
# usage: bash shell/train.sh [configs/X.yaml] --task_type behaviour|intention|both [--force] [--set key=value ...]
# Launcher from the visible GPUs: 0 or 1 -> plain python (the Trainer uses the GPU if there
# is one); N>1 -> `accelerate launch` on N processes with DeepSpeed ZeRO-2
# (configs/deepspeed/zero2.json) unless train.deepspeed is already set in the config/--set.
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv

n_gpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  n_gpu="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
fi

if [ "$n_gpu" -gt 1 ]; then
  ds=()
  case " ${ARGS[*]-} " in
    *"train.deepspeed="*) ;;
    *) ds=(--set train.deepspeed=configs/deepspeed/zero2.json) ;;
  esac
  echo "[train] $n_gpu GPUs visible: accelerate launch + DeepSpeed ZeRO-2" >&2
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes "$n_gpu" \
    -m src.train --config "$CONFIG" ${ds[@]+"${ds[@]}"} ${ARGS[@]+"${ARGS[@]}"}
else
  echo "[train] $n_gpu GPU(s) visible: single process" >&2
  python -m src.train --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
fi
