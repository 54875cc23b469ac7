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

# The playground test drives Debian's chromium (with a CJK font for the translation panel); install them
# where apt can (as root), never fail where not.
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei) \
		|| echo "chromium unavailable: the browser test will skip"

test: install browser
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check app models training tests bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
