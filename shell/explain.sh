#!/usr/bin/env bash
# Case study on demand: the recommender's view of one user and item, then every model's
# Yes/No decision (with its probability) and explanation, side by side (src/case_study.py).
# usage: bash shell/explain.sh [configs/X.yaml] --user UID | --history "title; title; ..."
#                              [--item IID|"title"] [--aspect "genres"]
#                              [--methods none,behaviour,intention,both] [--json]
#                              [--position test|valid|full] [--stream|--no-stream] [--set key=value ...]
# Without --item the recommender's top-1 for the user is explained.
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
# one prompt at a time: progress bars would only break the streamed explanation
export TQDM_DISABLE="${TQDM_DISABLE:-1}"
python -m src.case_study --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
