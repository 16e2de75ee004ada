"""Stage `toy_analysis`: the toy world's report: oracle metrics of every edit and the Sec. 5.3 analyses.

outputs/toy/metrics.json   models (DDPM samples clean by the oracle, CLIP zero-shot accuracy), every
                           attribute's toy_eval metrics, homogeneity, consistency, linearity, combination,
                           robustness, and two diagnostics beyond the paper: the supervised ceiling (f_t
                           trained on the ground-truth edit, no CLIP) and the CLIP check (does Eq. 4 prefer
                           the clean edit?); each with n (held-out test images)
outputs/toy/report/report.md  the same as tables, with the image grids and plots (outputs/toy/report/*.png)

Measured on the test split (never used to train f_t, the DDPM or the CLIP). The mean direction is read from
20 training images (App. L). On a profile whose dataset is not `toy` it writes a 'skipped' note and exits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from ..common import (
    OUT,
    Layout,
    line_plot,
    per_image_prompts,
    read_csv,
    read_json,
    stage_main,
    write_metrics,
)
from ..layout import ToyAnalysis
from ..params import Params
from ..toy import SKIPPED, is_toy

# the numbers `dvc metrics show` prints (headline.json); the full metrics.json is a record
HEADLINE = ("skipped", "ddpm_samples.clean", "clip_zero_shot.colour", "clip_zero_shot.shape", "clip_zero_shot.size")

N_ANALYSIS = 32  # test images per analysis (bounded: the whole toy `dvc repro` must stay within minutes)
N_FIT = 20  # images the mean direction is read from (paper App. L: N = 20)
N_SAMPLES = 64  # DDPM samples scored by the oracle
N_CEILING = 32  # training images of the ground-truth-supervised f_t (the ceiling; bounded like N_ANALYSIS)
SWEEP = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def _skip(where: ToyAnalysis) -> dict:
    write_metrics(where.metrics_json, where.headline_json, SKIPPED, HEADLINE)
    where.report_md.write_text("# Toy world report\n\nskipped: not a toy profile\n")
    return SKIPPED


def run(params: Params, out: Path = OUT) -> dict:
    paths = Layout(out)
    where = paths.toy_analysis
    folder = where.report
    folder.mkdir(parents=True, exist_ok=True)
    if not is_toy(params):
        return _skip(where)
    from asyrp.core.directions import load_direction
    from asyrp.core.edit import EditDirection, random_latents
    from asyrp.data.images import grid_image
    from asyrp.data.latents import LatentStore
    from asyrp.toy import analysis, evaluate, oracle
    from asyrp.toy.data import factors_from_rows

    from ..common import load_model, load_train_clip

    torch.manual_seed(0)
    ed = params.active_edit
    model = load_model(params)
    size = model.image_size
    rows = {r["id"]: r for r in read_csv(paths.download.manifest)}
    test = LatentStore(paths.invert.split("test"))
    cols = test.get(test.ids, ["x_T"])
    x_T_all, ids_all = cols["x_T"].float(), list(test.ids)
    f_all = factors_from_rows([rows[i] for i in ids_all], size)
    train = LatentStore(paths.invert.split("train"))
    ceil_ids = train.ids[: max(N_FIT, N_CEILING)]  # one read for both: the first N_FIT fit the mean direction
    x_ceil = train.get(ceil_ids, ["x_T"])["x_T"].float()
    x_fit, x_ceil = x_ceil[:N_FIT], x_ceil[:N_CEILING]
    f_ceil = factors_from_rows([rows[i] for i in ceil_ids[:N_CEILING]], size)
    metrics: dict = {"n_test": len(ids_all)}

    # -- the models themselves ---------------------------------------------------------------------
    attrs = list(params.attributes)
    first = read_json(paths.train(attrs[0]).schedule_json)
    # samples from pure noise (t = 999) at the edits' step size: n_gen_steps span [0, t_0] there
    steps = round(ed.n_gen_steps * model.num_train_timesteps / first["t_0"]) if first.get("t_0") else ed.n_gen_steps
    plain_cfg = params.edit_config(first["t_edit"], first["t_boost"], None, n_gen_steps=steps)
    samples = analysis.generate(model, random_latents(N_SAMPLES, (3, size, size), seed=123), [], plain_cfg,
                                range(N_SAMPLES))  # fmt: skip
    rs = oracle.read(samples)
    metrics["ddpm_samples"] = {"clean": float(rs.clean.mean()), "n": N_SAMPLES,
                               "steps": steps, "t_boost": first["t_boost"]}  # fmt: skip
    grid_image([samples[i : i + 16] for i in range(0, min(N_SAMPLES, 32), 16)]).save(folder / "ddpm_samples.png")
    clip = load_train_clip(params, model.unet.device)
    metrics["clip_zero_shot"] = _zero_shot(clip, test, f_all)

    # -- per attribute: oracle metrics, homogeneity, consistency, linearity --------------------------
    dirs, per_attr = {}, {}
    for attr in attrs:
        spec = params.attribute(attr)
        factor, value = evaluate.edit_target(spec.source, spec.target)
        module, dcfg = load_direction(paths.train(attr).direction, model.unet.device)
        sched = read_json(paths.train(attr).schedule_json)
        cfg = params.edit_config(sched["t_edit"], sched["t_boost"], sched.get("t_0"))
        d = EditDirection(module, dcfg, params.active_coefficients[attr])
        dirs[attr] = (d, factor, value, cfg)
        sel = np.nonzero(f_all[factor] != value)[0][:N_ANALYSIS]
        x, f, seeds = x_T_all[sel], {k: v[sel] for k, v in f_all.items()}, [ed.seed + int(i) for i in sel]
        res: dict = {"factor": factor, "target": evaluate.FACTORS[factor][value], "t_edit": sched["t_edit"],
                     "t_boost": sched["t_boost"]}  # fmt: skip
        ev_path = paths.evaluate(attr).oracle.metrics_json
        res["toy_eval"] = read_json(ev_path) if ev_path.exists() else None
        made = _made(paths, attr, [ids_all[i] for i in sel], d.coefficient, cfg)
        res["homogeneity"], res["consistency"] = analysis.homogeneity(model, d, x_fit, x, f, factor, value, cfg, seeds,
                                                                      per_image=made.get(d.coefficient))  # fmt: skip
        lin, sweep = analysis.linearity(model, d, x[:16], {k: v[:16] for k, v in f.items()}, factor, value, cfg,
                                        SWEEP, seeds[:16], known={c: v[:16] for c, v in made.items()})  # fmt: skip
        res["linearity"] = lin
        res["clip_check"] = _clip_check(params, attr, clip, rows, [ids_all[i] for i in sel], f, factor, value, size)
        res["ceiling"] = analysis.supervised_ceiling(model, dcfg, params.train_config(sched["t_edit"]), x_ceil,
                                                     f_ceil, x, f, factor, value, cfg, seeds,
                                                     params.active_train.batch_size)  # fmt: skip
        grid_image([sweep[k, :8] for k in range(len(SWEEP))], [f"c={c:g}" for c in SWEEP]).save(
            folder / f"sweep_{attr}.png"
        )
        per_attr[attr] = res
    metrics["attributes"] = per_attr
    _plots(folder, per_attr)

    # -- combination (colour + size, or the first two factors) and robustness -----------------------
    by_factor = {v[1]: a for a, v in reversed(list(dirs.items()))}
    pair = [by_factor[k] for k in ("colour", "size") if k in by_factor]
    if len(pair) < 2:
        pair = attrs[:2]
    if len(pair) == 2 and dirs[pair[0]][1] != dirs[pair[1]][1]:
        (d1, f1, v1, c1), (d2, f2, v2, _) = dirs[pair[0]], dirs[pair[1]]
        sel = np.nonzero((f_all[f1] != v1) & (f_all[f2] != v2))[0][:N_ANALYSIS]
        x, f, seeds = x_T_all[sel], {k: v[sel] for k, v in f_all.items()}, [ed.seed + int(i) for i in sel]
        combo, edited = analysis.combination(model, [(d1, f1, v1), (d2, f2, v2)], x, f, c1, seeds)
        singles = [analysis.generate(model, x[:8], [d], c1, seeds[:8]) for d in (d1, d2)]
        metrics["combination"] = {"attributes": pair, **combo}
        grid_image([_originals(paths, [ids_all[i] for i in sel[:8]]), singles[0], singles[1], edited[:8]],
                   ["original", pair[0], pair[1], " + ".join(pair)]).save(folder / "combination.png")  # fmt: skip
    attr0 = next(iter(dirs))
    d, factor, value, cfg = dirs[attr0]
    sel = np.arange(min(N_ANALYSIS, len(ids_all)))
    x, f, seeds = x_T_all[sel], {k: v[sel] for k, v in f_all.items()}, [ed.seed + int(i) for i in sel]
    no_edit = _made(paths, attr0, [ids_all[i] for i in sel], d.coefficient, cfg).get(0.0)
    rob, images = analysis.robustness(model, d, x, f, cfg, seeds, no_edit=no_edit)
    metrics["robustness"] = {"attribute": attr0, **rob}
    grid_image([v[:8] for v in images.values()], list(images)).save(folder / "robustness.png")
    write_metrics(where.metrics_json, where.headline_json, metrics, HEADLINE)
    for attr in attrs:  # the toy_eval grids, next to the report
        g = paths.evaluate(attr).oracle.grid
        if g.exists():
            shutil.copy(g, folder / f"edit_{attr}.png")
    where.report_md.write_text(markdown(metrics, attrs))
    return {"ddpm_clean": metrics["ddpm_samples"]["clean"],
            **{a: (r["toy_eval"] or {}).get("edit", {}).get("clean_edit") for a, r in per_attr.items()}}  # fmt: skip


def _made(paths: Layout, attr: str, ids: list[str], coefficient: float, cfg) -> dict[float, torch.Tensor]:
    """The edit stage's images of `ids`, {0: reconstructions, coefficient: edits}, where that stage ran with this
    coefficient and config (same latents and per-image seeds, so the same images up to PNG rounding); else {}."""
    from asyrp.data.images import load_images

    edit = paths.edit(attr)
    summary = edit.summary_json
    want = {"coefficient": coefficient, "t_edit": cfg.t_edit, "t_boost": cfg.t_boost, "n_gen_steps": cfg.n_gen_steps,
            "t_0": cfg.t_0}  # fmt: skip
    if not summary.exists() or any(read_json(summary).get(k) != v for k, v in want.items()):
        return {}
    files = {0.0: [edit.recon_image(i) for i in ids], coefficient: [edit.image(i) for i in ids]}
    if not all(p.exists() for v in files.values() for p in v):
        return {}
    return {c: load_images(v) for c, v in files.items()}


def _originals(paths: Layout, ids) -> torch.Tensor:
    from asyrp.data.images import load_images

    return load_images([paths.download.image(i) for i in ids])


@torch.no_grad()
def _zero_shot(clip, test, f_all) -> dict:
    """The training CLIP's zero-shot accuracy per factor on the held-out test images."""
    from asyrp.toy.train_clip import zero_shot_prompts

    x = test.get(test.ids, ["image"])["image"].float().div(127.5).sub(1).to(clip.device)
    e = clip.encode_image(x)
    out = {"n": len(x)}
    for k, prompts in zero_shot_prompts().items():
        pred = (e @ clip.encode_text(prompts).T).argmax(1).cpu().numpy()
        out[k] = float((pred == f_all[k]).mean())
    return out


