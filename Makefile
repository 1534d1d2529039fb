# The two commands of the README: `make train` (the main job) and `make test` (the whole suite).
# Both create .venv and install everything on first use; no network beyond the package registries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test install clean browser test-versions test-oldest test-newest

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

# The ends of the ranges setup.cfg declares: the fast suite in an environment of the oldest releases they allow
# (requirements-oldest.txt) and in one of the newest (pip's choice within the ranges, upgraded on every run). The rest
# of the dev stack is requirements-dev.txt's, less the packages named in the pins file.
OLDEST_VENV ?= .venv-oldest
NEWEST_VENV ?= .venv-newest
RANGED := torch torchvision transformers datasets accelerate evaluate huggingface-hub safetensors pillow numpy
FAST_SUITE = HF_HUB_OFFLINE=1 $(1)/bin/python -m pytest -m "not slow" -n 2 -p no:cacheprovider
# $(1): venv, $(2): the names its own pins replace in requirements-dev.txt
define dev_stack_without
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	grep -v -i -E "^($(shell echo $(2) | tr ' ' '|'))==" requirements-dev.txt > $(1)/dev-stack.txt
endef
# The checked versions, for the log
SHOW_RANGED = $(1)/bin/python -c "from importlib.metadata import version; print(*(n + '==' + version(n) for n in '$(RANGED)'.split()))"

$(OLDEST_VENV)/.installed: setup.cfg pyproject.toml requirements-dev.txt requirements-oldest.txt
	$(call dev_stack_without,$(OLDEST_VENV),$(shell sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' requirements-oldest.txt))
	$(OLDEST_VENV)/bin/python -m pip install --quiet -r requirements-oldest.txt -r $(OLDEST_VENV)/dev-stack.txt
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(OLDEST_VENV)/bin/python -m pip check
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(call SHOW_RANGED,$(OLDEST_VENV))
	$(call FAST_SUITE,$(OLDEST_VENV))

test-newest:
	$(call dev_stack_without,$(NEWEST_VENV),$(RANGED))
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -r $(NEWEST_VENV)/dev-stack.txt -e .
	$(NEWEST_VENV)/bin/python -m pip check
	$(call SHOW_RANGED,$(NEWEST_VENV))
	$(call FAST_SUITE,$(NEWEST_VENV))

test-versions: test-oldest test-newest

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(NEWEST_VENV) build src/*.egg-info
