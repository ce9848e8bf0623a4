"""benchmarks/vs_reference.py refuses a missing or wrong reference checkout, and bad sizes, before it imports
PyTorch or JAX (the benchmark itself needs torch and the reference code, so it is run by hand)."""

import importlib.util
import os

import pytest

from conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("vs_reference", os.path.join(REPO, "benchmarks", "vs_reference.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def checkouts(tmp_path):
    ref, dpm = tmp_path / "score_sde_pytorch", tmp_path / "dpm-solver"
    for f in ("models/ncsnpp.py", "likelihood.py", "losses.py", "sde_lib.py"):
        (ref / f).parent.mkdir(parents=True, exist_ok=True)
        (ref / f).write_text("")
    dpm.mkdir()
    (dpm / "dpm_solver_pytorch.py").write_text("")
    return str(ref), str(dpm)


def test_missing_or_wrong_checkouts_are_named(tmp_path, checkouts):
    mod, (ref, dpm) = _module(), checkouts
    with pytest.raises(SystemExit, match=r"--reference='.*nowhere' does not exist; expected a checkout holding"):
        mod.parse_args([f"--reference={tmp_path / 'nowhere'}", f"--dpm-solver={dpm}"])
    os.remove(os.path.join(ref, "likelihood.py"))
    with pytest.raises(SystemExit, match=r"--reference=.* has no likelihood.py"):
        mod.parse_args([f"--reference={ref}", f"--dpm-solver={dpm}"])
    with pytest.raises(SystemExit, match=r"--reference=.*dpm-solver' has no models/ncsnpp.py, likelihood.py"):
        mod.parse_args([f"--reference={dpm}", f"--dpm-solver={ref}"])  # the two swapped
    open(os.path.join(ref, "likelihood.py"), "w").close()
    os.remove(os.path.join(dpm, "dpm_solver_pytorch.py"))
    with pytest.raises(SystemExit, match=r"--dpm-solver=.* has no dpm_solver_pytorch.py"):
        mod.parse_args([f"--reference={ref}", f"--dpm-solver={dpm}"])


def test_bad_options_and_no_heavy_imports(checkouts):
    mod, (ref, dpm) = _module(), checkouts
    with pytest.raises(SystemExit, match=r"--rounds must be >= 1; got 0"):
        mod.parse_args([f"--reference={ref}", f"--dpm-solver={dpm}", "--rounds=0"])
    with pytest.raises(SystemExit, match=r"unknown figure\(s\) \['fid'\]; expected some of: forward, train_step"):
        mod.parse_args([f"--reference={ref}", f"--dpm-solver={dpm}", "--only=forward,fid"])
    args = mod.parse_args([f"--reference={ref}", f"--dpm-solver={dpm}", "--only=likelihood"])
    assert args.figures == ["likelihood"] and args.device == "cpu" and args.size == "small"
    assert mod.SIZES["small"]["image_size"] == 16  # the CPU network of BENCHMARKS.md
