"""File helpers of the stage scripts, and their output layout (pipeline.layout), without torch (what the MLflow
drainer needs, cheaply)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .layout import OUT, Layout

__all__ = ["OUT", "Layout", "read_csv", "read_json", "write_csv", "write_json", "write_metrics"]


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file + rename): a killed stage never leaves a torn metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    tmp.replace(path)


def write_metrics(path: Path, headline_path: Path, metrics: dict, keys: Sequence[str]) -> dict:
    """Write a stage's full metrics JSON and its headline: the values at ``keys`` (dotted paths into nested
    dicts), the few numbers ``dvc metrics show`` prints side by side. A key the metrics lack is left out."""
    write_json(path, metrics)
    headline = {}
    for key in keys:
        value = metrics
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            headline[key] = value
    write_json(headline_path, headline)
    return headline


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
