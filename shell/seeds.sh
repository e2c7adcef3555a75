#!/usr/bin/env bash
# Table 1 over several training seeds (src/seeds.py says why): retrain and re-evaluate the
# aligned variants with train.seed = S, each seed in <root>_seed<S> (linking the main run's
# data, recommender, replay and task files), then tables/table1_seeds.md (+ .csv) in the
# main root. Run the main pipeline first; its own train.seed is one of the seeds as it is.
#
#   bash shell/seeds.sh [configs/X.yaml] --seeds 42,7,1 [--task_types intention,both]
#                       [--set key=value ...]   (passed to every stage)
#
# (the long profile: name its config, configs/ml100k_long.yaml)
#
# Cost: one training + one Table 1 evaluation per seed and variant (on 2 CPU cores with the
# default profile ~20 / 11 / 8 minutes for RecExplainer-H / -I / -B). Resumable: every stage
# skips the work whose outputs exist.
source "$(dirname "$0")/_common.sh"

SEEDS=""
TYPES=""
POS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="${2:-}"; shift 2 ;;
    --task_types) TYPES="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) POS+=("$1"); shift ;;
  esac
done
[ -n "$SEEDS" ] || { echo "error: --seeds is required, e.g. --seeds 42,7,1" >&2; exit 2; }
pick_config ${POS[@]+"${POS[@]}"}
ensure_venv

eval "$(python -m src.pipeline_plan --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"})"
TYPES="${TYPES//,/ }"
TYPES="${TYPES:-$TRAIN_TYPES}"
for tt in $TYPES; do
  case " $TRAIN_TYPES " in
    *" $tt "*) ;;
    *) echo "error: --task_types: '$tt' is not trained by $CONFIG (pipeline.train_types: $TRAIN_TYPES)" >&2
       exit 2 ;;
  esac
done

# one "SEED ROOT" line per seed; the roots are created here, before any training
roots="$(python -m src.seeds --config "$CONFIG" --seeds "$SEEDS" --link ${ARGS[@]+"${ARGS[@]}"})"
while read -r seed root; do
  for tt in $TYPES; do
    # another seed trains as many records as the main run's model did (which, under
    # pipeline.time_limit_s, is what its time allowed), not a count sized anew by the clock
    same=()
    if [ "$root" != "$ROOT" ]; then
      sets="$(python -m src.seeds --config "$CONFIG" --seeds "$SEEDS" --same_records "$tt" ${ARGS[@]+"${ARGS[@]}"})" \
        || exit $?
      while read -r s; do same+=(--set "$s"); done <<<"$sets"
    fi
    for st in "train_$tt" "align_$tt"; do
      bash shell/run_all.sh "$CONFIG" --only "$st" ${ARGS[@]+"${ARGS[@]}"} \
        --set "paths.root=$root" --set "train.seed=$seed" ${same[@]+"${same[@]}"} </dev/null
    done
  done
done <<<"$roots"
python -m src.seeds --config "$CONFIG" --seeds "$SEEDS" --task_types "${TYPES// /,}" ${ARGS[@]+"${ARGS[@]}"}
