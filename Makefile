# Entry points (see README): `make study` runs the embedded study end to end, `make test` runs
# the tests, `make lab` opens the notebooks in JupyterLab. Each creates .venv/ and installs the
# pinned dependencies first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PARAMS ?= params/tiny.yaml
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup study test lab clean-venv

setup: $(STAMP)

# torch is pinned in the same install command as everything else: the 2.13.0 CPU wheel on a
# CPU machine (any unpinned torch would pull a multi-GB CUDA build). The notebooks name the
# kernel registered here ("psr"), which runs this venv's Python.
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test,lab]"
	$(PY) -m ipykernel install --sys-prefix --name psr --display-name "psr (.venv)" >/dev/null
	rm -f $(VENV)/.installed-*
	touch $@

study: setup
	$(VENV)/bin/psr run $(PARAMS)

test: setup
	$(PY) -m pytest -q -m "not download" $(PYTEST_ARGS)

# the notebooks' parameters cells default to params/tiny.yaml; run `make study` first so each
# stage finds the models and data of the stages before it
lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
