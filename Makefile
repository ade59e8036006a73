# The two commands of the README: `make demo` (set up + offline demo) and `make test` (set up + all tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps demo demo-engine test test-fast lint

setup:
	MODELRIG_VENV=$(VENV) bash scripts/bootstrap.sh

system-deps:
	bash scripts/system-deps.sh

# The offline demo through the real Ansible path (site.yml on this machine); a second run reports changed=0.
demo: setup
	MODELRIG_VENV=$(VENV) bash scripts/demo-ansible.sh

# The same demo through the engine alone (`modelrig demo`).
demo-engine: setup
	$(VENV)/bin/modelrig demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks library module_utils
	$(VENV)/bin/modelrig -q validate

# Two workers, each test file on one of them: most slow tests wait on servers, SSH hosts and subprocesses, so two
# files at a time took 25 minutes on a 2-core machine where one after the other took 51; the slowest tests are
# listed at the end.
test: setup system-deps lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

# While working: lint and the unit tests (no real envs, servers or whole pipelines), about a minute.
test-fast: setup lint
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"
