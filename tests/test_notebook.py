"""The notebook runs top to bottom, so it cannot rot."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a kernel plus a real model: over a minute on 2 cores
def test_frozen_features_notebook_executes(tmp_path):
  path = os.path.join(ROOT, "notebooks", "frozen_features.ipynb")
  nb = nbformat.read(path, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # saved clean
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("kNN top-1" in o.get("text", "") for o in outputs)
  assert (tmp_path / "neighbours.png").exists()
