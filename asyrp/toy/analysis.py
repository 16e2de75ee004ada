"""The paper's h-space claims (Sec. 5.3, App. L) measured with the toy oracle instead of asserted.

Each function edits held-out latents x_T and scores the results with `asyrp.toy.oracle`:

    homogeneity   f_t (per image) vs its mean over N images, delta_h_t^mean, applied to every image
    consistency   delta_h_t^mean vs the global direction (its time average): cosine per t, and edits
    linearity     coefficient sweep (negative = extrapolation) -> a continuous oracle score per c
    combination   two directions added (e.g. colour + size): both targets reached, the rest kept
    robustness    a random delta_h with the norm of the trained one, in h-space (Asyrp: P_t only) versus a
                  random eps shift with the norm of the trained edit's eps change: oracle damage
    clip check    beyond the paper: does the CLIP loss prefer the clean edit? cos(dI, dT) of the ground-truth
                  edit vs the same edit with one other factor changed as well
    ceiling       beyond the paper: f_t trained on the ground truth (L1 of P_t^edit to the P_t of the truly
                  edited image, re-rendered by the generator), no CLIP: what the rest of the editing process
                  (DDPM, h-space, f_t, interval) allows, so the CLIP loss's share of a shortfall can be told apart

All generation uses `asyrp.core.edit.asyrp_generate` (the editing process of the pipeline), except the
eps-space perturbation, which needs eps itself shifted (`eps_space_generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..api import invert
from ..core.ddim import alpha_prod, ddim_step, generation_pairs, timestep_grid
from ..core.directions import DirectionConfig, build_direction
from ..core.edit import EditConfig, EditDirection, coefficient_sweep, mean_direction, per_image_noise
from ..core.edit import generate_in_chunks as generate
from ..core.hspace import asyrp_step
from ..core.train import TrainBatch, TrainConfig, source_trajectory, train_direction
from ..models.diffusion import DiffusionModel
from ..seeding import seeded
from . import evaluate, oracle
from .generator import render_shapes

Tensor = torch.Tensor


def scored(images: Tensor, f: dict, factor: str, value: int) -> dict:
    return evaluate.summarise(evaluate.score(oracle.read(images), f, factor, value, images.shape[-1]))


def intact(images: Tensor, f: dict) -> dict:
    """How undamaged images are: every factor of the original kept, mask IoU > 0.7, one clean shape."""
    r = oracle.read(images)
    keep = np.ones(len(r), bool)
    for k in evaluate.FACTORS:
        keep &= r.factors()[k] == f[k]
    iou = oracle.mask_iou(r.mask, oracle.expected_mask(f, images.shape[-1]))
    ok = keep & (iou > evaluate.PRESERVE_IOU) & r.clean
    return {"intact": float(ok.mean()), "factors_kept": float(keep.mean()), "clean": float(r.clean.mean()),
            "mask_iou": float(iou.mean()), "n": len(r)}  # fmt: skip


# ------------------------------------------------------------------------------------------ homogeneity
def homogeneity(model, direction: EditDirection, x_T_fit: Tensor, x_T: Tensor, f: dict, factor: str, value: int,
                cfg: EditConfig, seeds, per_image: Tensor | None = None) -> tuple[dict, dict]:  # fmt: skip
    """f_t vs delta_h_t^mean vs global, each applied to x_T; and the cosine of delta_h_t^mean to global per t.

    The mean direction is read from `x_T_fit` (the paper uses 20 images, App. L), not from the test images.
    `per_image`: f_t's edits of x_T already made (the edit stage's), else generated here.
    """
    table, glob = mean_direction(model, direction, x_T_fit, cfg)
    res = {}
    for name, d in (("f_t (per image)", direction), ("delta_h_t mean", table), ("global", glob)):
        done = per_image if d is direction else None
        res[name] = scored(generate(model, x_T, [d], cfg, seeds) if done is None else done, f, factor, value)
    values = table.module.table.detach()  # (K, C, h, w)
    g = glob.module.delta_h.detach().flatten()
    cos = torch.nn.functional.cosine_similarity(values.flatten(1), g[None], dim=1)
    consistency = {"t": list(table.config.timesteps), "cos_to_global": cos.tolist(),
                   "norm": values.flatten(1).norm(dim=1).tolist(), "global_norm": float(g.norm())}  # fmt: skip
    return res, consistency


# ------------------------------------------------------------------------------------------ linearity
def linearity(model, direction: EditDirection, x_T: Tensor, f: dict, factor: str, value: int, cfg: EditConfig,
              coefficients: Sequence[float], seeds, known: dict[float, Tensor] | None = None) -> dict:  # fmt: skip
    """Per coefficient: mean continuous oracle score, success rate; monotonicity of the mean and per image.

    `known`: {c: edits of x_T at c} already made (the edit stage's c = 0 and its coefficient); the rest is swept.
    """
    known = known or {}
    todo = [c for c in coefficients if c not in known]
    swept = coefficient_sweep(model, x_T, EditDirection(direction.module, direction.config), todo, cfg,
                              seeds).cpu() if todo else None  # fmt: skip
    sweep = torch.stack([known[c] if c in known else swept[todo.index(c)] for c in coefficients])
    scores, success, clean, clean_edit = [], [], [], []
    for k in range(len(coefficients)):
        r = oracle.read(sweep[k])
        scores.append(evaluate.attribute_score(r, f, factor, value, x_T.shape[-1]))
        success.append(float((r.factors()[factor] == value).mean()))
        clean.append(float(r.clean.mean()))
        clean_edit.append(float(evaluate.score(r, f, factor, value, x_T.shape[-1])["clean_edit"].mean()))
    s = np.stack(scores)  # (K, N)
    order = np.argsort(coefficients)
    mean = s.mean(1)[order]
    per_image_monotone = np.all(np.diff(s[order], axis=0) >= -0.02, axis=0)
    return {
        "coefficients": [float(coefficients[i]) for i in order], "mean_score": mean.tolist(),
        "success": [success[i] for i in order], "clean": [clean[i] for i in order],
        "clean_edit": [clean_edit[i] for i in order],
        "mean_monotone": bool(np.all(np.diff(mean) >= 0)), "spearman_mean": _spearman(np.sort(coefficients), mean),
        "per_image_monotone": float(per_image_monotone.mean()), "n": int(s.shape[1]),
    }, sweep  # fmt: skip


def _spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if np.std(ry) > 0 else 0.0


# ------------------------------------------------------------------------------------------ combination
def combination(model, parts: list[tuple[EditDirection, str, int]], x_T: Tensor, f: dict, cfg: EditConfig,
                seeds) -> tuple[dict, Tensor]:  # fmt: skip
    """Several directions at once: each target reached, all reached, the remaining factors kept."""
    edited = generate(model, x_T, [p[0] for p in parts], cfg, seeds)
    r = oracle.read(edited)
    res, all_ok = {}, np.ones(len(r), bool)
    for _, factor, value in parts:
        ok = r.factors()[factor] == value
        res[f"success_{factor}={evaluate.FACTORS[factor][value]}"] = float(ok.mean())
        all_ok &= ok
    changed = {fa: v for _, fa, v in parts}
    others = np.ones(len(r), bool)
    for k in evaluate.FACTORS:
        if k not in changed:
            others &= r.factors()[k] == f[k]
    geo = {k: v for k, v in changed.items() if k in ("shape", "size")}
    iou = oracle.mask_iou(r.mask, oracle.expected_mask(f, x_T.shape[-1], **geo))
    preserved = others & (iou > evaluate.PRESERVE_IOU)
    res.update(success_all=float(all_ok.mean()), preserved=float(preserved.mean()),
               clean_edit=float((all_ok & preserved & r.clean).mean()), n=len(r))  # fmt: skip
    return res, edited


# ------------------------------------------------------------------------------------------ robustness
class _Recorder(nn.Module):
    """Wraps a direction; records the mean per-image norm of delta_h per t."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.norms = inner, {}

    def forward(self, h, t, emb):
        out = self.inner(h, t, emb)
        self.norms[t] = float(out.flatten(1).norm(dim=1).mean())
        return out


class RandomH(nn.Module):
    """A random delta_h with a given norm per t (per image, seeded by t), shape of h."""

    def __init__(self, norms: dict[int, float], seed: int = 0):
        super().__init__()
        self.norms, self.seed = norms, seed

    def forward(self, h, t, emb):
        g = torch.Generator().manual_seed(self.seed * 1009 + int(t))
        z = torch.randn(h.shape, generator=g).to(h)
        return z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * self.norms.get(int(t), 0.0)


@torch.no_grad()
def eps_norms(model: DiffusionModel, direction: EditDirection, x_T: Tensor, cfg: EditConfig) -> dict[int, float]:
    """Mean per-image ||eps(x_t | delta_h) - eps(x_t)|| along the edited trajectory, per t >= t_edit."""
    unet, ac, x = model.unet, model.alphas_cumprod, x_T.to(model.unet.device)
    scale = direction.config.n_train_steps / cfg.n_gen_steps

    def delta_h(h: Tensor, t: int, emb: Tensor) -> Tensor:
        return direction.coefficient * scale * direction.module(h, t, emb)

    out = {}
    for t, t_prev in generation_pairs(timestep_grid(cfg.n_gen_steps, model.num_train_timesteps, cfg.spacing, cfg.t_0)):
        if t < cfg.t_edit:
            break
        step = asyrp_step(unet, x, t, delta_h, alpha_prod(ac, t), alpha_prod(ac, t_prev))
        out[int(t)] = float((step.eps_edit - step.eps).flatten(1).norm(dim=1).mean())
        x = step.prev_sample
    return out


@torch.no_grad()
def eps_space_generate(model: DiffusionModel, x_T: Tensor, norms: dict[int, float], cfg: EditConfig, seeds,
                       seed: int = 0, both: bool = False) -> Tensor:  # fmt: skip
    """Like asyrp_generate, but P_t uses eps + a random shift of norm norms[t] (D_t too when `both`)."""
    unet, ac, x = model.unet, model.alphas_cumprod, x_T.to(model.unet.device)
    grid = timestep_grid(cfg.n_gen_steps, model.num_train_timesteps, cfg.spacing, cfg.t_0)
    for step, (t, t_prev) in enumerate(generation_pairs(grid)):
        a_t, a_prev = alpha_prod(ac, t), alpha_prod(ac, t_prev)
        eps = unet(x, t)
        if t >= cfg.t_edit:
            g = torch.Generator().manual_seed(seed * 1009 + int(t))
            z = torch.randn(x.shape, generator=g).to(x)
            eps_shift = eps + z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * norms[int(t)]
            x = ddim_step(x, eps_shift if both else eps, a_t, a_prev, eps_edit=eps_shift)
        elif t >= cfg.t_boost:
            x = ddim_step(x, eps, a_t, a_prev)
        else:
            noise = per_image_noise(x.shape, seeds, step, x.device, x.dtype)
            x = ddim_step(x, eps, a_t, a_prev, eta=cfg.eta_boost, noise=noise)
    return x.cpu()


def robustness(model, direction: EditDirection, x_T: Tensor, f: dict, cfg: EditConfig, seeds,
               seed: int = 0, no_edit: Tensor | None = None) -> tuple[dict, dict[str, Tensor]]:  # fmt: skip
    """Oracle damage of random perturbations with the trained edit's per-t norms: h-space vs eps-space.

    `no_edit`: the reconstructions of x_T already made (the edit stage's), else generated here.
    """
    rec = _Recorder(direction.module)
    trained = generate(model, x_T, [EditDirection(rec, direction.config, direction.coefficient)], cfg, seeds,
                       chunk=len(x_T))  # fmt: skip
    scale = direction.config.n_train_steps / cfg.n_gen_steps
    h_norms = {t: v / scale for t, v in rec.norms.items()}  # RandomH output is rescaled like f_t's
    e_norms = eps_norms(model, direction, x_T, cfg)
    images = {
        "no edit": generate(model, x_T, [], cfg, seeds) if no_edit is None else no_edit,
        "trained delta_h": trained,
        "random delta_h (h-space)": generate(
            model, x_T, [EditDirection(RandomH(h_norms, seed), direction.config)], cfg, seeds
        ),  # fmt: skip
        "random eps shift (P_t only)": eps_space_generate(model, x_T, e_norms, cfg, seeds, seed),
        "random eps shift (P_t and D_t)": eps_space_generate(model, x_T, e_norms, cfg, seeds, seed, both=True),
    }
    res = {k: intact(v, f) for k, v in images.items()}
    res["norms"] = {"h": h_norms, "eps": e_norms}
    return res, images


# ------------------------------------------------------------------------------------------ ceiling
CEILING_L1_WEIGHT = 10.0  # the toy P_t's L1 to a target is ~0.05: x10 gives SGD steps of the CLIP loss's size


def edited_images(f: dict, image_size: int, /, **change) -> Tensor:
    """The generator's ground truth of an edit: the images of `f` with factors changed (e.g. colour=0), in
    [-1, 1], (N, 3, S, S); no change renders `f` itself."""
    g = oracle.replace_factors(f, image_size, **change)
    return torch.from_numpy(render_shapes(g, image_size)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


class TargetL1:
    """The loss interface of `train_direction` (clip_source "p_t"): L1 of P_t^edit to the target's P_t, no CLIP."""

    config = SimpleNamespace(clip_source="p_t")  # what train_direction reads of a loss's config

    def source_embedding(self, images: Tensor) -> None:
        return None

    def __call__(self, pred_edit: Tensor, pred_target: Tensor, _emb=None, _text=None) -> tuple[Tensor, dict]:
        l1 = (pred_edit - pred_target).abs().flatten(1).mean(1).mean()
        v = l1.item()
        return CEILING_L1_WEIGHT * l1, {"loss": CEILING_L1_WEIGHT * v, "clip": 0.0, "recon": v, "cos": 0.0}


def supervised_ceiling(model, config: DirectionConfig, train: TrainConfig, x_T_train: Tensor, f_train: dict,
                       x_T: Tensor, f: dict, factor: str, value: int, cfg: EditConfig, seeds,
                       batch_size: int = 8, seed: int = 0) -> dict:  # fmt: skip
    """Train a fresh f_t (the trained one's kind and config) to reproduce the ground-truth edit's P_t along
    the edited trajectory of each training image, then score its edits of the test latents `x_T`.

    Targets: the generator re-renders each training image with the edit applied; DDIM inversion of that to
    the same depth; its plain DDIM source trajectory gives P_t^target for t >= t_edit. Same optimiser, steps
    and epochs as `train` (and pass train@'s `batch_size`), so the only difference to the real f_t is the loss.
    """
    size = x_T.shape[-1]
    target = edited_images(f_train, size, **{factor: value}).to(model.unet.device)
    x_T_target = invert(model, target, train.n_train_steps, train.spacing, batch_size=64, t_0=train.t_0)
    grid = timestep_grid(train.n_train_steps, model.num_train_timesteps, train.spacing, train.t_0)
    p_target, _ = source_trajectory(model, x_T_target, grid, train.t_edit)

    def batches(epoch: int):
        order = np.random.default_rng(seed + epoch).permutation(len(x_T_train))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield TrainBatch(x_T_train[idx], source_pred={t: p[idx] for t, p in p_target.items()})

    with seeded(seed):
        direction = build_direction(config).to(model.unet.device)
    history = train_direction(model, direction, TargetL1(), batches, train)
    d = EditDirection(direction, config, 1.0)
    res = scored(generate(model, x_T, [d], cfg, seeds), f, factor, value)
    k = max(1, len(history) // 10)  # the fit: mean L1 over the first and the last tenth of the steps
    res.update(
        n_train=len(x_T_train),
        first_l1=float(np.mean([h["recon"] for h in history[:k]])),
        final_l1=float(np.mean([h["recon"] for h in history[-k:]])),
    )
    return res


@torch.no_grad()
def clip_check(clip, text_dirs: Tensor, f: dict, factor: str, value: int, size: int) -> dict:
    """cos(dI, dT) (Eq. 4) of ground-truth edits of the images of `f`, against the per-image text directions
    `text_dirs` (N, D): the clean edit, and the clean edit with one other factor also changed (next value).

    `clean_edit_best`: share of images whose clean edit scores above every entangled variant, i.e. where the
    CLIP loss's optimum among these is the clean edit.
    """
    from ..core.losses import directional_cos

    dev = text_dirs.device
    e0 = clip.encode_image(edited_images(f, size).to(dev))
    variants = {"clean edit": edited_images(f, size, **{factor: value})}
    for k in evaluate.FACTORS:
        if k != factor:
            also = (f[k] + 1) % len(evaluate.FACTORS[k])
            variants[f"edit + {k}"] = edited_images(f, size, **{factor: value, k: also})
    cos = {k: directional_cos(clip.encode_image(v.to(dev)), e0, text_dirs).cpu().numpy() for k, v in variants.items()}
    others = np.stack([c for k, c in cos.items() if k != "clean edit"])
    out = {k: float(c.mean()) for k, c in cos.items()}
    out.update(clean_edit_best=float((cos["clean edit"] > others.max(0)).mean()), n=len(e0))
    return out
