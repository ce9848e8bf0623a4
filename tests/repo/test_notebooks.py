"""Executes every notebook in ``experiments/`` top to bottom with ``SCORESDE_SMALL=1`` (CPU-sized runs).

Each notebook runs in a fresh Jupyter kernel of *this* interpreter (a kernelspec written to a temporary
``JUPYTER_PATH``, so a fresh CI venv needs no ``ipykernel install``), with its working directory, its runs
(``SCORESDE_RUNS``) and every file it writes under pytest's temporary directory; a cell that raises fails
the test with the cell's traceback. The notebooks share one runs directory in this module, in the order
below, so likelihood and controllable reuse the digits model quickstart trained (each still trains what it
needs when run alone).
"""

import json
import os
import sys
import time

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = REPO
EXPERIMENTS = os.path.join(ROOT, "experiments")
NOTEBOOKS = ["quickstart", "likelihood", "controllable", "pretrained"]
KERNEL = "scoresde-test-python"
TIMEOUT_PER_CELL = 600


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """A kernelspec for ``sys.executable`` and the environment every notebook kernel inherits."""
    base = tmp_path_factory.mktemp("notebooks")
    spec_dir = base / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "scoresde tests",
                "language": "python",
            }
        )
    )
    env = {
        "JUPYTER_PATH": str(base / "jupyter"),
        "SCORESDE_SMALL": "1",
        "SCORESDE_RUNS": str(base / "runs"),
        "SCORESDE_ROOT": ROOT,
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in experiments/: nothing is written into the repository
    }
    return base, env


def _outputs_text(nb):
    lines = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines.append(out.get("text", ""))
    return "".join(lines)


@pytest.mark.slow  # ~2.5 min of CPU for the four: outside the 15-minute default run (pytest -m slow)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, notebook_env, monkeypatch, capsys):
    base, env = notebook_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = os.path.join(EXPERIMENTS, f"{name}.ipynb")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name}.ipynb is committed with outputs; clear them (outputs belong to a run, not to the repository)"
    )
    cwd = base / f"cwd_{name}"
    cwd.mkdir()
    before = sorted(os.listdir(EXPERIMENTS))
    # Appended to the in-memory copy only: the kernel's CPU time, a load-independent measure of the cost.
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import resource as _r; _u = _r.getrusage(_r.RUSAGE_SELF)\n"
            "print(f'KERNEL_CPU_S={_u.ru_utime + _u.ru_stime:.1f}')"
        )
    )
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=TIMEOUT_PER_CELL, resources={"metadata": {"path": str(cwd)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{name}.ipynb: a cell raised:\n{e}")
    elapsed = time.perf_counter() - start
    text = _outputs_text(nb)
    assert "SCORESDE_SMALL = True" in text, f"{name}.ipynb did not run in small mode:\n{text[:2000]}"
    cpu = text.rsplit("KERNEL_CPU_S=", 1)[-1].split()[0] if "KERNEL_CPU_S=" in text else "?"
    with capsys.disabled():
        print(f"\n  {name}.ipynb executed in {elapsed:.1f} s wall, {cpu} s kernel CPU (SCORESDE_SMALL=1)")
    assert sorted(os.listdir(EXPERIMENTS)) == before, f"{name}.ipynb wrote into experiments/"
