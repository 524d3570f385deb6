# One-command set-up and the project's main entry points.
#   make setup   .venv with the project and its dev extras, system packages where possible, verified data
#   make test    lint, then the whole test suite (runs setup first when needed)
#   make run     the research loop on the embedded defaults (resumes if interrupted)
#   make bench   the benchmarks under benchmarks/

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PYTHON ?= python3

.PHONY: setup system-packages data lint test run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(MAKE) system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,postgres]"
	$(MAKE) data
	touch $(STAMP)

# bubblewrap isolates candidates; Debian ships Fashion-MNIST; headless chromium lets the tests look at the Prefect UI
# and the HTML report; PostgreSQL's server binaries let the tests run the store and the Prefect server on a private
# cluster. All need root and apt-get: skipped politely otherwise.
system-packages:
	@missing=""; \
	command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	test -d /usr/share/datasets/fashion-mnist || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then echo "system packages: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system packages: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || \
		echo "system packages: apt-get failed; continuing (no isolation without bubblewrap; data will be downloaded; browser and PostgreSQL tests skip)"; \
	else echo "system packages: skipping$$missing (needs root and apt-get): without bubblewrap candidates run unisolated; data is downloaded instead; browser tests skip without chromium"; fi

data:
	$(PY) prepare.py

# ruff: lint (pyflakes, pycodestyle, import order) and the formatter's check, line length 120 (pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# two workers: the process-driven tests (SIGKILLed runs and servers, mostly waiting) beside all the others,
# which keep one worker to themselves as before (tests/conftest.py puts each test in its lane); then the tests
# that compare a candidate's work on a quiet and a busy machine, with nothing of the suite beside them
test: setup lint
	$(PY) -m pytest -n 2 --dist loadgroup -m "not alone"
	$(PY) -m pytest -m alone

run: setup
	$(VENV)/bin/autoresearch run

bench: setup
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/hostile_output.py
	$(PY) benchmarks/fairness.py --all-cores
	$(PY) benchmarks/allowances.py
	$(PY) benchmarks/decision_power.py

clean:
	rm -rf $(VENV) *.egg-info
