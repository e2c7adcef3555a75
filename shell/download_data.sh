#!/usr/bin/env bash
# Raw data + models: dataset files into raw/<dataset>/, ShareGPT when the config names it
# (python -m preprocess.fetch), then SmolLM2-135M-Instruct (converted from GGUF once) and
# all-MiniLM-L6-v2 into models/ when the config uses them (python -m src.fetch_models).
# usage: bash shell/download_data.sh [configs/X.yaml] [--force] [--no-data] [--no-models]
#                                    [--downloads DIR] [--set key=value ...]
# Both parts are tried; the script fails if either did.
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
DATA=1
MODELS=1
PASS=()
for a in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$a" in
    --no-data) DATA=0 ;;
    --no-models) MODELS=0 ;;
    *) PASS+=("$a") ;;
  esac
done
rc=0
if [ "$DATA" = 1 ]; then
  python -m preprocess.fetch --config "$CONFIG" ${PASS[@]+"${PASS[@]}"} || rc=$?
fi
if [ "$MODELS" = 1 ]; then
  python -m src.fetch_models --config "$CONFIG" ${PASS[@]+"${PASS[@]}"} || rc=$?
fi
exit "$rc"
