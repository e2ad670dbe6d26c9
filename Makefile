# Two entry points (see README): `make study` runs the embedded study end to end, `make test`
# runs the tests. Both create .venv/ and install pinned dependencies first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PARAMS ?= params/tiny.yaml
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup study test clean-venv

setup: $(STAMP)

# torch is pinned in the same install command as everything else: the 2.13.0 CPU wheel on a
# CPU machine (any unpinned torch would pull a multi-GB CUDA build).
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name psr --display-name "psr (.venv)" >/dev/null
	rm -f $(VENV)/.installed-*
	touch $@

study: setup
	$(VENV)/bin/psr run $(PARAMS)

test: setup
	$(PY) -m pytest -q -m "not download" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
