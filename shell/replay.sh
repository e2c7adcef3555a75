#!/usr/bin/env bash
# Offline ShareGPT stand-in (task 5): the base LLM answers data_gen.sharegpt_replay general
# instructions once -> replay/sharegpt_replay.json, which the data pipeline reads like
# ShareGPT. Does nothing when data_gen.sharegpt_replay is 0 (the paper profiles).
# usage: bash shell/replay.sh [configs/X.yaml] [--force] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m src.replay --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
