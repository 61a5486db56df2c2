# Two entry points, both self-contained on a fresh machine:
#   make test   create .venv if missing, install the project with its test extras, run pytest
#   make demo   the same set-up, then the main job on the bundled digits data
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.effvit-installed
EXTRAS ?= cpu,report,demo,test

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m effvit_deploy.pipeline $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
