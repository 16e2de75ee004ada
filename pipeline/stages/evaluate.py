"""Stage `evaluate@<attribute>`: S_dir (Eq. 17), segmentation consistency SC and LPIPS to the original (App. K).

outputs/attributes/<a>/evaluate/metrics.json    means with 95% t-intervals, and what each metric used
outputs/attributes/<a>/evaluate/per_image.csv   per test image

S_dir = cos(E_I(edited) - E_I(original), E_T(target) - E_T(source)) with the evaluation CLIP
(evaluate.clip; ViT-B/32 OpenAI for real runs), plain prompts. SC = pixel accuracy between the label maps
of the reference (evaluate.sc.reference: the original, or its reconstruction) and the edited image, with
the profile's segmenter (profiles.<p>.segmenter; none = no SC); sc_recon = SC(original, reconstruction), the
agreement that inversion + generation alone keep (an edit's SC rarely exceeds it). LPIPS(original, edited) measures
preservation, LPIPS(original, reconstruction) its floor. Metrics made with a random CLIP, a random
segmenter or an LPIPS that is not the pretrained AlexNet say so in metrics.json.

outputs/attributes/<a>/toy_eval/                on toy profiles, the oracle's verdict on the same images
                                                (pipeline.toy: success, preservation, clean edits next
                                                to the no-edit baseline); elsewhere a 'skipped' note
"""

from __future__ import annotations

from pathlib import Path

import torch

from asyrp.data.images import load_images
from asyrp.data.latents import LatentStore
from asyrp.metrics import directional_similarity, mean_ci, segmentation_consistency
from asyrp.models.segment import load_segmenter

from ..common import (
    OUT,
    Layout,
    load_eval_clip,
    load_metric_lpips,
    read_json,
    stage_main,
    write_csv,
    write_metrics,
)
from ..params import Params
from ..toy import oracle_verdict

# the numbers `dvc metrics show` prints (headline.json); the full metrics.json is a record
HEADLINE = ("s_dir.mean", "sc.mean", "lpips_edit.mean")

__all__ = ["mean_ci", "run", "main"]


def _batched_lpips(lpips, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([lpips(x[i : i + batch_size], y[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def run(params: Params, attr: str, out: Path = OUT) -> dict:
    spec, ev, lay = params.attribute(attr), params.active_evaluate, Layout(out)
    where, edit = lay.evaluate(attr), lay.edit(attr)
    summary = read_json(edit.summary_json)
    store = LatentStore(lay.invert.split("test"))
    ids = store.ids[: min(ev.n_images, summary["n_edited"])]
    device = "cuda" if torch.cuda.is_available() and params.active_profile.device != "cpu" else "cpu"
    original = store.get(ids, ["image"])["image"].float().div(127.5).sub(1)  # (B, 3, H, W) in [-1, 1]
    size = original.shape[-1]
    edited = load_images([edit.image(i) for i in ids], size)
    recon = load_images([edit.recon_image(i) for i in ids], size)

    clip = load_eval_clip(params, device)
    s_dir = directional_similarity(clip, original, edited, spec.source, spec.target, ev.batch_size)
    per_image = {"id": ids, "s_dir": s_dir.tolist()}
    metrics = {
        "attribute": attr,
        "source": spec.source,
        "target": spec.target,
        "truncated_prompts": sorted(clip.truncated),  # cut to the evaluation CLIP's text context (it warned)
        "s_dir": mean_ci(s_dir),
        "clip": f"{clip.name}/{clip.pretrained}",
        "clip_is_pretrained": clip.is_pretrained,
        "coefficient": summary["coefficient"],
    }
    del clip

    seg_spec = params.active_profile.segmenter
    if ev.sc.enabled and seg_spec is not None:
        seg = load_segmenter(seg_spec.id, device, seg_spec.sha256, seg_spec.input_size)
        reference = original if ev.sc.reference == "original" else recon
        sc = segmentation_consistency(seg, reference, edited, ev.sc.batch_size, ev.sc.ignore_index)
        per_image["sc"] = sc.tolist()
        metrics.update(
            sc=mean_ci(sc),
            sc_reference=ev.sc.reference,
            segmenter=seg.note,
            segmenter_id=seg_spec.id,
            segmenter_sha256=seg.sha256,
            segmenter_is_pretrained=seg.is_pretrained,
        )
        if ev.sc.reference == "original":
            sc_recon = segmentation_consistency(seg, original, recon, ev.sc.batch_size, ev.sc.ignore_index)
            per_image["sc_recon"] = sc_recon.tolist()
            metrics["sc_recon"] = mean_ci(sc_recon)
        del seg

    if ev.lpips:
        lpips = load_metric_lpips(params, device)
        x, e, r = original.to(device), edited.to(device), recon.to(device)
        d_edit, d_recon = _batched_lpips(lpips, x, e, ev.batch_size), _batched_lpips(lpips, x, r, ev.batch_size)
        per_image.update(lpips_edit=d_edit.tolist(), lpips_recon=d_recon.tolist())
        metrics.update(
            lpips_edit=mean_ci(d_edit),
            lpips_recon=mean_ci(d_recon),
            lpips=lpips.note,
            # the paper's metric is LPIPS with the pretrained AlexNet backbone, nothing else
            lpips_is_paper_metric=lpips.is_paper_metric and lpips.net == "alex",
        )
    write_csv(
        where.per_image_csv,
        [dict(zip(per_image, vals, strict=True)) for vals in zip(*per_image.values(), strict=True)],
    )
    write_metrics(where.metrics_json, where.headline_json, metrics, HEADLINE)
    # the toy world's ground truth, in this stage: one process fewer than a stage of its own (~13 s of imports)
    toy = oracle_verdict(params, attr, out)
    summary = {k: v for k, v in metrics.items() if isinstance(v, dict) or k == "attribute"}
    return summary if "skipped" in toy else {**summary, "oracle": toy}


main = stage_main(run, __doc__.splitlines()[0], attribute=True)

if __name__ == "__main__":
    main()
