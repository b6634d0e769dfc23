"""examples/colab_tpu.ipynb runs unchanged on this CPU (its tiny configuration) through a real Jupyter kernel."""

import os
import pathlib

import nbformat
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "examples" / "colab_tpu.ipynb"


def test_colab_tpu_notebook_runs_on_a_cpu(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    env_keys = ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR")
    saved = {key: os.environ.pop(key) for key in env_keys if key in os.environ}
    try:
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.update(saved)
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    assert "Strategy: one device" in text
    assert "policy mixed_bfloat16" in text
    assert "final loss" in text
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "exported" / "diffusion" / "1" / "saved_model.pb").exists()
