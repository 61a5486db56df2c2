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

# The environment takes about 7 GiB (PyTorch's CUDA wheels alone 5.5 GiB): check the disk first so a
# full disk is one clear line, not pip's "No space left on device" halfway through an install.
MIN_FREE_GIB ?= 8

$(STAMP): pyproject.toml
	@free_kib=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	if [ "$$free_kib" -lt $$(( $(MIN_FREE_GIB) * 1024 * 1024 )) ] && [ ! -x $(PY) ]; then \
		echo "error: $$(( free_kib / 1024 / 1024 )) GiB free here; creating $(VENV) needs about $(MIN_FREE_GIB) GiB (free space, or set MIN_FREE_GIB to override)" >&2; \
		exit 1; \
	fi
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
