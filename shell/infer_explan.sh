#!/usr/bin/env bash
# Explanations of one method on one prompt split -> explain/<method>_<split>.jsonl (resumable).
# usage: bash shell/infer_explan.sh [configs/X.yaml] --task_type behaviour|intention|both|none|chatgpt
#                                   [--split valid|train|test] [--aspect "genres"] [--force] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m src.infer_explan --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
