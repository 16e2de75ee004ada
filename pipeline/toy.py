"""The toy world in the pipeline: ``is_toy`` and the oracle's verdict on an attribute's edits of held-out images,
which stage `evaluate@<attribute>` writes on toy profiles (not a stage of its own: one process fewer).

outputs/attributes/<a>/toy_eval/metrics.json   success, preservation, clean-edit rate of the edit and of
                                               the no-edit baseline (the reconstruction), with n
outputs/attributes/<a>/toy_eval/per_image.csv  per test image: original factors, oracle readouts, verdicts
outputs/attributes/<a>/toy_eval/grid.png       original | no-edit baseline | edit, with the verdicts

Scored on the test split's images that do not already have the target value (asyrp.toy.evaluate). On a
profile whose dataset is not `toy`, it writes {"skipped": "not a toy profile"} at once, so the DVC
pipeline of every other profile still runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import OUT, Layout, read_csv, write_csv, write_metrics
from .params import Params

# the numbers `dvc metrics show` prints (headline.json); the full metrics.json is a record
HEADLINE = ("skipped", "edit.success", "edit.preserved", "edit.clean_edit", "no_edit.clean_edit")

SKIPPED = {"skipped": "not a toy profile"}


def is_toy(params: Params) -> bool:
    return params.active_profile.dataset.source == "toy"


def _skip(where, note: dict) -> dict:
    write_metrics(where.metrics_json, where.headline_json, note, HEADLINE)
    write_csv(where.per_image_csv, [])
    return note


def oracle_verdict(params: Params, attr: str, out: Path = OUT) -> dict:
    """Score edit@<attr>'s images with the oracle; writes Layout(out).evaluate(attr).oracle, returns a summary."""
    lay = Layout(out)
    where, edit = lay.evaluate(attr).oracle, lay.edit(attr)
    if not is_toy(params):
        return _skip(where, SKIPPED)
    from asyrp.data.images import grid_image, load_images
    from asyrp.toy import evaluate, oracle
    from asyrp.toy.data import factors_from_rows

    spec = params.attribute(attr)
    try:
        factor, value = evaluate.edit_target(spec.source, spec.target)
    except ValueError as err:  # e.g. a new attribute whose prompts name no factor: S_dir/LPIPS still stand
        return _skip(where, {"skipped": str(err)})
    ids = sorted(p.stem for p in edit.images.glob("*.png"))
    rows = {r["id"]: r for r in read_csv(lay.download.manifest)}
    size = params.active_profile.model.image_size
    f_all = factors_from_rows([rows[i] for i in ids], size)
    keep = f_all[factor] != value  # images that already have the target cannot show the edit
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    f = {k: v[keep] for k, v in f_all.items()}
    edited = load_images([edit.image(i) for i in ids])
    recon = load_images([edit.recon_image(i) for i in ids])
    r_edit, r_base = oracle.read(edited), oracle.read(recon)
    m_edit = evaluate.score(r_edit, f, factor, value, size)
    m_base = evaluate.score(r_base, f, factor, value, size)
    # the reconstruction itself: does inversion + generation keep every factor and the mask?
    recon_kept = np.ones(len(ids), bool)
    for k in evaluate.FACTORS:
        recon_kept &= r_base.factors()[k] == f[k]
    recon_kept &= oracle.mask_iou(r_base.mask, oracle.expected_mask(f, size)) > evaluate.PRESERVE_IOU
    metrics = {
        "attribute": attr, "factor": factor, "target": evaluate.FACTORS[factor][value],
        "n": len(ids), "n_test_edited": len(f_all[factor]),
        "edit": evaluate.summarise(m_edit), "no_edit": evaluate.summarise(m_base),
        "reconstruction_keeps_all_factors": float(np.mean(recon_kept)) if len(ids) else float("nan"),
        "coefficient": params.active_coefficients[attr],
    }  # fmt: skip
    per_image = []
    for j, i in enumerate(ids):
        row = {"id": i, **{f"orig_{k}": rows[i][k] for k in evaluate.FACTORS}}
        row.update({f"edit_{k}": v for k, v in r_edit.names(j).items()})
        row.update({k: (bool(v[j]) if v.dtype == bool else round(float(v[j]), 4)) for k, v in m_edit.items()})
        row.update(
            {"baseline_success": bool(m_base["success"][j]), "baseline_clean_edit": bool(m_base["clean_edit"][j])}
        )
        per_image.append(row)
    write_csv(where.per_image_csv, per_image)
    write_metrics(where.metrics_json, where.headline_json, metrics, HEADLINE)
    n_show = min(12, len(ids))
    if n_show:
        orig = load_images([lay.download.image(i) for i in ids[:n_show]])
        labels = [("ok" if m_edit["clean_edit"][j] else "x") for j in range(n_show)]
        grid_image([orig, recon[:n_show], edited[:n_show]], ["original", "no edit", f"edit ({attr})"], labels).save(
            where.grid
        )
    return {"n": len(ids), "clean_edit": metrics["edit"]["clean_edit"], "baseline": metrics["no_edit"]["clean_edit"]}
