# GameRec: every target runs from the project root. `make install` first.
VENV ?= .venv
PY := $(VENV)/bin/python
GAMEREC := $(VENV)/bin/gamerec
SHARED := ../shared/data
# The quick start's data set and training budget (measured in README, "Quick start").
QUICK_USERS := 8000
QUICK_GAMES := 1500
QUICK_TRAIN := train.epochs=20

.PHONY: install synth steam train index evaluate serve build dashboard test test-fast lint quickstart \
	image image-smoke

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

synth: install
	$(GAMEREC) data synth

steam: install
	$(GAMEREC) data steam200k --plays $(SHARED)/steam-200k-play.csv --games $(SHARED)/steam-games.parquet

train: install
	$(GAMEREC) train

index: install
	$(GAMEREC) index --type $(or $(TYPE),hnsw)

evaluate: install
	$(GAMEREC) evaluate

serve: install
	$(VENV)/bin/bentoml serve service:GameRec --port $(or $(PORT),3000)

dashboard: install
	$(VENV)/bin/streamlit run dashboard/app.py

build: install
	$(VENV)/bin/bentoml build

# Container image with buildah on a local Debian base image, no Docker daemon or registry
# (root; apt-get install buildah mmdebstrap). BENTO=name:version containerizes that Bento
# instead of building one; IMAGE=... smoke-tests another image. See README "Container image".
image: install
	BENTOML=$(VENV)/bin/bentoml PYTHON=$(PY) scripts/image.sh build $(BENTO)

image-smoke: install
	BENTOML=$(VENV)/bin/bentoml PYTHON=$(PY) scripts/image.sh smoke $(IMAGE)

# The README's first command: a small synthetic data set, a short training run (the quick
# start's only: `make synth train` is the full default), save to the model store, serve.
quickstart: install
	$(GAMEREC) data synth --users $(QUICK_USERS) --games $(QUICK_GAMES)
	$(GAMEREC) train $(foreach s,$(QUICK_TRAIN),--set $(s))
	$(VENV)/bin/bentoml serve service:GameRec --port $(or $(PORT),3000)

# Every tier, in two processes (one a core; a test file stays in one), the 15 slowest tests
# named at the end: what CI runs. Files in collection order (tests/e2e first), not xdist's
# default of the most tests first: that started the one-test image build (4 min cold) last,
# after everything else, and the run waited for it alone.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Unit tests and the integration tests that start no server.
test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile tests/unit tests/integration -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
