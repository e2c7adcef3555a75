#!/usr/bin/env bash
# Raw data + models: dataset files into raw/<dataset>/, ShareGPT when the config names it,
# SmolLM2-135M-Instruct (converted from GGUF once) and all-MiniLM-L6-v2 into models/.
# usage: bash shell/download_data.sh [configs/X.yaml] [--force] [--no-models] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m preprocess.fetch --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
