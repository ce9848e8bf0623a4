"""README's Layout section and the package agree both ways, and every mode main.py maps to exists.

The Layout section's listing has one line per module and subpackage of ``scoresde/`` (an entry: its name, indented
two spaces per level, then what it holds and what it may import, in columns two or more spaces apart), and
continuation lines indented to the description column. Every module and subpackage on disk must have its entry,
and every entry must exist. The rename table below the listing names, for each old module, where it went: the old
module file must be gone and every ``scoresde.*`` name given as its new home must resolve.
"""

import importlib
import os
import re

from scoresde import main

from conftest import REPO

PACKAGE = os.path.join(REPO, "scoresde")
ENTRY = re.compile(r"^(?P<indent>(?:  )+)(?P<name>\w+(?:\.py|/))(?P<rest>  .*)$")
CONTINUATION_INDENT = 10  # a line indented this far or more continues the entry above it


def _layout_section():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _listing():
    section = _layout_section()
    fence = section.index("```")
    return section[section.index("\n", fence) + 1 : section.index("```", fence + 3)].rstrip("\n").split("\n")


def _documented():
    """Paths (``sde.py``, ``sampling/``, ``sampling/fast.py``) of the listing's entries, relative to scoresde/."""
    lines = _listing()
    assert lines[0].startswith("scoresde/"), f"the Layout listing should start at scoresde/, not {lines[0]!r}"
    entries, parents, last = [], [], None
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent >= CONTINUATION_INDENT:
            assert last is not None, f"listing line {number} continues no entry: {line!r}"
            continue
        m = ENTRY.match(line)
        assert m, f"listing line {number} is neither an entry (name, holds, may import) nor a continuation: {line!r}"
        columns = re.split(r" {2,}", m["rest"].strip())
        assert len(columns) == 2, f"listing line {number} needs what {m['name']} holds and what it may import: {line!r}"
        level = len(m["indent"]) // 2
        assert level <= len(parents) + 1, f"listing line {number} is indented deeper than its package: {line!r}"
        parents = parents[: level - 1]
        last = "".join(parents) + m["name"]
        entries.append(last)
        if m["name"].endswith("/"):
            parents.append(m["name"])
    duplicates = sorted({e for e in entries if entries.count(e) > 1})
    assert not duplicates, f"README's Layout section lists these twice: {duplicates}"
    return set(entries)


def _on_disk():
    found = set()
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(root, PACKAGE)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        if prefix:
            found.add(prefix)  # a package's line describes its __init__.py
        found.update(prefix + n for n in files if n.endswith(".py") and n != "__init__.py")
    return found


def _is_module(parts):
    path = os.path.join(REPO, *parts)
    return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def _resolves(dotted):
    """A module or package by its file; a name inside one by importing that module (only then)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        if _is_module(parts[:k]):
            obj = importlib.import_module(".".join(parts[:k])) if k < len(parts) else None
            for attr in parts[k:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def _check_rename_table():
    rows = [line for line in _layout_section().split("\n") if re.match(r"^\| `scoresde\.", line)]
    assert rows, "README's Layout section has no rename table"
    for row in rows:
        old_cell, new_cell = row.strip("|").split("|")[:2]
        old = re.search(r"`(scoresde\.[\w.]+)`", old_cell)[1]
        old_file = os.path.join(REPO, *old.split(".")) + ".py"
        assert not os.path.exists(old_file), f"{old} is in the rename table but {old_file} still exists"
        new = re.findall(r"`(scoresde\.[\w.]+)`", new_cell)
        assert new, f"the rename table gives no new home for {old}"
        unresolved = [name for name in new if not _resolves(name)]
        assert not unresolved, f"the rename table sends {old} to names that do not exist: {unresolved}"


def test_readme_layout_section_matches_the_package():
    documented, on_disk = _documented(), _on_disk()
    missing, stale = sorted(on_disk - documented), sorted(documented - on_disk)
    assert not missing and not stale, (
        f"README's Layout section has no line for {missing} and lists {stale}, which scoresde/ does not have"
    )
    _check_rename_table()


def test_every_mode_resolves():
    for mode in main.MODES:
        assert callable(main.resolve_mode(mode)), mode
