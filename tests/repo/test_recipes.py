"""docs/recipes.md against the CIFAR-10 configs: every recipe has its section, and every table row that names a
config path states the value the config really has."""

import ast
import glob
import importlib.util
import os
import re

import pytest

from scoresde import build

from conftest import REPO, config_module

DOC = os.path.join(REPO, "docs", "recipes.md")
COLUMNS = ["field", "config path", "project", "official", "source", "note"]


def _sections() -> dict[str, dict]:
    """``{config name: {"text": the section, "rows": [dict of COLUMNS]}}`` of docs/recipes.md."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    out = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        lines = [ln for ln in body.splitlines() if ln.startswith("|")]
        assert lines, f"docs/recipes.md section {name!r} has no table"
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header == COLUMNS, f"section {name!r}: columns {header}, expected {COLUMNS}"
        rows = []
        for ln in lines[2:]:
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            assert len(cells) == len(COLUMNS), f"section {name!r}: row {ln!r} has {len(cells)} cells"
            rows.append(dict(zip(COLUMNS, cells, strict=True)))
        out[name.strip()] = {"text": body, "rows": rows}
    return out


SECTIONS = _sections()
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "cifar10_*.py")))


def _field(config, path):
    node = config
    for key in path.split("."):
        if key not in node:
            raise KeyError(f"config has no field {path!r}")
        node = node[key]
    return node


def _literal(cell):
    m = re.fullmatch(r"`(.+)`", cell)
    assert m, f"project cell {cell!r} of a row with a config path must be one `literal`"
    return ast.literal_eval(m.group(1))


def _same(a, b):
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def test_every_cifar10_config_has_a_section_and_every_section_a_config():
    assert CONFIGS, "no configs/cifar10_*.py found"
    assert sorted(SECTIONS) == CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_project_column_is_the_config(name):
    config = build.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    section = SECTIONS[name]
    assert re.search(r"^Official: \S", section["text"], flags=re.M), f"{name}: no 'Official:' line"
    assert re.search(r"^Reported: \S", section["text"], flags=re.M), f"{name}: no 'Reported:' line"
    checked = 0
    for row in section["rows"]:
        assert row["field"] and row["official"] and row["source"], f"{name}: incomplete row {row}"
        if row["config path"] == "—":
            continue
        value = _field(config, row["config path"])
        expected = _literal(row["project"])
        assert _same(expected, value), f"{name}: {row['config path']} is {value!r}, docs/recipes.md says {expected!r}"
        checked += 1
    assert checked >= 5, f"{name}: only {checked} rows name a config path"


@pytest.mark.parametrize("name", CONFIGS)
def test_deviations_are_stated_in_the_config_docstring(name):
    deviations = [r["field"] for r in SECTIONS[name]["rows"] if r["note"].startswith("**deviation**:")]
    if deviations:
        doc = config_module(name).__doc__ or ""
        assert "deviation" in doc.lower(), f"{name}: docs/recipes.md lists deviations {deviations}; its docstring none"


def test_the_comparison_catches_a_wrong_value():
    """The check is not vacuous: a float, a tuple and a bool that differ from the table are caught."""
    assert not _same(4e-4, 4.0e-3) and not _same((1, 2, 2), (1, 2, 2, 2)) and not _same(True, 1)
    assert _same((2, 2, 2), [2, 2, 2]) and _same(0.0, 0.0)


def _gpu_recipes():
    spec = importlib.util.spec_from_file_location("gpu_recipes", os.path.join(REPO, "benchmarks", "gpu_recipes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_recipe_has_one_command_that_reproduces_it():
    """benchmarks/gpu_recipes.py knows every CIFAR-10 recipe; its steps name existing configs and modes, the runs
    a recipe starts from come first, and the last step is FID over three seeds (EDM's protocol)."""
    from scoresde import main

    gpu = _gpu_recipes()
    assert sorted(gpu.RECIPES) == CONFIGS
    for name in CONFIGS:
        cmds = gpu.commands(name, runs="R")
        flags = [dict(a[2:].split("=", 1) for a in c[3:] if a.startswith("--") and "=" in a) for c in cmds]
        for f in flags:
            assert os.path.exists(os.path.join(REPO, f["config"])), f
            assert f["mode"] in main.MODES, f
        modes = [f["mode"] for f in flags]
        if name in gpu.NO_FID:
            assert modes[-1] == "train_autoencoder"
        else:
            assert modes[-2:] == ["fid_stats", "fid"] and flags[-1]["config.eval.fid_seeds"] == "3"
        for need in gpu.RECIPES[name][1]:  # a teacher / autoencoder / score model is trained before it is used
            first_use = next(i for i, f in enumerate(flags) if f["config"] == f"configs/{name}.py")
            assert any(f["config"] == f"configs/{need}.py" for f in flags[:first_use]), (name, need)
    with pytest.raises(ValueError, match="unknown recipe 'cifar10_xx'; expected one of: cifar10_ae"):
        gpu.commands("cifar10_xx")
