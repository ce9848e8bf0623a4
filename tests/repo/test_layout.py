"""README's Layout section names every module of the package, and every mode main.py maps to exists."""

import os
import re

from scoresde import main

from conftest import REPO


def _layout_block():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Layout"):]
    return section[section.index("```"):section.index("```", section.index("```") + 3)]


def test_readme_layout_names_every_module():
    block = _layout_block()
    named = set(re.findall(r"[\w]+\.py|[\w]+/", block))
    missing = []
    for root, dirs, files in os.walk(os.path.join(REPO, "scoresde")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, os.path.join(REPO, "scoresde"))
        if rel != "." and os.path.dirname(rel) == "" and f"{rel}/" not in named:
            missing.append(rel + "/")
        if rel not in (".", "modes"):
            continue  # a package is described by its line; the modes are listed one by one
        missing += [os.path.join(rel, n) for n in files if n.endswith(".py") and n != "__init__.py" and n not in named]
    assert not missing, f"README's Layout section does not mention: {missing}"


def test_every_mode_resolves():
    for mode in main.MODES:
        assert callable(main.resolve_mode(mode)), mode
