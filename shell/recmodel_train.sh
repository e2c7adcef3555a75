#!/usr/bin/env bash
# Train the target recommender (SASRec or MF): recmodel/model.pt + metrics.json.
# Resumes from recmodel/checkpoint_last.pt after an interruption; --force starts over.
# usage: bash shell/recmodel_train.sh [configs/X.yaml] [--force] [--max-epochs N] [--set key=value ...]
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m recmodel.train --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
