# The README's two commands: `make run` (the main job on the embedded defaults) and
# `make test` (the whole suite). Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE ?= ./feature-store
IMAGE_SIZE ?= 64
LIMIT ?= 10000
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test check lint install data benchmark serve docs

$(BIN)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

data:
	@if [ -d "$${TRANSFER_PIPE_FASHION_MNIST:-$(FASHION_MNIST)}" ]; then exit 0; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get install -y dataset-fashion-mnist \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist); \
	else \
		echo "Fashion-MNIST is missing: install Debian's dataset-fashion-mnist, or download" \
		     "its IDX files into a folder and set TRANSFER_PIPE_FASHION_MNIST=/that/folder."; \
		exit 1; \
	fi

# Embeds Fashion-MNIST (LIMIT=all: all 70,000 images), fits every head on the cached
# features and prints the report; a rerun embeds nothing.
run: install data
	$(BIN)/transfer-pipe train fashion-mnist --store $(STORE) --image-size $(IMAGE_SIZE) \
		$(if $(filter all,$(LIMIT)),,--limit $(LIMIT))
	$(BIN)/transfer-pipe ls --store $(STORE)
	$(BIN)/transfer-pipe heads ls --store $(STORE)

# A Prefect server with the UI, the work pools, the deployments of deploy/prefect.yaml and
# a worker, in the foreground until Ctrl-C; other transfer-pipe commands then run against it.
serve: install
	$(BIN)/transfer-pipe serve --store $(STORE)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Tests run on three pytest-xdist workers: the suite waits on servers, schedules and
# processes much of the time (one worker mostly waits on the serve stack's runs). The tests
# of one shared stack (serve, the shared Dask cluster) stay in one worker, so it starts
# once. Both print the 15 slowest tests.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15
# What the check tier leaves out: every test that needs one of these resources.
RESOURCES := serve or cluster or kill or s3 or browser or real_data or postgres

# The whole suite: what CI runs.
test: install data lint
	$(PYTEST)

# The fast tier (about 3 minutes): lint, unit, contract and the in-process end-to-end
# tests on the session's Prefect harness.
check: install lint
	$(PYTEST) -m "not ($(RESOURCES))"

# Every row of the "Fast where it counts" table (docs/pages/benchmarks/index.md), each
# script measuring side by side in one run (ratios; this machine is shared), results in
# benchmarks/results/*.json; then the docs' benchmark tables are rebuilt from those results.
# The GPU rows run where a CUDA GPU is present (benchmarks/gpu.sh), else stay "not measured".
benchmark: install data
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/nightly.py            # a night costs what changed: 8 nights via the CLI
	$(BIN)/python benchmarks/storage_designs.py    # Icechunk vs appended Zarr + Parquet, storage only
	$(BIN)/python benchmarks/embed_throughput.py   # CLI embed / raw, steady, warm rerun, memory 10k vs 70k
	$(BIN)/python benchmarks/run_phases.py         # where a cold and a warm CLI run spend their time
	$(BIN)/python benchmarks/autocast_cpu.py       # a bfloat16 forward pass on the CPU against float32
	$(BIN)/python benchmarks/feeding.py            # decode/resize/normalise rate beside the raw forward
	$(BIN)/python benchmarks/photos.py             # photos: feed per core by size and format, DCT decode's effect
	$(BIN)/python benchmarks/probe_walk.py         # the probe's C walk / the embed
	$(BIN)/python benchmarks/sweep.py              # the transferability sweep / one embed
	$(BIN)/python benchmarks/taps.py               # the default top taps against the penultimate alone
	$(BIN)/python benchmarks/store_layout.py       # objects and requests per feature set
	$(BIN)/python benchmarks/capacity.py           # bytes per image per layer and dtype: deploy/SCALING.md
	$(BIN)/python benchmarks/pipeline_rerun.py --limit $(LIMIT) --image-size $(IMAGE_SIZE)
	if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then bash benchmarks/gpu.sh; fi
	$(BIN)/python benchmarks/tables.py            # the docs' tables from the new results

# The documentation site (docs/mkdocs.yml, pages in docs/pages/) into docs/site/, strictly:
# a broken link or a missing page fails the build. The tables must match their results.
docs: install
	$(BIN)/python benchmarks/tables.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --config-file docs/mkdocs.yml