def _clip_check(params: Params, attr: str, clip, rows, ids, f, factor, value, size) -> dict:
    """analysis.clip_check with the text directions train@ used (per-image source prompts where set)."""
    from asyrp.core.losses import AsyrpLoss
    from asyrp.toy.analysis import clip_check

    spec = params.attribute(attr)
    loss = AsyrpLoss(clip, spec.source, spec.target, params.loss_config(attr))  # only its text directions are used
    src = spec.source_per_image
    prompts = per_image_prompts(src, rows, ids) if src else [spec.source] * len(ids)
    return clip_check(clip, loss.text_directions(prompts), f, factor, value, size)


def _plots(folder: Path, per_attr: dict) -> None:
    for attr, r in per_attr.items():
        c = r["consistency"]
        line_plot(folder / f"consistency_{attr}.png", c["t"], {"cos(delta_h_t mean, global)": c["cos_to_global"]},
                  "t", "cosine", f"{attr}: consistency across timesteps", invert_x=True)  # fmt: skip
    line_plot(folder / "linearity.png", next(iter(per_attr.values()))["linearity"]["coefficients"],
              {a: r["linearity"]["mean_score"] for a, r in per_attr.items()}, "coefficient c",
              "oracle attribute score", "linearity: coefficient sweep (c < 0: extrapolation)")  # fmt: skip


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def markdown(m: dict, attrs: list[str]) -> str:
    L = ["# Toy world report", "",
         "Every number is the oracle's (exact readout of shape, colour, size, background and mask) on held-out",
         "test images: never used to train f_t, the toy DDPM or the toy CLIP.", "",
         "## Models", "",
         f"- DDPM samples that are one clean shape: {_pct(m['ddpm_samples']['clean'])} "
         f"(n = {m['ddpm_samples']['n']}, {m['ddpm_samples']['steps']} DDIM steps + quality boosting)",
         "- CLIP zero-shot accuracy (n = {n}): ".format(**m["clip_zero_shot"])
         + ", ".join(f"{k} {_pct(v)}" for k, v in m["clip_zero_shot"].items() if k != "n"), "",
         "![DDPM samples](ddpm_samples.png)", "",
         "## Edits (issue point 5)", "",
         "| attribute | edit | t_edit | t_boost | n | success | preserved | clean edit | no-edit clean edit | "
         "no-edit success |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in attrs:
        r = m["attributes"][a]
        ev = r["toy_eval"] or {}
        e, b = ev.get("edit", {}), ev.get("no_edit", {})
        L.append(f"| {a} | {r['factor']} -> {r['target']} | {r['t_edit']} | {r['t_boost']} | {ev.get('n', '–')} | "
                 f"{_pct(e.get('success'))} | {_pct(e.get('preserved'))} | **{_pct(e.get('clean_edit'))}** | "
                 f"{_pct(b.get('clean_edit'))} | {_pct(b.get('success'))} |")  # fmt: skip
    L += [
        "",
        "success: the oracle reads the target; preserved: every other factor unchanged and mask IoU > 0.7 with",
        "the expected mask (the original shape, re-rendered with the edited factor); clean edit: both, and one clean",
        "shape. No edit: the same process at coefficient 0 (inversion + reconstruction with quality boosting).",
        "",
    ]
    L += [f"![{a}](edit_{a}.png)" for a in attrs] + [""]
    L += ["## What limits the edits: the supervised ceiling (beyond the paper)", "",
          "The same f_t, optimiser and steps, trained without CLIP on the ground truth: L1 of P_t^edit to the P_t of",
          "the truly edited image (the generator re-renders each training image with the edit; DDIM-inverted to the",
          "same depth). What it reaches is what the DDPM, h-space, f_t and the interval allow; the gap to the",
          "CLIP-trained f_t is the CLIP loss's. Same test images as the analyses below.", "",
          "| attribute | n train | n | success | preserved | clean edit | CLIP-trained f_t clean edit (same images) |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in attrs:
        c, h = m["attributes"][a]["ceiling"], m["attributes"][a]["homogeneity"]["f_t (per image)"]
        L.append(f"| {a} | {c['n_train']} | {c['n']} | {_pct(c['success'])} | {_pct(c['preserved'])} | "
                 f"**{_pct(c['clean_edit'])}** | {_pct(h['clean_edit'])} |")  # fmt: skip
    L += [
        "",
        "Does the CLIP loss prefer the clean edit? cos(dI, dT) (Eq. 4, the text directions train@ used) of the",
        "ground-truth edit of each test image, and of the same edit with one other factor changed too; best: share",
        "of images whose clean edit scores above every such variant.",
        "",
    ]
    for a in attrs:
        c = m["attributes"][a]["clip_check"]
        L.append(f"- {a} (n = {c['n']}): " + ", ".join(f"{k} {v:.2f}" for k, v in c.items()
                                                        if k not in ("n", "clean_edit_best"))
                 + f"; clean edit best on {_pct(c['clean_edit_best'])}")  # fmt: skip
    L += [""]
    L += [
        "## Homogeneity and consistency across timesteps (Sec. 5.3, App. L)",
        "",
        f"Clean-edit rate of f_t (per image) vs delta_h_t^mean (the mean of f_t over {N_FIT} training images) vs",
        "delta_h^global (its average over the editing interval), each applied to every test image; and the cosine",
        "of delta_h_t^mean to delta_h^global along t (min / mean).",
        "",
        "| attribute | n | f_t | delta_h_t mean | global | cos min | cos mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in attrs:
        h, c = m["attributes"][a]["homogeneity"], m["attributes"][a]["consistency"]
        vals = [h[k]["clean_edit"] for k in ("f_t (per image)", "delta_h_t mean", "global")]
        L.append(
            f"| {a} | {h['f_t (per image)']['n']} | "
            + " | ".join(_pct(v) for v in vals)
            + f" | {min(c['cos_to_global']):.2f} | {np.mean(c['cos_to_global']):.2f} |"
        )
    L += [""] + [f"![consistency {a}](consistency_{a}.png)" for a in attrs]
    L += ["", "## Linearity (Fig. 7)", "", "Mean continuous oracle score per coefficient (colour: share of the target",
          "colour in the shape; size: area relative to the original, signed; shape: IoU with the target shape minus",
          "IoU with the original). c < 0 was never trained.", "",
          "| attribute | n | " + " | ".join(f"c={c:g}" for c in SWEEP) + " | monotone mean | Spearman | "
          "monotone per image |", "|---" * (len(SWEEP) + 5) + "|"]  # fmt: skip
    for a in attrs:
        li = m["attributes"][a]["linearity"]
        L.append(
            f"| {a} | {li['n']} | "
            + " | ".join(f"{v:.2f}" for v in li["mean_score"])
            + f" | {li['mean_monotone']} | {li['spearman_mean']:.2f} | {_pct(li['per_image_monotone'])} |"
        )
        L.append(f"| {a} success | | " + " | ".join(_pct(v) for v in li["success"]) + " | | | |")
        L.append(f"| {a} clean edit | | " + " | ".join(_pct(v) for v in li["clean_edit"]) + " | | | |")
    L += [""] + [f"![sweep {a}](sweep_{a}.png)" for a in attrs] + ["", "![linearity](linearity.png)", ""]
    if "combination" in m:
        c = m["combination"]
        L += ["## Linear combination (Fig. 8)", "", f"{' + '.join(c['attributes'])} at once (n = {c['n']}): "
              + ", ".join(f"{k} {_pct(v)}" for k, v in c.items() if k not in ("attributes", "n")), "",
              "![combination](combination.png)", ""]  # fmt: skip
    r = m["robustness"]
    L += ["## Robustness (Fig. 9, App. D.2)", "",
          f"Random perturbations with the per-timestep norm of the trained {r['attribute']} edit, in h-space",
          "(delta_h) and in eps-space (delta eps, in P_t only as Asyrp does, or in P_t and D_t). Intact: every factor",
          "kept, mask IoU > 0.7, one clean shape.", "",
          "| perturbation | n | intact | factors kept | clean | mask IoU |", "|---|---|---|---|---|---|"]  # fmt: skip
    for k, v in r.items():
        if isinstance(v, dict) and "intact" in v:
            L.append(
                f"| {k} | {v['n']} | {_pct(v['intact'])} | {_pct(v['factors_kept'])} | {_pct(v['clean'])} | "
                f"{v['mask_iou']:.2f} |"
            )
    L += ["", "![robustness](robustness.png)", ""]
    return "\n".join(L) + "\n"


main = stage_main(run, __doc__.splitlines()[0])

if __name__ == "__main__":
    main()
