#!/usr/bin/env bash
# The main job: every stage of the paper, in order, on one config.
#
#   bash shell/run_all.sh [configs/X.yaml] [--profile long|full] [--from STAGE] [--only STAGE]
#                         [--nproc N] [--force] [--set key=value ...]   (passed to every stage)
#
# --nproc N: training processes of the train_* stages only (shell/train.sh; same as NPROC=N).
#
# Default: configs/ml100k.yaml (MovieLens-100K + SASRec + SmolLM2-135M-Instruct on CPU).
# It ends within its pipeline.time_limit_s (57 min, setup included) on a 2-core machine
# whose other stages leave training time: the base model's Table 1 and explanations run
# before training, and each variant then trains for what the limit leaves it (src.deadline;
# its plan in llm/<variant>/budget.json). On a 2-core AMX machine that is the whole record
# budget; on slower ones fewer records (`--set pipeline.time_limit_s=0`: the records decide).
# `--profile long` swaps in configs/<name>_long.yaml (2-7x the records, a 150-minute limit);
# `--profile full` the paper-scale sibling (configs/<name>_full.yaml) when one exists. Every
# stage skips work whose outputs exist, so re-running after an interruption continues where
# it stopped. Stage times: <root>/logs/stage_times.tsv.
T_ALL=$(date +%s)  # pipeline.time_limit_s counts from here, the .venv setup included
source "$(dirname "$0")/_common.sh"

PROFILE=default
FROM=""
ONLY=""
POS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --from) FROM="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --nproc) export NPROC="$2"; shift 2 ;;  # read by shell/train.sh only
    --nproc=*) export NPROC="${1#--nproc=}"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) POS+=("$1"); shift ;;
  esac
done
pick_config ${POS[@]+"${POS[@]}"}
if [ "$PROFILE" = full ] || [ "$PROFILE" = long ]; then
  sib="${CONFIG%.yaml}_${PROFILE}.yaml"
  if [ -f "$sib" ]; then CONFIG="$sib"
  elif [ "$PROFILE" = full ]; then echo "[run_all] no $sib; $CONFIG already holds its paper-scale settings" >&2
  else echo "error: no $sib (--profile long exists for configs/ml100k.yaml)" >&2; exit 2; fi
elif [ "$PROFILE" != default ]; then
  echo "error: --profile must be 'default', 'long' or 'full', got '$PROFILE'" >&2; exit 2
fi

ensure_venv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

# Which methods this config can run: read from the config so the tiny profile and the
# paper profiles share this script.
eval "$(python -m src.pipeline_plan --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"})"

SUMMARY=()
TIMES="$ROOT/logs/stage_times.tsv"  # every stage's seconds, per run: src.deadline reads them
started=0
[ -z "$FROM" ] && started=1

NAMES=()
DRY=0
stage() {
  # stage NAME COMMAND...: run one stage with a header and its wall time (DRY=1: list it)
  local name="$1"; shift
  if [ "$DRY" = 1 ]; then NAMES+=("$name"); return 0; fi
  if [ -n "$ONLY" ] && [ "$ONLY" != "$name" ]; then return 0; fi
  if [ $started = 0 ]; then
    if [ "$name" = "$FROM" ]; then started=1; else return 0; fi
  fi
  printf '\n========== [%s] %s ==========\n' "$(date +%H:%M:%S)" "$name"
  local t0; t0=$(date +%s)
  "$@" ${ARGS[@]+"${ARGS[@]}"}
  local dt=$(( $(date +%s) - t0 ))
  SUMMARY+=("$(printf '%-28s %6ss' "$name" "$dt")")
  mkdir -p "$(dirname "$TIMES")" && printf '%s\t%s\t%s\n' "$T_ALL" "$name" "$dt" >>"$TIMES"
  printf '[%s] %s done in %ss\n' "$(date +%H:%M:%S)" "$name" "$dt"
}

