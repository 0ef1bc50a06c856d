#!/usr/bin/env bash
# The device-machine entry for bench/gpu_check.py (issue 19). The device machine has torch + CUDA
# and most of our dependencies but no package registry: the pure-Python wheels it lacks travel in
# bench/gpu/wheels and are installed into a temporary target. Writes $OUT/gpu_report.{json,md}
# and the logs of every CLI run it made; prints the report last.
#
#   device run:  bash bench/gpu_check.sh            (timeout_s 560: the script stops itself by 480 s)
#   here (CPU):  bash bench/gpu_check.sh            (a CPU rehearsal; OUT defaults to bench/gpu/out)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c "import tomli_w" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/aeron-site bench/gpu/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/aeron-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi 2>/dev/null | head -15
exec timeout 540 "$PY" bench/gpu_check.py --budget-s 420 "$@"
