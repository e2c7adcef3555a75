#!/usr/bin/env bash
# LLM judge (Appendix A) + deterministic decision check -> judge/summary.json, tables/table2.md.
# usage: bash shell/eval_explan.sh [configs/X.yaml] [--model_names none,both,...] [--model_response_files f1,f2]
#                                  [--split valid] [--no_judge] [--force] [--set key=value ...]
# The judge needs an endpoint (OPENAI_API_KEY + ENGINE, or api.base_url + api.model); without one
# only the deterministic check is reported.
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
python -m src.eval_explan --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
