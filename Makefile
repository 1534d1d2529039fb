# The two commands of the README: `make train` (the main job) and `make test` (the whole suite).
# Both create .venv and install everything on first use; no network beyond the package registries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test install clean

$(STAMP): setup.cfg pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) scripts/main_job.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) build src/*.egg-info
