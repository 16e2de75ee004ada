"""Paths and file helpers of the stage scripts, without torch (what the MLflow drainer needs, cheaply)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

OUT = Path("outputs")


class Paths:
    """Where each stage writes, under one root (``outputs/`` for DVC)."""

    def __init__(self, root: Path | str = OUT):
        self.root = Path(root)
        self.data = self.root / "data"
        self.latents = self.root / "latents"
        self.schedule = self.root / "schedule"
        self.report = self.root / "report"

    def split(self, name: str) -> Path:
        return self.latents / name

    def attribute(self, name: str) -> Path:
        return self.root / "attributes" / name


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file + rename): a killed stage never leaves a torn metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
