# Two commands set up a fresh machine: `make run` and `make test`. Both install from the
# committed lock (requirements.txt, requirements-test.txt: hash-checked, --no-deps): nothing is resolved at install
# time, so every machine gets the same files. `make lock` is the only step that resolves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make test LINT=` runs the tests without linting first.
LINT ?= lint

# uv resolves, pip installs: a pinned uv in a venv of its own, so a lock depends on its inputs,
# not on whichever uv someone has. Universal: one lock for x86_64 and aarch64 Linux alike.
UV_VERSION := 0.13.9
LOCK_VENV := .venv-lock
# `make lock LOCK_ARGS=` keeps today's pins where they still fit (to add a dependency only).
LOCK_ARGS ?= --upgrade
COMPILE := $(LOCK_VENV)/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	--custom-compile-command 'make lock' $(LOCK_ARGS) pyproject.toml requirements-build.in

.PHONY: run test lint install lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per lock, so a changed lock or pyproject.toml installs again. The editable install
# builds with the locked setuptools (--no-build-isolation), so it fetches nothing either.
define install_lock
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $<
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@
endef

$(VENV)/.installed-run: requirements.txt pyproject.toml | $(BIN)/python
	$(install_lock)

$(VENV)/.installed-test: requirements-test.txt pyproject.toml | $(BIN)/python
	$(install_lock)

# The test lock holds the run lock at the same versions: once it is in, `make run` keeps it.
RUN_STAMP := $(if $(wildcard $(VENV)/.installed-test),$(VENV)/.installed-test,$(VENV)/.installed-run)

install: $(VENV)/.installed-test

run: $(RUN_STAMP)
	$(BIN)/stanch up $(ARGS)

# One pytest worker per core (pytest-xdist); the tests that need `stanch up`'s default ports
# share one worker (tests/e2e/processes.py: DEFAULT_PORTS). `make test XDIST=` runs serially.
XDIST ?= -n auto --dist loadgroup
test: $(LINT) $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check
	$(BIN)/ruff check
	$(BIN)/mypy  # the packages in [tool.mypy]: stanch, workflows, activities, workers

$(LOCK_VENV)/.uv-$(UV_VERSION):
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	touch $@

# Resolves on purpose (upgrading to the newest releases pyproject.toml allows); the run lock
# takes the test lock as constraints, so both hold the same versions. pylock.toml (PEP 751) is the
# same resolution in the standard lock format, for tools that read it; pip installs from the .txt locks.
lock: $(LOCK_VENV)/.uv-$(UV_VERSION)
	$(COMPILE) --extra test -o requirements-test.txt
	$(COMPILE) -c requirements-test.txt -o requirements.txt
	$(COMPILE) --extra test -c requirements-test.txt --format pylock.toml -o pylock.toml

clean:
	rm -rf $(VENV) $(LOCK_VENV)
