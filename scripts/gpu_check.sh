#!/bin/sh
# GPU check, unattended, in under 8 minutes: CMI, SASRec and ComiRecSA, one epoch each on MicroLens-sized
# synthetic data (generated here, nothing downloaded), AMP off and on, full-sort evaluation of every test user,
# CPU/CUDA/autocast agreement of the scores, and a 2-GPU DDP run of SASRec when two GPUs are present.
# Writes results/gpu.md (see recbole_cmi/benchmark/gpu.py for what each column means).
#
# Without a CUDA device it says so and runs the same code as a small dry run on the CPU, writing its report
# to a temporary file (results/gpu.md is kept for real GPU runs).
#
#   sh scripts/gpu_check.sh                 # from the repository root, with the project's .venv
#   VENV=/path/to/venv sh scripts/gpu_check.sh --models SASRec
set -eu
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || PY=python3
LIMIT=${GPU_CHECK_LIMIT_S:-460}  # the whole check, 20 s short of 8 minutes; a run past it is stopped
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available(), '| GPUs:', torch.cuda.device_count())"
status=0
timeout --kill-after=15 "$LIMIT" "$PY" -m recbole_cmi benchmark gpu "$@" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "error: the GPU check ran past ${LIMIT} s and was stopped (rerun with fewer --models)" >&2
fi
exit "$status"
