"""Notebooks run in a real Jupyter kernel (ipykernel via nbclient), as readers rerun them in JupyterLab."""
import sys
from pathlib import Path
import nbformat, pytest
from nbclient import NotebookClient

NBS = Path(__file__).resolve().parent.parent / "nbs"

@pytest.mark.parametrize("name", ["index.ipynb", "00_config.ipynb", "12_cli.ipynb"])
def test_runs_in_jupyter_kernel(name, tmp_path):
    nb = nbformat.read(NBS / name, as_version=4)
    # The kernel is this interpreter's (the project's .venv), started by jupyter_client like JupyterLab does.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NBS)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    # The kernel ran the project's interpreter, not some other Python on the machine.
    check = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    NotebookClient(check, kernel_name="python3").execute()
    assert Path(check.cells[0].outputs[0]["text"].strip()).resolve().parent == Path(sys.executable).resolve().parent
