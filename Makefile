# The two commands of the README: `make train` (the main job) and `make test` (the whole suite).
# Both create .venv and install everything on first use; no network beyond the package registries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test install clean browser

$(STAMP): setup.cfg pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) scripts/main_job.py

# The demo page's browser test drives the system's Chromium (playwright's own browser download cannot be reached):
# installed here where apt-get and root allow it, else that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || ! command -v apt-get >/dev/null \
		|| [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium >/dev/null) || echo "Chromium could not be installed: the demo's browser test will be skipped."

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) build src/*.egg-info
