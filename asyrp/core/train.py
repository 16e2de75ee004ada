"""Training a direction f_t (Algorithm 2), batched over images.

For each batch and each grid timestep t from T down to t_edit:
    h, skips = down(x~_t)                       no graph: the U-Net is frozen and f_t sits after the mid block
    eps      = up(h)                            no graph: D_t uses the unedited eps
    eps_edit = up(h + f_t(h))                   graph through the up path into f_t only
    P_edit   = P_t(eps_edit);  loss = Eq. 7 against P_t^source (the source trajectory), mean over the batch
    x~_{t-1} = sqrt(alpha_{t-1}) P_edit + D_t(eps)    the *edited* trajectory drives the next step (detached)

The source trajectory (P_t^source along plain DDIM from x_T) does not depend on f_t: it is computed once
per image (``source_trajectory``) and reused for every epoch, or read from the inversion stage's cache.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.diffusion import DiffusionModel
from .config import TrainConfig
from .ddim import alpha_prod, ddim_step, generation_pairs, pred_original_sample, timestep_grid
from .hspace import asyrp_step
from .losses import AsyrpLoss

Tensor = torch.Tensor


@dataclass
class TrainBatch:
    """One batch of training images.

    x_T:         (B, C, H, W) inverted latents (or x_T ~ N(0, I) for App. J.2)
    source_pred: {t: (B, C, H, W)} P_t^source for every t >= t_edit on the grid; None -> computed here
    x0:          (B, C, H, W) CLIP source images when clip_source = "x0" (real images, or the plain
                 generation from x_T when training from noise); None -> the source trajectory's x0
    source_prompts: one source prompt per image (Delta T from each to the target); None -> the loss's prompt
    """

    x_T: Tensor
    source_pred: dict[int, Tensor] | None = None
    x0: Tensor | None = None
    ids: list[str] = field(default_factory=list)
    source_prompts: list[str] | None = None


def edit_interval(timesteps: Tensor, t_edit: int) -> list[tuple[int, int]]:
    """Generation pairs (t, t_prev) with t >= t_edit: the editing interval [T, t_edit]."""
    return [(t, tp) for t, tp in generation_pairs(timesteps) if t >= t_edit]


@torch.no_grad()
def source_trajectory(
    model: DiffusionModel, x_T: Tensor, timesteps: Tensor, t_min: int, full: bool = False
) -> tuple[dict[int, Tensor], Tensor | None]:
    """P_t^source for grid t >= t_min along plain DDIM (eta = 0) from x_T; with ``full``, also the x0 it ends at."""
    preds: dict[int, Tensor] = {}
    x = x_T
    for t, t_prev in generation_pairs(timesteps):
        if t < t_min and not full:
            break
        a_t, a_prev = alpha_prod(model.alphas_cumprod, t), alpha_prod(model.alphas_cumprod, t_prev)
        eps = model.unet(x, t)
        if t >= t_min:
            preds[t] = pred_original_sample(x, eps, a_t)
        x = ddim_step(x, eps, a_t, a_prev)
    return preds, (x if full else None)


def make_optimizer(params, config: TrainConfig):
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(params, lr=config.lr)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step_size, gamma=config.lr_gamma)


def tensor_batches(
    x_T: Tensor, batch_size: int, x0: Tensor | None = None, seed: int = 0
) -> Callable[[int], Iterable[TrainBatch]]:
    """In-memory data: epoch -> batches of a seeded shuffle (source trajectories cached across epochs)."""
    n = x_T.shape[0]

    def batches(epoch: int) -> Iterable[TrainBatch]:
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield TrainBatch(x_T[idx], x0=None if x0 is None else x0[idx], ids=[str(i) for i in idx])

    return batches


def train_direction(
    model: DiffusionModel,
    direction: nn.Module,
    loss_fn: AsyrpLoss,
    data: Callable[[int], Iterable[TrainBatch]] | Sequence[TrainBatch],
    config: TrainConfig,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Algorithm 2. Returns one stats dict per optimiser step (loss, clip, recon, cos, lr, t, epoch)."""
    config.validate(model.num_train_timesteps)
    unet, device = model.unet, model.unet.device
    timesteps = timestep_grid(config.n_train_steps, model.num_train_timesteps, config.spacing, config.t_0)
    interval = edit_interval(timesteps, config.t_edit)
    if not interval:
        raise ValueError(f"t_edit={config.t_edit} leaves no grid step in the editing interval")
    torch.manual_seed(config.seed)
    direction.train().to(device)
    opt, sched = make_optimizer(direction.parameters(), config)
    get_batches = data if callable(data) else (lambda epoch: data)
    keep = config.cache_sources if config.cache_sources is not None else config.epochs > 1
    cache: dict[str, tuple[dict[int, Tensor], Tensor | None]] | None = {} if keep else None  # id -> (P_t, x0)
    history: list[dict] = []
    for epoch in range(config.epochs):
        for b, batch in enumerate(get_batches(epoch)):
            src_pred, src_emb = _sources(model, loss_fn, batch, timesteps, config.t_edit, cache, device)
            text_dir = None
            if batch.source_prompts is not None:
                if len(batch.source_prompts) != batch.x_T.shape[0]:
                    raise ValueError(f"{len(batch.source_prompts)} source prompts for {batch.x_T.shape[0]} images")
                text_dir = loss_fn.text_directions(batch.source_prompts).to(device)
            stats = _train_trajectory(
                unet,
                model,
                direction,
                loss_fn,
                batch.x_T.to(device),
                interval,
                src_pred,
                src_emb,
                opt,
                sched,
                config,
                text_dir,
            )
            for s in stats:
                s.update(epoch=epoch, batch=b)
                history.append(s)
                if callback is not None:
                    callback(s)
        if config.lr_step_per == "epoch":  # official: scheduler_ft.step() once, after the image loop
            sched.step()
    direction.eval()
    return history


