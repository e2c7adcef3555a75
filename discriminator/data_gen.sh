#!/usr/bin/env bash
# Explanations -> classifier and score-predictor data (discriminator/datasets/).
# usage: bash discriminator/data_gen.sh [configs/X.yaml] [--force] [--set key=value ...]
source "$(dirname "$0")/../shell/_common.sh"
pick_config "$@"
ensure_venv
python -m discriminator.data_gen --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
