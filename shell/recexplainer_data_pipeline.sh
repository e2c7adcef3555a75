#!/usr/bin/env bash
# Canonical dataset + recommender exports -> alignment tasks 1-6 (behaviour / intention /
# hybrid forms) and explanation prompts under outputs/<dataset>/tasks/, plus stats.md.
# usage: bash shell/recexplainer_data_pipeline.sh [configs/X.yaml] [--force] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m data_gen --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
