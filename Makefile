# Two commands do all the set-up on a fresh machine:
#   make run    the main job (installs into .venv on first use)
#   make test   the test suite (same)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export FLWR_DISABLE_UPDATE_CHECK = 1
export FLWR_TELEMETRY_ENABLED = 0

.PHONY: run console demo test test-fast test-slow bench bench-step compare clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing else can pull a different build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The main job: a Flower simulation (4 clients) on the embedded `shapes` data, offline.
# FLWR_HOME stays inside the project so a user's own ~/.flwr is left alone.
run: $(STAMP)
	FLWR_HOME="$(CURDIR)/.flwr" $(PY) -m simulations.flwr_run --num-supernodes 4 \
		--run-config "output-dir='$(CURDIR)/outputs'"

# The operator console over outputs/ and the local SuperLink of `make run`:
# open http://127.0.0.1:8050/ (Ctrl-C stops it; the runs go on).
console: $(STAMP)
	FLWR_HOME="$(CURDIR)/.flwr" $(PY) -m server.console.cli --runs-dir "$(CURDIR)/outputs" --superlink local

demo: $(STAMP)
	$(PY) -m simulations.demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not deployment and not console"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m simulations.bench.obfuscation

bench-step: $(STAMP)
	$(PY) -m simulations.bench.step

# VisualMixer vs DP-SGD on the embedded data (docs/results/README.md has the CIFAR-10 run).
compare: $(STAMP)
	FLWR_HOME="$(CURDIR)/.flwr" $(PY) -m simulations.compare --preset quick --out $(CURDIR)/outputs/compare

clean:
	rm -rf $(VENV) outputs .pytest_cache
