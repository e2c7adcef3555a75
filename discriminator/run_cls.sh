#!/usr/bin/env bash
# Explanation classifier -> discriminator/cls/metrics.json and confusion.png (Figure 4).
# usage: bash discriminator/run_cls.sh [configs/X.yaml] [--force] [--set key=value ...]
source "$(dirname "$0")/../shell/_common.sh"
pick_config "$@"
ensure_venv
python -m discriminator.run_cls --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