train_variant() {
  # train_variant T [ARGS...]: shell/train.sh, with the training seconds that
  # pipeline.time_limit_s leaves this variant (src.deadline; nothing when there is no limit)
  local tt="$1"; shift
  local budget
  budget="$(python -m src.deadline --config "$CONFIG" --task_type "$tt" --started "$T_ALL" --after "$AFTER_TRAIN" \
    "$@")" || return $?
  bash shell/train.sh "$CONFIG" --task_type "$tt" ${budget:+--set "train.time_budget_s.$tt=$budget"} "$@"
}

is_trained() { case " $TRAIN_TYPES " in *" $1 "*) return 0 ;; esac; return 1; }

align_runs() {
  # align_runs base|aligned: the Table 1 stages of the base model and API methods, or of the
  # trained variants. One stage (one process, one model load) per method; each skips the
  # modes / splits whose outputs exist, so an interrupted stage resumes where it stopped
  local m tt modes flag
  for m in $ALIGN_RUNS; do   # entries look like method:mode,mode,...[:flag]
    IFS=: read -r tt modes flag <<<"$m"
    if is_trained "$tt"; then [ "$1" = aligned ] || continue; else [ "$1" = base ] || continue; fi
    stage "align_${tt}${flag:+_$flag}" bash $S/infer_alignment.sh "$CONFIG" --task_type "$tt" --inference_mode "$modes" ${flag:+--$flag}
  done
}

explain_runs() {
  local e tt splits
  for e in $EXPLAIN_RUNS; do  # method:split,split,...
    IFS=: read -r tt splits <<<"$e"
    if is_trained "$tt"; then [ "$1" = aligned ] || continue; else [ "$1" = base ] || continue; fi
    stage "explain_$tt" bash $S/infer_explan.sh "$CONFIG" --task_type "$tt" --split "$splits"
  done
}

pipeline() {
  S=shell
  stage fetch            bash $S/download_data.sh "$CONFIG"
  stage preprocess       bash $S/preprocess_recmodel.sh "$CONFIG"
  stage recmodel_train   bash $S/recmodel_train.sh "$CONFIG"
  stage recmodel_infer   bash $S/recmodel_infer.sh "$CONFIG"
  stage baselines        python -m recmodel.baselines --config "$CONFIG"
  stage replay           bash $S/replay.sh "$CONFIG"
  stage task_data        bash $S/recexplainer_data_pipeline.sh "$CONFIG"
  # the base model's (and API methods') Table 1 and explanations need no training: they run
  # first, and the base Table 1 stage's time tells src.deadline how long the stages after
  # training will take
  align_runs base
  explain_runs base
  for tt in $TRAIN_TYPES; do
    stage "train_$tt"    train_variant "$tt"
  done
  align_runs aligned
  explain_runs aligned
  stage eval_explan      bash $S/eval_explan.sh "$CONFIG"
  stage disc_data        bash discriminator/data_gen.sh "$CONFIG"
  stage disc_cls         bash discriminator/run_cls.sh "$CONFIG"
  stage disc_reg         bash discriminator/run_reg.sh "$CONFIG"
  stage report           python -m src.report --config "$CONFIG"
}

DRY=1 pipeline
for want in "$FROM" "$ONLY"; do
  if [ -n "$want" ] && ! printf '%s\n' "${NAMES[@]}" | grep -qx -- "$want"; then
    echo "error: unknown stage '$want'; stages of this config: ${NAMES[*]}" >&2; exit 2
  fi
done
AFTER_TRAIN=""  # the stages after the last training stage: src.deadline predicts their time
for name in "${NAMES[@]}"; do
  case "$name" in train_*) AFTER_TRAIN="" ;; *) AFTER_TRAIN+="$name " ;; esac
done
DRY=0
pipeline

printf '\n========== summary (%s) ==========\n' "$CONFIG"
for line in ${SUMMARY[@]+"${SUMMARY[@]}"}; do echo "$line"; done
printf '%-28s %6ss\n' total "$(( $(date +%s) - T_ALL ))"
echo "tables: $ROOT/tables/  (Figure 4: $ROOT/discriminator/cls/confusion.png)"
