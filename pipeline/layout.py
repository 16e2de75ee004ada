"""Every file the pipeline writes: one class per stage, built from the output root (and the attribute).

Stages write through these paths, tracking logs and queues from them, the flows check them, and
tests/test_layout.py compares each class's ``outs``/``records``/``metrics``/``plots`` with dvc.yaml. Torch-free on
purpose: the MLflow drainer imports it.

    outputs/
      data/                     download         images/<id>.png, manifest.csv, report.json
      latents/{train,test}/     invert           Parquet shards and _index.json
      invert/                   invert           metrics.json, headline.json, timings.json
      schedule/                 schedule         curves.{csv,png}, metrics.json, headline.json
      attributes/<a>/train/     train@<a>        direction.{safetensors,json}, schedule.json, loss.{csv,png},
                                                 metrics.json, headline.json, timings.json
      attributes/<a>/edit/      edit@<a>         images/, recon/, edited.parquet, grid.png, strip.png,
                                                 summary.json
      attributes/<a>/evaluate/  evaluate@<a>     metrics.json, headline.json, per_image.csv
      attributes/<a>/toy_eval/  evaluate@<a>     the toy oracle's verdict: metrics.json, headline.json, per_image.csv,
                                                 grid.png
      study/<name>/             study@<name>     sheet.html, answer_key.json, summary.json
      toy/                      toy_analysis     metrics.json, headline.json, report/ (report.md and its images)
      report/                   report           report.md, report.csv

timings.json (wall-clock figures: seconds, images/s) is neither a DVC output nor in git: it differs from run to
run, and a DVC-tracked file that does makes `dvc repro` rerun a stage whose results are byte-identical (after a
Prefect run over the same outputs, say). MLflow logs it with the stage's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OUT = Path("outputs")


class _Stage:
    """What a stage declares to DVC: cached ``outs``; ``records``, ``metrics`` and ``plots`` (all ``cache: false``).

    ``metrics`` are the short headline files (``dvc metrics show``: the numbers a user compares); the full
    metrics JSON of a stage is a record, an uncached out that MLflow, the report and people read.
    """

    outs: tuple[Path, ...] = ()
    records: tuple[Path, ...] = ()
    metrics: tuple[Path, ...] = ()
    plots: tuple[Path, ...] = ()


class _Measured(_Stage):
    """A stage (or part) with ``folder``/metrics.json, a record, and its headline.json, the DVC metric."""

    metrics_json = property(lambda s: s.folder / "metrics.json")
    headline_json = property(lambda s: s.folder / "headline.json")
    records = property(lambda s: (s.metrics_json,))
    metrics = property(lambda s: (s.headline_json,))


@dataclass(frozen=True)
class Download(_Stage):
    folder: Path  # outputs/data

    images = property(lambda s: s.folder / "images")
    manifest = property(lambda s: s.folder / "manifest.csv")  # id, sha256 and (toy) the factors of each image
    report = property(lambda s: s.folder / "report.json")  # per-file verdicts: converted, skipped and why
    outs = property(lambda s: (s.folder,))

    def image(self, image_id: str) -> Path:
        return self.images / f"{image_id}.png"


@dataclass(frozen=True)
class Invert(_Measured):
    latents: Path  # outputs/latents
    folder: Path  # outputs/invert

    # metrics.json: reconstruction error; timings.json: throughput against bare U-Net forwards
    timings_json = property(lambda s: s.folder / "timings.json")
    outs = property(lambda s: (s.latents,))

    def split(self, name: str) -> Path:
        """The shards of split ``name`` ("train" or "test")."""
        return self.latents / name

    def index(self, name: str) -> Path:
        return self.split(name) / "_index.json"


@dataclass(frozen=True)
class Schedule(_Measured):
    folder: Path  # outputs/schedule

    curves_csv = property(lambda s: s.folder / "curves.csv")  # t, lpips_pred_x0, lpips_xt
    curves_png = property(lambda s: s.folder / "curves.png")
    # metrics.json: t_boost, t_edit_max, n_images
    outs = property(lambda s: (s.curves_png,))
    plots = property(lambda s: (s.curves_csv,))


@dataclass(frozen=True)
class Train(_Measured):
    folder: Path  # outputs/attributes/<a>/train

    direction = property(lambda s: s.folder / "direction")  # the stem of save_direction / load_direction
    direction_weights = property(lambda s: s.folder / "direction.safetensors")
    direction_config = property(lambda s: s.folder / "direction.json")
    schedule_json = property(lambda s: s.folder / "schedule.json")  # t_edit, t_boost, prompt similarity
    loss_csv = property(lambda s: s.folder / "loss.csv")  # one row per optimiser step
    loss_png = property(lambda s: s.folder / "loss.png")
    # metrics.json: final losses; timings.json: seconds
    timings_json = property(lambda s: s.folder / "timings.json")
    outs = property(lambda s: (s.direction_weights, s.direction_config, s.loss_png))
    records = property(lambda s: (s.schedule_json, s.metrics_json))
    plots = property(lambda s: (s.loss_csv,))


@dataclass(frozen=True)
class Edit(_Stage):
    folder: Path  # outputs/attributes/<a>/edit

    images = property(lambda s: s.folder / "images")  # edited at the attribute's coefficient
    recon = property(lambda s: s.folder / "recon")  # the same process at coefficient 0
    edited_parquet = property(lambda s: s.folder / "edited.parquet")  # every coefficient made
    grid = property(lambda s: s.folder / "grid.png")
    strip = property(lambda s: s.folder / "strip.png")
    summary_json = property(lambda s: s.folder / "summary.json")  # n_edited, coefficient, sweep, schedule
    outs = property(lambda s: (s.folder,))

    def image(self, image_id: str) -> Path:
        return self.images / f"{image_id}.png"

    def recon_image(self, image_id: str) -> Path:
        return self.recon / f"{image_id}.png"


@dataclass(frozen=True)
class Oracle(_Measured):
    """The toy oracle's verdict on an attribute's edits (written by evaluate@<a>; a 'skipped' note elsewhere)."""

    folder: Path  # outputs/attributes/<a>/toy_eval

    per_image_csv = property(lambda s: s.folder / "per_image.csv")
    grid = property(lambda s: s.folder / "grid.png")  # toy profiles only, so not a DVC out


@dataclass(frozen=True)
class Evaluate(_Measured):
    folder: Path  # outputs/attributes/<a>/evaluate
    oracle: Oracle

    # metrics.json: S_dir, SC, LPIPS with 95% intervals
    per_image_csv = property(lambda s: s.folder / "per_image.csv")
    outs = property(lambda s: (s.per_image_csv, s.oracle.per_image_csv))
    records = property(lambda s: (s.metrics_json, s.oracle.metrics_json))
    metrics = property(lambda s: (s.headline_json, s.oracle.headline_json))


@dataclass(frozen=True)
class Study(_Stage):
    folder: Path  # outputs/study/<name>; sheet.html and answer_key.json are asyrp.study's names

    summary_json = property(lambda s: s.folder / "summary.json")
    outs = property(lambda s: (s.folder,))


@dataclass(frozen=True)
class ToyAnalysis(_Measured):
    folder: Path  # outputs/toy

    report = property(lambda s: s.folder / "report")  # report.md and its grids and plots
    report_md = property(lambda s: s.report / "report.md")
    outs = property(lambda s: (s.report,))


@dataclass(frozen=True)
class Report(_Stage):
    folder: Path  # outputs/report

    report_md = property(lambda s: s.folder / "report.md")
    report_csv = property(lambda s: s.folder / "report.csv")
    outs = property(lambda s: (s.folder,))


STAGES = ("download", "invert", "schedule", "train", "edit", "evaluate", "study", "toy_analysis", "report")
PER_ITEM = ("train", "edit", "evaluate", "study")  # dvc.yaml foreach stages: one per attribute (study: sheet)


class Layout:
    """Where each stage writes, under one root (``outputs/`` for DVC)."""

    def __init__(self, root: Path | str = OUT):
        self.root = Path(root)
        self.download = Download(self.root / "data")
        self.invert = Invert(self.root / "latents", self.root / "invert")
        self.schedule = Schedule(self.root / "schedule")
        self.toy_analysis = ToyAnalysis(self.root / "toy")
        self.report = Report(self.root / "report")

    def attribute(self, name: str) -> Path:
        """The folder of everything per attribute (train/, edit/, evaluate/, toy_eval/)."""
        return self.root / "attributes" / name

    def train(self, attribute: str) -> Train:
        return Train(self.attribute(attribute) / "train")

    def edit(self, attribute: str) -> Edit:
        return Edit(self.attribute(attribute) / "edit")

    def evaluate(self, attribute: str) -> Evaluate:
        return Evaluate(self.attribute(attribute) / "evaluate", Oracle(self.attribute(attribute) / "toy_eval"))

    def study(self, name: str) -> Study:
        return Study(self.root / "study" / name)

    def stage(self, name: str, item: str | None = None) -> _Stage:
        """The outputs of stage ``name`` (``item``: the attribute, or the sheet of study@)."""
        if name not in STAGES:
            raise ValueError(f"no stage {name!r}; stages: {', '.join(STAGES)}")
        if (item is None) == (name in PER_ITEM):
            raise ValueError(f"stage {name!r} " + ("needs an item" if item is None else "takes no item"))
        value = getattr(self, name)
        return value(item) if item is not None else value
