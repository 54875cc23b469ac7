# Two commands set everything up on a fresh machine:
#   make serve   venv, install (with the train extra), train missing default checkpoints (quick profile), serve on HOST:PORT
#   make test    install what the tests need (the dev extra), then run them
#   make docker-test   build the image with the tiny profile, run it, check it (needs a Docker engine)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
CHECKPOINT_DIR ?= checkpoints
PROFILE ?= quick
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev checkpoints serve browser test lint bench docker-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Serving and training, no test tools.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[train]"
	touch $@

# The dev extra includes the train extra.
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

checkpoints: install
	$(PY) -m training all --profile $(PROFILE) --missing --out $(CHECKPOINT_DIR)

serve: checkpoints
	CHECKPOINT_DIR=$(CHECKPOINT_DIR) HOST=$(HOST) PORT=$(PORT) $(PY) -m app

# The playground test drives Debian's chromium, with a CJK font for the translation panel: installed with apt
# (as root) when missing; where that cannot be done, stop and say what to install.
BROWSER_PACKAGES := chromium fonts-wqy-zenhei
browser:
	@if command -v chromium >/dev/null && fc-list :lang=zh family | grep -q .; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "make test: the browser test needs Debian's chromium and a CJK font; apt-get is not available here," \
			"so install chromium and a CJK font ($(BROWSER_PACKAGES) on Debian) by hand" >&2; exit 1; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make test: the browser test needs $(BROWSER_PACKAGES); run 'sudo apt-get install $(BROWSER_PACKAGES)'" \
			"or run make test as root" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES) \
		|| { echo "make test: apt-get could not install $(BROWSER_PACKAGES) (see its message above)" >&2; exit 1; }

test: install-dev browser
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check app models training tests bench

docker-test:
	bash docker/test.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
