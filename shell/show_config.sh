#!/usr/bin/env bash
# Print a config fully resolved, as YAML, each value with the file it came from
# (`# from configs/paper.yaml`), `# --set` for an override, `# default` for a dataclass default.
#
#   bash shell/show_config.sh [configs/X.yaml] [--profile full] [--set key=value ...]
#
# Default: configs/ml100k.yaml. `--profile full` shows the config's paper-scale sibling
# (configs/<name>_full.yaml) when one exists, as `shell/run_all.sh --profile full` runs it.
source "$(dirname "$0")/_common.sh"

PROFILE=default
POS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || { echo "error: --profile needs a value (default|full)" >&2; exit 2; }
               PROFILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) POS+=("$1"); shift ;;
  esac
done
pick_config ${POS[@]+"${POS[@]}"}
if [ "$PROFILE" = full ]; then
  full="${CONFIG%.yaml}_full.yaml"
  if [ -f "$full" ]; then CONFIG="$full"; else echo "[show_config] no $full; $CONFIG already holds its paper-scale settings" >&2; fi
elif [ "$PROFILE" != default ]; then
  echo "error: --profile must be 'default' or 'full', got '$PROFILE'" >&2; exit 2
fi

ensure_venv
python -m src.show_config --config "$CONFIG" ${ARGS[@]+"${ARGS[@]}"}
