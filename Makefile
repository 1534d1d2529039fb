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

# The demo page's browser test drives the system's Chromium (playwright's own browser download cannot be reached).
# Where root and apt-get allow it (CI), Chromium is installed here and the test is required: a failed install stops
# the run, and a skipped browser test fails it. Elsewhere the test is skipped, its message saying how to get Chromium.
CAN_INSTALL_BROWSER := $(shell command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && echo 1)

browser:
ifeq ($(CAN_INSTALL_BROWSER),1)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || (apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
endif

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 HF_DEIT_REQUIRE_BROWSER=$(CAN_INSTALL_BROWSER) $(PY) -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) build src/*.egg-info
