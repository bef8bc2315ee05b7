# One-command setup and tests. `make test` creates .venv if missing, installs the project with its dev extra
# (only when pyproject.toml changed since the last install), and runs the whole pytest suite (what CI runs).
# `make test-fast` runs the unit tests only: no Ray cluster, no S3 server, nothing under tests/jobs or tests/infra
# (the `integration` marker, set in tests/conftest.py), and no test marked `slow` (a minute or more on 2 cores);
# also in two pytest processes side by side.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hmhi-installed

# Keep Ray on loopback and keep SDKs away from cloud metadata services (see docs/environment.md).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export AWS_EC2_METADATA_DISABLED := true
# Python's default: the project's modules are compiled once, not again in every process that imports them (the
# suite starts hundreds: Ray workers, actors, job subprocesses). __pycache__/ is ignored by git and by Ray's
# working-dir upload.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: test test-fast soak install lint demo

# Two pytest processes side by side, the tests that mostly wait beside those that compute (tests/parallel.py says
# why and how they are kept apart); with test paths in PYTEST_ARGS, one pytest process runs just those.
test: $(STAMP)
	$(PY) -m tests.parallel $(PYTEST_ARGS)

# The unit tests (tests/parallel.py's FAST_SELECTION), in two pytest processes side by side as well.
test-fast: $(STAMP)
	$(PY) -m tests.parallel --fast $(PYTEST_ARGS)

# The fault and race tests with their full trial counts (tests.conftest.SOAK): before a release, or after a change to
# the lease, the fence or the commit protocol.
soak: $(STAMP)
	HMHI_SOAK=1 $(PY) -m pytest tests/faults $(PYTEST_ARGS)

install: $(STAMP)

# The whole pipeline on a synthetic corpus, on the CPU, with the installed command (hmhi-uvos demo --help for its
# options). STORAGE=s3://bucket/prefix runs it against S3 (AWS_ENDPOINT_URL for any S3-compatible server).
STORAGE ?= runs/demo
demo: $(STAMP)
	$(VENV)/bin/hmhi-uvos demo --storage $(STORAGE) $(DEMO_ARGS)

# Lint: ruff's checks and formatting, the import layers (docs/architecture.md; contracts in pyproject.toml) and
# mypy on model/ and the kernel. CI runs it before the tests (.ci/run); pre-commit runs the same tools.
LINT_PATHS := pipeline model jobs tests bench infra
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	touch $(STAMP)
