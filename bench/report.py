"""What every benchmark prints and writes: a table and ``bench/results/NAME.json``.

Each script builds one :class:`Report`, adds rows (a figure, its unit, and the
baseline it is compared with when there is one) and JSON keys, and calls
:meth:`Report.finish`.  ``--smoke`` runs a script with tiny sizes so the test
suite can check it still works; its figures mean nothing and its results go to
``--out`` (a temporary folder in the tests), never over the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE_URL = os.environ.get("RINDLE_TEST_DATABASE_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RINDLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def arguments(description: str, **sizes: int) -> argparse.Namespace:
    """Parse ``--smoke``, ``--out`` and one ``--NAME N`` option per size (its default given).

    description: the script's one-line purpose, shown by ``--help``.
    sizes: option name -> default value, e.g. ``uploads=24``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, to check the script runs (figures mean nothing)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for NAME.json")
    for name, default in sizes.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser.parse_args()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


@dataclass
class Report:
    """One benchmark's table and JSON results.

    name: the script's name; results go to ``OUT/NAME.json``.
    title: the table's heading.
    smoke: whether this is a smoke run (recorded in the JSON).
    """

    name: str
    title: str
    smoke: bool = False
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def row(self, label: str, value: float, unit: str, *, baseline: float | None = None,
            key: str | None = None, digits: int = 1) -> float:
        """Add a table row; with ``baseline``, show ``value / baseline`` beside it.

        label: what was measured.
        value: the figure.
        unit: its unit ("images/s", "ms").
        baseline: the same-run baseline this figure is compared with.
        key: also store the figure under this JSON key.
        digits: decimals shown.
        """
        ratio = "" if baseline is None or not baseline else f"x{value / baseline:.2f}"
        self.rows.append((label, f"{value:,.{digits}f} {unit}", ratio))
        if key is not None:
            self.results[key] = round(value, 4)
        return value

    def ratio(self, key: str, value: float, baseline: float) -> float:
        """Store ``value / baseline`` under ``key`` and return it."""
        self.results[key] = round(value / baseline, 4) if baseline else None
        return self.results[key] or 0.0

    def note(self, text: str) -> None:
        """A line printed under the table (and kept in the JSON)."""
        self.notes.append(text)

    def finish(self, out: Path) -> Path:
        """Print the table and write ``out/NAME.json``; return its path."""
        width = max((len(label) for label, _, _ in self.rows), default=10)
        print(f"\n{self.title}" + ("  (smoke run: figures mean nothing)" if self.smoke else ""))
        for label, value, ratio in self.rows:
            print(f"  {label:<{width}}  {value:>18}  {ratio}")
        for text in self.notes:
            print(f"  {text}")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.json"
        document = {"benchmark": self.name, "smoke": self.smoke,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "seconds": round(time.monotonic() - self.started, 1), "machine": machine(),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "results": self.results,
                    "table": [list(row) for row in self.rows], "notes": self.notes}
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path
