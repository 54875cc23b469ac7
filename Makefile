# Two commands set everything up on a fresh machine:
#   make serve   venv, install, train missing default checkpoints (quick profile), serve on HOST:PORT
#   make test    install what the tests need, then run them
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
CHECKPOINT_DIR ?= checkpoints
PROFILE ?= quick
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install checkpoints serve browser test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

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

test: install browser
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check app models training tests bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
