# Sourced by every stage script: repository root, virtual environment, config argument.
# The venv is created on first use and re-synced whenever requirements.txt changes, so a
# fresh machine with only Python 3.11 needs nothing else.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

ensure_venv() {
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { py="$c"; break; }; done
  fi
  [ -n "$py" ] || { echo "error: python3.11 not found; install Python 3.11 first" >&2; exit 1; }
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $py" >&2
    "$py" -m venv .venv
  fi
  local want have
  want="$(sha256sum requirements.txt | cut -d' ' -f1)"
  have="$(cat .venv/.requirements.sha256 2>/dev/null || true)"
  if [ "$want" != "$have" ]; then
    echo "[setup] installing requirements into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    # torch first, pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine
    .venv/bin/python -m pip install -q "$(grep -E '^torch==' requirements.txt)" >&2
    .venv/bin/python -m pip install -q -r requirements.txt >&2
    echo "$want" > .venv/.requirements.sha256
  fi
  export PATH="$REPO_ROOT/.venv/bin:$PATH"
  export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # HF_HUB_OFFLINE is left to the user (an exported value passes through untouched): forcing
  # it to 1 refused hub ids such as lmsys/vicuna-7b-v1.3 on machines with a network. Local
  # model directories (models/..., absolute paths) load from disk without any network call
  # either way, and offline a hub id still loads from the Hugging Face cache.
  export TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
}

# CONFIG: first positional argument ending in .yaml/.yml, else configs/ml100k.yaml
pick_config() {
  CONFIG="configs/ml100k.yaml"
  ARGS=()
  for a in "$@"; do
    case "$a" in
      *.yaml|*.yml) CONFIG="$a" ;;
      *) ARGS+=("$a") ;;
    esac
  done
  [ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
}
