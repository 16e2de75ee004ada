"""Stage `edit@<attribute>`: edit the test images with the trained direction (Algorithm 1, Eq. 9).

outputs/attributes/<a>/edit/images/<id>.png        edited test images at the attribute's coefficient
outputs/attributes/<a>/edit/recon/<id>.png         the same process without the direction (coefficient 0)
outputs/attributes/<a>/edit/edited.parquet         id, coefficient, edited image (uint8), for every run below
outputs/attributes/<a>/edit/grid.png               rows: original | reconstruction | edited
outputs/attributes/<a>/edit/strip.png              coefficient sweep (negative = extrapolation, Fig. 7)

Every test image up to evaluate.n_images is edited at coefficients {0, c}; the first edit.n_images also
at every coefficient of edit.sweep. Quality-boosting noise is seeded per image (edit.seed + row index).
Generation runs inversion.batch_size images at a time; the reconstruction takes the plain path (one U-Net
pass per step, the same result as coefficient 0), and the sweep reuses the images already made at 0 and c.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asyrp.core.directions import check_compatible, load_direction
from asyrp.core.edit import EditDirection, coefficient_sweep, generate_in_chunks
from asyrp.data.images import grid_image, save_images
from asyrp.data.latents import LatentStore, write_shard

from ..common import OUT, Layout, load_model, read_json, stage_main, write_json
from ..params import Params


def run(params: Params, attr: str, out: Path = OUT) -> dict:
    ed, ev, inv, paths = params.active_edit, params.active_evaluate, params.active_inversion, Layout(out)
    where, trained = paths.edit(attr), paths.train(attr)
    model = load_model(params)
    direction, dcfg = load_direction(trained.direction, model.unet.device)
    check_compatible(dcfg, model.unet.h_shape(), model.unet.temb_channels, model.model_id, model.num_train_timesteps)
    sched = read_json(trained.schedule_json)
    cfg = params.edit_config(sched["t_edit"], sched["t_boost"], sched.get("t_0"))
    coef = params.active_coefficients[attr]
    store = LatentStore(paths.invert.split("test"))
    n_eval = min(len(store), max(ev.n_images, ed.n_images))
    ids = store.ids[:n_eval]
    cols = store.get(ids, ["x_T", "image"])
    seeds = [ed.seed + i for i in range(n_eval)]
    main_coefs = [0.0, coef]
    chunk = inv.batch_size
    d = EditDirection(direction, dcfg, coef)
    edits = torch.stack([generate_in_chunks(model, cols["x_T"], [], cfg, seeds, chunk),
                         generate_in_chunks(model, cols["x_T"], [d], cfg, seeds, chunk)])  # fmt: skip
    n_show = min(ed.n_images, n_eval)
    sweep = sorted(set(ed.sweep) | {0.0, coef})
    extra = [c for c in sweep if c not in main_coefs]  # the sweep's other coefficients; <= chunk inputs a batch
    more = _sweep(model, direction, dcfg, cols["x_T"][:n_show], extra, cfg, seeds[:n_show], max(1, chunk // len(sweep)))
    strip = torch.stack([edits[main_coefs.index(c), :n_show] if c in main_coefs else more[extra.index(c)]
                         for c in sweep])  # fmt: skip
    save_images(edits[1], [where.image(i) for i in ids])
    save_images(edits[0], [where.recon_image(i) for i in ids])
    original = cols["image"].float().div(127.5).sub(1)
    grid_image([original[:n_show], edits[0][:n_show], edits[1][:n_show]], ["original", "recon", f"c={coef:g}"]).save(
        where.grid
    )
    grid_image([strip[:, j] for j in range(n_show)], col_labels=[f"{c:g}" for c in sweep]).save(where.strip)
    rows = [
        (f"{i}@{c:g}", i, c, img)
        for c, batch in zip(main_coefs, edits, strict=True)
        for i, img in zip(ids, batch, strict=True)
    ]
    rows += [
        (f"{i}@{c:g}", i, c, strip[k, j])
        for k, c in enumerate(sweep)
        for j, i in enumerate(ids[:n_show])
        if c not in main_coefs
    ]
    images = ((torch.stack([r[3] for r in rows]).clamp(-1, 1) + 1) * 127.5).round().byte()
    write_shard(
        where.edited_parquet,
        [r[0] for r in rows],
        {"image": images.numpy()},
        scalars={"image_id": [r[1] for r in rows], "coefficient": [float(r[2]) for r in rows]},
        metadata={
            "attribute": attr,
            "t_edit": cfg.t_edit,
            "t_boost": cfg.t_boost,
            "n_gen_steps": cfg.n_gen_steps,
            "model_id": model.model_id,
        },
    )
    summary = {
        "n_edited": n_eval,
        "coefficient": coef,
        "sweep": sweep,
        "t_edit": cfg.t_edit,
        "t_boost": cfg.t_boost,
        "n_gen_steps": cfg.n_gen_steps,
        "t_0": cfg.t_0,
    }
    write_json(where.summary_json, summary)
    return summary


def _sweep(model, direction, dcfg, x_T, coefs, cfg, seeds, chunk) -> torch.Tensor:
    """(K, N, 3, H, W) edits, batched K x chunk images at a time (K = 0: an empty tensor)."""
    if not coefs:
        return x_T.new_zeros((0, *x_T.shape)).cpu()
    parts = [
        coefficient_sweep(model, x_T[i : i + chunk], EditDirection(direction, dcfg), coefs, cfg, seeds[i : i + chunk])
        for i in range(0, x_T.shape[0], chunk)
    ]
    return torch.cat(parts, dim=1).cpu()


main = stage_main(run, __doc__.splitlines()[0], attribute=True)

if __name__ == "__main__":
    main()
