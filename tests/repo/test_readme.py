"""README's tables against the code: every config file is listed once, the samplers as the table of methods."""

import os
import re

from scoresde import sampling

from conftest import REPO


def _readme() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def _table_after(text: str, header: str) -> list[str]:
    """The rows of the one table that starts at ``header``: consecutive ``|`` lines, no blank line inside."""
    lines = text[text.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:  # header, separator
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_config_table_is_one_table_listing_every_config():
    readme = _readme()
    section = _section(readme, "## The command line")
    rows = _table_after(section, "| config | model | notes |")
    listed = [name for row in rows for name in re.findall(r"`configs/([\w]+)\.py`", row.split("|")[1])]
    on_disk = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))
    assert sorted(listed) == on_disk  # both ways, each once
    # the table ends where the section's next paragraph or heading starts: no rows after a blank line
    after = section[section.index(rows[-1]) + len(rows[-1]) :]
    assert not re.search(r"^\| `configs/", after, re.M)


def test_samplers_bullet_and_table_match_the_methods():
    readme = _readme()
    bullet = re.search(r"^- \*\*Samplers\*\*(.*?)(?=^- \*\*)", readme, re.S | re.M).group(1)
    named = set(re.findall(r"`([\w+]+)`", bullet.split("Every call")[0]))
    assert named == set(sampling.METHODS)  # both ways (dotted names such as the module's do not match)
    table = _table_after(readme, "| `sampling.method` | what |")
    in_table = [m for row in table for m in re.findall(r"`([\w+]+)`", row.split("|")[1])]
    assert sorted(in_table) == sorted(sampling.METHODS)  # both ways, each once
