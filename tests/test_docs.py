"""Docs that describe code are checked against it."""

from __future__ import annotations

import pathlib
import re

from rindle_async.states import MACHINES

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_lifecycle_tables_match_the_state_machines():
    text = (ROOT / "docs" / "lifecycles.md").read_text()
    for machine in MACHINES:
        section = text.split(f"## {machine.name}\n", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| (\w+) \| ([^|]+) \|$", section, re.MULTILINE)
        documented = {state: frozenset() if "terminal" in targets else
                      frozenset(t.strip() for t in targets.split(","))
                      for state, targets in rows if state != "from"}
        assert documented == dict(machine.edges), machine.name
        initial = re.search(r"New rows start in: ([^.]+)\.", section).group(1)
        assert frozenset(s.strip() for s in initial.split(",")) == machine.initial


def test_readme_gives_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
