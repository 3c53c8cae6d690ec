# One command sets everything up: `make setup`. Then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ASSETS ?= .assets
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := dataset-fashion-mnist tuxpaint-stamps-default openclipart-png slurm-wlm munge chromium
EMOJI  := emoji-datasource-google@16.0.0
PIP    := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: setup system-packages emoji test test-slow check-published leaderboard bench clean

setup: system-packages emoji $(VENV)/.installed

# The offline suite's data: Fashion-MNIST and Tux Paint from Debian, emoji from the npm registry.
system-packages:
	@dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(DEBIAN_PACKAGES) >/dev/null; }

emoji: $(ASSETS)/emoji-datasource-google/emoji.json

$(ASSETS)/emoji-datasource-google/emoji.json:
	mkdir -p $(ASSETS)/tmp
	cd $(ASSETS)/tmp && npm pack --silent $(EMOJI) >/dev/null && tar xzf emoji-datasource-google-*.tgz
	rm -rf $(ASSETS)/emoji-datasource-google && mv $(ASSETS)/tmp/package $(ASSETS)/emoji-datasource-google
	rm -rf $(ASSETS)/tmp

$(VENV)/.installed: requirements.txt requirements-nodeps.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-nodeps.txt
	$(PIP) --no-deps -e .
	touch $@

test: setup
	$(BIN)/python -m pytest -q
	$(BIN)/clipbench leaderboard --results results/published --check

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# rerun a sample of published runs from this checkout and compare every metric (run it before publishing)
check-published: setup
	$(BIN)/python -m clipbench.published --published results/published

# regenerate the published leaderboard after adding runs to results/published
leaderboard: setup
	$(BIN)/clipbench leaderboard --results results/published

bench: setup
	$(BIN)/clipbench bench --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
