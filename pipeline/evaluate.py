"""Stage `evaluate@<attribute>`: directional CLIP similarity S_dir (Eq. 17) and LPIPS to the original.

outputs/attributes/<a>/evaluate/metrics.json    means with 95% t-intervals, and what each metric used
outputs/attributes/<a>/evaluate/per_image.csv   per test image

S_dir = cos(E_I(edited) - E_I(original), E_T(target) - E_T(source)) with the evaluation CLIP
(evaluate.clip; ViT-B/32 OpenAI for real runs), plain prompts. LPIPS(original, edited) measures
preservation, LPIPS(original, reconstruction) the floor set by inversion + generation alone.
Metrics made with a random CLIP or a random LPIPS backbone say so in metrics.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from asyrp.images import load_images
from asyrp.latents import LatentStore
from asyrp.losses import directional_cos

from .common import OUT, Paths, load_eval_clip, load_metric_lpips, read_json, stage_main, write_csv, write_json
from .params import Params


def mean_ci(values: torch.Tensor) -> dict:
    """Mean and the half-width of its 95% Student-t interval."""
    from scipy import stats

    v = values.double()
    n = v.numel()
    half = float(stats.t.ppf(0.975, n - 1) * v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": half, "n": n}


@torch.no_grad()
def run(params: Params, attr: str, out: Path = OUT) -> dict:
    spec, ev, paths = params.attribute(attr), params.active_evaluate, Paths(out)
    folder, edit_dir = paths.attribute(attr) / "evaluate", paths.attribute(attr) / "edit"
    summary = read_json(edit_dir / "summary.json")
    store = LatentStore(paths.split("test"))
    ids = store.ids[: min(ev.n_images, summary["n_edited"])]
    device = "cuda" if torch.cuda.is_available() and params.active_profile.device != "cpu" else "cpu"
    original = store.get(ids, ["image"])["image"].float().div(127.5).sub(1).to(device)
    size = original.shape[-1]
    edited = load_images([edit_dir / "images" / f"{i}.png" for i in ids], size).to(device)
    recon = load_images([edit_dir / "recon" / f"{i}.png" for i in ids], size).to(device)
    clip = load_eval_clip(params, device)
    text_dir = torch.nn.functional.normalize(
        clip.encode_text([spec.target])[0] - clip.encode_text([spec.source])[0], dim=0
    )
    s_dir = directional_cos(clip.encode_image(edited), clip.encode_image(original), text_dir).cpu()
    per_image = {"id": ids, "s_dir": s_dir.tolist()}
    metrics = {
        "attribute": attr,
        "source": spec.source,
        "target": spec.target,
        "s_dir": mean_ci(s_dir),
        "clip": f"{clip.name}/{clip.pretrained}",
        "clip_is_pretrained": clip.is_pretrained,
        "coefficient": summary["coefficient"],
    }
    if ev.lpips:
        lpips = load_metric_lpips(params, device)
        d_edit, d_recon = lpips(original, edited).cpu(), lpips(original, recon).cpu()
        per_image.update(lpips_edit=d_edit.tolist(), lpips_recon=d_recon.tolist())
        metrics.update(
            lpips_edit=mean_ci(d_edit),
            lpips_recon=mean_ci(d_recon),
            lpips=lpips.note,
            lpips_is_paper_metric=lpips.is_paper_metric,
        )
    write_csv(
        folder / "per_image.csv",
        [dict(zip(per_image, vals, strict=True)) for vals in zip(*per_image.values(), strict=True)],
    )
    write_json(folder / "metrics.json", metrics)
    return {k: v for k, v in metrics.items() if isinstance(v, dict) or k == "attribute"}


main = stage_main(run, __doc__.splitlines()[0], attribute=True)

if __name__ == "__main__":
    main()
