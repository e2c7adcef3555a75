#!/usr/bin/env bash
# Merge a trained LoRA adapter into the base weights: llm/<T>/ -> llm/<T>/merged/.
# usage: bash shell/merge.sh [configs/X.yaml] --task_type behaviour|intention|both [--force]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m src.merge --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
