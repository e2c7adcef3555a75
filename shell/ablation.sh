#!/usr/bin/env bash
# Figure 7 ablation: one model trained without each task type, each measured on Table 1's tasks.
# usage: bash shell/ablation.sh [configs/X.yaml] [--task_type both] [--tasks uid2next,uidiid2rank,...]
#            [--modes uid2next,...] [--max_steps N] [--force] [--set key=value ...]
# Trains llm/ablation/<T>-no_<type>/ per type (llm/<T>/ is the full model, trained if missing),
# evaluates each under eval/ablation/, writes tables/figure7.{csv,md,png}. Re-runs skip done work.
# Single process (the Trainer uses one GPU if there is one); run_all.sh does not call it.
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m src.ablation --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