def _sources(model, loss_fn, batch: TrainBatch, timesteps, t_edit, cache, device):
    """P_t^source for the batch (given, cached per image id from an earlier epoch, or computed once) and
    E_I of the CLIP source images."""
    ids = batch.ids
    if batch.source_pred is not None:
        src_pred = {t: v.to(device) for t, v in batch.source_pred.items()}
        src_x0 = batch.x0
    elif ids and cache is not None and all(i in cache for i in ids):
        src_pred = {t: torch.stack([cache[i][0][t] for i in ids]) for t in cache[ids[0]][0]}
        src_x0 = batch.x0 if batch.x0 is not None else _stack_or_none([cache[i][1] for i in ids])
    else:
        need_x0 = batch.x0 is None and loss_fn.config.clip_source == "x0"
        src_pred, gen_x0 = source_trajectory(model, batch.x_T.to(device), timesteps, t_edit, full=need_x0)
        src_x0 = batch.x0 if batch.x0 is not None else gen_x0
        for k, i in enumerate(ids if cache is not None else []):  # per image: epochs reshuffle batches
            cache[i] = ({t: v[k] for t, v in src_pred.items()}, None if gen_x0 is None else gen_x0[k])
    missing = [t for t, _ in edit_interval(timesteps, t_edit) if t not in src_pred]
    if missing:
        raise ValueError(f"source trajectory lacks P_t for timesteps {missing[:5]}...: cached with another grid?")
    if loss_fn.config.clip_source == "x0":
        if src_x0 is None:
            raise ValueError("clip_source='x0' needs the source images (batch.x0) when source_pred is given")
        src_emb = loss_fn.source_embedding(src_x0.to(device))
    else:
        src_emb = None  # per-timestep E_I(P_t^source), computed in the loop
    return src_pred, src_emb


def _stack_or_none(items):
    return None if any(x is None for x in items) else torch.stack(items)


def _train_trajectory(unet, model, direction, loss_fn, x, interval, src_pred, src_emb, opt, sched, config, text_dir):
    """One batch through the editing interval; an optimiser step per t or per trajectory."""
    stats = []
    per_traj = config.step_per == "trajectory"
    if per_traj:
        opt.zero_grad(set_to_none=True)
    for t, t_prev in interval:
        a_t, a_prev = alpha_prod(model.alphas_cumprod, t), alpha_prod(model.alphas_cumprod, t_prev)
        step = asyrp_step(unet, x, t, direction, a_t, a_prev)  # eps_edit keeps its graph into f_t
        with torch.no_grad():
            emb_src = src_emb if src_emb is not None else loss_fn.source_embedding(src_pred[t])
        p_edit = pred_original_sample(x, step.eps_edit, a_t)
        loss, s = loss_fn(p_edit, src_pred[t], emb_src, text_dir)
        lr = opt.param_groups[0]["lr"]  # the rate this step uses (before the scheduler moves it)
        if per_traj:
            (loss / len(interval)).backward()
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if config.lr_step_per == "step":
                sched.step()
        s.update(
            t=t,
            lr=lr,
            delta_h_norm=step.delta_h.detach().flatten(1).norm(dim=1).mean().item(),
        )
        stats.append(s)
        x = step.prev_sample  # the edited trajectory drives the next step (detached)
    if per_traj:
        opt.step()
        if config.lr_step_per == "step":
            sched.step()
    return stats
