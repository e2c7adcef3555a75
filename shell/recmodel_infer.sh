#!/usr/bin/env bash
# Export the recommender's predictions: recmodel/{train,valid,test}_top.jsonl + item_sim.json.
# usage: bash shell/recmodel_infer.sh [configs/X.yaml] [--force] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m recmodel.infer --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
