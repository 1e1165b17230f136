# confide — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo test lint typecheck unit bench clean image image-local image-debs test-image

all: test

# Debian packages the tests use: a PostgreSQL server (a throwaway cluster per test session),
# FUSE (protected-volume mounts, fake quote devices), skopeo + docker-registry + busybox-static
# (sconify against a real local registry and a real static binary), swtpm + swtpm-tools (a real
# TPM 2.0 emulator for the runtime's vTPM client), chromium (the web page's browser tests, driven
# by PyPI's playwright through this executable: Playwright downloads no browser; with its
# dependencies about 134 MB to download, 420 MB installed, 47 s on a 2-vCPU machine).
DEBS := postgresql fuse3 libfuse3-3 libfuse2 skopeo busybox-static docker-registry runc umoci swtpm swtpm-tools chromium
APT_MARK := $(VENV)/.debs

# Re-checked when this Makefile changes, so a package added to DEBS reaches existing venvs.
$(APT_MARK): Makefile
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) || \
	  echo "warning: could not install$$missing; the tests that need them will skip"; \
	fi
	@mkdir -p $(VENV) && touch $(APT_MARK)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { apt-get update && apt-get install -y python3 python3-venv; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv && $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m confide.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# The tests run in parallel processes (pytest-xdist), one per CPU up to four: most tests wait on
# child processes (a CAS, the confide CLI), sockets and fsync, so one process leaves the CPUs
# idle. Each process starts its own PostgreSQL cluster. `--dist load` sends tests by index: the
# scope-based modes (loadscope, loadfile, loadgroup) key tests by node id and would run only one
# of the schemathesis cases, which share theirs. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= auto

# The sources are compiled first: with PYTHONDONTWRITEBYTECODE set (as on some CI machines) every
# `confide` child process of the tests would otherwise compile them again (~1.7 s of CPU per CAS start).
unit: $(STAMP) $(APT_MARK)
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --maxprocesses=4 --dist load --cov=confide --cov-report=term --cov-report=xml:coverage.xml --durations=25

test: lint typecheck unit

# The container image (docs/deploy.md "The image"), with podman from Debian: `image` builds it
# FROM python:3.11-slim-bookworm (Docker Hub must be reachable), `image-local` FROM a Debian
# bookworm base made here from Debian's packages (mmdebstrap; no container registry needed).
# `test-image` builds it that way and runs the manifests' containers from it
# (tests/integration/test_deploy.py, CONFIDE_TEST_IMAGE=1): not part of `make test`, which skips
# those tests.
IMAGE_DEBS := podman mmdebstrap

image-debs:
	@missing=""; for p in $(IMAGE_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

image: image-debs
	deploy/container/build.sh

image-local: image-debs
	deploy/container/build.sh --local-base

test-image: $(STAMP) image-debs
	CONFIDE_TEST_IMAGE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/integration/test_deploy.py -k image_

bench: $(STAMP)
	$(BIN)/python bench/verify_dcap.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache coverage.xml .coverage
