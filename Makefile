# Entry points, each self-contained on a fresh machine:
#   make test        create .venv if missing, install the project with its test extras, run pytest
#   make test-fast   the inner loop: every test not marked slow or browser (under a minute)
#   make demo        the same set-up, then the main job: the attention-swap study on cluttered digits
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.effvit-installed
EXTRAS ?= cpu,report,demo,test

.PHONY: test test-fast demo venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m effvit_deploy.pipeline $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
