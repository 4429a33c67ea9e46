#!/bin/sh
# Create the virtual environment and install recbole_cmi with its dependencies.
#
# Two pip steps, on purpose: recbole==1.2.1's metadata pins ray<=2.6.3, colorlog==4.7.2 and
# colorama==0.4.4. That Ray does not import under NumPy 2 or setuptools>=82, and a one-step
# resolve of recbole together with a current Ray backtracks through dozens of Ray wheels. So
# we install RecBole's real dependencies (declared in setup.cfg, with ranges that work) plus a
# current Ray, then RecBole itself with --no-deps. torch is pinned to the CPU build that this
# machine serves locally; an unpinned torch would pull a multi-GB CUDA build.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH=${TORCH:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "$TORCH"
$PIP install -q -e ".[tune,plot,test,retrieval]"
$PIP install -q --no-deps recbole==1.2.1
$VENV/bin/python -c "import recbole_cmi, recbole, torch, ray, faiss; print('recbole', recbole.__version__, 'torch', torch.__version__, 'ray', ray.__version__, 'faiss', faiss.__version__)"
