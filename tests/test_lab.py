"""The notebooks by hand (`make lab`): every notebook names the kernel `make setup` registers, and
that kernel, started in notebooks/ as JupyterLab starts it, imports this psr and reads the
notebooks' default preset."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parent.parent
KERNEL = "psr"  # Makefile: ipykernel install --sys-prefix --name psr


def test_every_notebook_names_the_registered_kernel():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert nbformat.read(path, as_version=4).metadata.kernelspec.name == KERNEL, path.name


def test_the_registered_kernel_runs_a_notebook_on_the_default_preset(tmp_path):
    if KERNEL not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"kernel {KERNEL!r} is not registered (make setup registers it)")
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('params_path = "params/tiny.yaml"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        parameters,
        nbformat.v4.new_code_cell(
            "import json, os, psr\n"
            "from psr.study.context import load_params\n"
            "params = load_params(params_path)\n"
            "print(json.dumps({'psr': psr.__file__, 'cwd': os.getcwd(), 'digest': params.digest()}))"
        ),
    ]
    src, out = tmp_path / "probe.ipynb", tmp_path / "probe.out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(out), kernel_name=KERNEL, cwd=str(REPO / "notebooks"), progress_bar=False)
    text = nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"]
    seen = json.loads(text)
    assert Path(seen["psr"]).resolve().is_relative_to(REPO / "psr")
    assert Path(seen["cwd"]).resolve() == REPO
    assert seen["digest"] == "0d5aef836f456a71"  # params/tiny.yaml, as tests/test_config.py pins it
