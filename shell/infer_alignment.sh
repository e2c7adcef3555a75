#!/usr/bin/env bash
# Alignment evaluation (Table 1): one method on one inference mode, or on all of them.
# usage: bash shell/infer_alignment.sh [configs/X.yaml] --task_type behaviour|intention|both|none|gpt4
#            [--inference_mode uid2next|uidiid2rank|uidiid2binary|uid2hist|iid2title[,MODE...]]
#            [--icl] [--constrained|--no-constrained] [--pointwise|--no-pointwise] [--split valid|test] [--force] [--set key=value ...]
# Without --inference_mode, runs the four Table 1 tasks (uid2hist only for intention/both),
# in one process (the model is loaded once).
# Then: python -m src.report --config X.yaml prints Table 1.
source "$(dirname "$0")/_common.sh"
pick_config "$@"
ensure_venv
has_mode=0; tt=""
prev=""
for a in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$a" in --inference_mode|--inference_mode=*) has_mode=1 ;; esac
  [ "$prev" = "--task_type" ] && tt="$a"
  case "$a" in --task_type=*) tt="${a#--task_type=}" ;; esac
  prev="$a"
done
if [ $has_mode = 1 ]; then
  python -m src.infer_alignment --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
else
  modes="uid2next,uidiid2rank,uidiid2binary"
  case "$tt" in intention|both) modes="$modes,uid2hist" ;; esac
  python -m src.infer_alignment --config "$CONFIG" --inference_mode "$modes" ${ARGS[@]+"${ARGS[@]}"}
fi
