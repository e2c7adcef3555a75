#!/usr/bin/env bash
# Run the test suite (sets up .venv on first use). Extra arguments go to pytest.
source "$(dirname "$0")/_common.sh"
ensure_venv
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit $rc
