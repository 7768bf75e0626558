"""Executes every notebook in notebooks/ headless and fails on any cell error.

Each notebook runs in a fresh kernel of the interpreter running the tests
(a kernelspec written to a temporary folder, so that a ``python`` on the PATH
that is not this one cannot be picked up), with the notebook's folder as the
working directory, as in Jupyter. Committed notebooks must have no outputs.
"""

import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "byzjax-tests"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A kernelspec for ``sys.executable`` and the environment to run it in."""
  root = tmp_path_factory.mktemp("jupyter")
  kernelspec.write_kernel_spec(root / "kernels" / KERNEL_NAME,
                               overrides={"display_name": "byzjax tests"})
  spec = root / "kernels" / KERNEL_NAME / "kernel.json"
  assert sys.executable in spec.read_text()
  env = dict(os.environ)
  # tests/conftest.py asks XLA for 8 emulated devices; notebooks get the
  # machine as a user would.
  env.pop("XLA_FLAGS", None)
  env["JUPYTER_PATH"] = os.pathsep.join(
      [str(root)] + ([env["JUPYTER_PATH"]] if env.get("JUPYTER_PATH") else []))
  env.setdefault("MPLBACKEND", "agg")
  return env


def _execute(path: pathlib.Path, env: dict, monkeypatch):
  # The kernelspec is looked up in this process, the kernel started with env.
  monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME, allow_errors=False,
      resources={"metadata": {"path": str(path.parent)}})
  client.execute(env=env)  # raises CellExecutionError on the first error
  return nb


def _outputs(nb, output_type=None):
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if output_type is None or out.output_type == output_type:
        yield out


def test_there_are_notebooks():
  assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, f"{path.name} has no code cells"
  dirty = [i for i, c in enumerate(code)
           if c.get("outputs") or c.get("execution_count") is not None]
  assert not dirty, (f"{path.name}: code cells {dirty} have outputs; clear "
                     "them before committing")


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_without_errors(path, kernel_env, monkeypatch):
  nb = _execute(path, kernel_env, monkeypatch)
  errors = list(_outputs(nb, "error"))
  assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)

  if path.name == "quickstart.ipynb":
    # The story the notebook tells must hold: the mean is broken by the
    # attack, the robust aggregators are not.
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    assert "geometric_median" in text and "coordinate_median" in text
    tables = [o.data["text/markdown"] for o in _outputs(nb, "display_data")
              if "text/markdown" in o.get("data", {})]
    assert len(tables) == 1
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in tables[0].splitlines()[2:]}
    assert rows["mean"].startswith("diverged")
    for name in ("geometric_median", "spectral_filter"):
      assert float(rows[name].split("±")[0]) < 0.05, (name, rows[name])
    assert any("image/png" in o.get("data", {})
               for o in _outputs(nb, "display_data"))


@pytest.mark.slow  # end-to-end or many compilations; run with -m slow
def test_a_failing_cell_fails_the_run(tmp_path, kernel_env, monkeypatch):
  """The harness itself: an error in any cell must surface as a failure."""
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_code_cell("x = 1"),
              nbformat.v4.new_code_cell("raise ValueError('boom')"),
              nbformat.v4.new_code_cell("y = 2")]
  path = tmp_path / "broken.ipynb"
  nbformat.write(nb, path)
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="boom"):
    _execute(path, kernel_env, monkeypatch)
