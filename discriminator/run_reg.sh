#!/usr/bin/env bash
# Score predictors, one per method -> discriminator/reg/metrics.json and tables/table3.md (Table 3).
# usage: bash discriminator/run_reg.sh [configs/X.yaml] [--methods both,none] [--force] [--set key=value ...]
source "$(dirname "$0")/../shell/_common.sh"
pick_config "$@"
ensure_venv
python -m discriminator.run_reg --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
