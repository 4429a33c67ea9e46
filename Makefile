# Two commands do all the set-up on a fresh clone: `make run` (main job) and `make test`.
# Each creates the virtual environment on first use (see README, "Installation").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= CMI
DATASET ?= micro_video

.PHONY: run test lint env clean

$(VENV)/.installed: setup.cfg pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) sh scripts/install.sh
	touch $@

env: $(VENV)/.installed

run: env
	$(PY) -m recbole_cmi run --model=$(MODEL) --dataset=$(DATASET)

test: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: env
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf saved log log_tensorboard ray_results bench_runs build dist *.egg-info
