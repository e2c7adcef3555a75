#!/usr/bin/env bash
# Raw files -> canonical dataset (data/sequences.txt, items.jsonl, dataset.json).
# usage: bash shell/preprocess_recmodel.sh [configs/X.yaml] [--force] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m preprocess --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
