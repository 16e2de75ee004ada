"""Train the toy DDPM on freshly generated shapes (every batch is new: the data never repeats).

    python -m asyrp.toy.train_ddpm --steps 40000 --out runs/toy_ddpm       # v2, bf16 where the CPU has it
    python -m asyrp.toy.train_ddpm --init asyrp/toy/assets/ddpm_v2 --steps 40000 --out runs/toy_ddpm
                                           # continue a committed run (its step count, new images, fresh AdamW)
    python -m asyrp.toy.train_ddpm --init runs/toy_ddpm --steps 40000 --export   # ship its EMA as offline:toy

Epsilon-prediction MSE on DDPM's linear 1000-step schedule, weighted by min-SNR-gamma (Hang et al. 2023:
w_t = min(SNR_t, gamma) / SNR_t with gamma = 5, which stops the many nearly noise-free steps from dominating the
gradient; ``--loss-weight uniform`` is DDPM's plain MSE). AdamW with warmup, constant lr, and a linear decay over
the last ``--decay-frac`` of ``--steps``; an EMA of the weights. The forward and backward run under CPU bf16
autocast where the CPU has bf16 instructions (``--bf16 auto``; master weights, optimiser and loss float32).

Writes to ``--out`` every ``--save-every`` steps: ``model.safetensors`` and ``ema.safetensors`` (fp16, small
enough to commit; ``--init`` continues from them), ``ckpt.pt`` (float32 with the optimiser, exact resume),
``loss.csv`` (step, loss, lr, seconds) and ``loss.png``; every ``--eval-every`` steps ``samples.csv``: the
share of 128 EMA samples (plain DDIM, ``--eval-steps`` steps over [0, 999]) that the oracle reads as one clean
shape. Training images use seeds 10_000 + step; the pipeline's held-out images use other seeds (see
`asyrp.toy.data`), so evaluation never sees a training image.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..core.ddim import ddim_generate, timestep_grid
from ..core.precision import autocast_bf16, resolve_bf16
from ..data.images import to_model_range
from ..models.diffusion import DDPM_SCHEDULE, schedule_from_config
from . import oracle
from .generator import render_shapes, shape_factors
from .models import DDPM_WEIGHTS, TOY_UNET_CONFIGS, build_toy_unet, load_fp32, save_fp16

TRAIN_SEED_BASE = 10_000
N_EVAL, EVAL_SEED = 128, 123


def shapes_batch(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1] from the generator with `seed`."""
    return to_model_range(render_shapes(shape_factors(n, size, seed), size))


def loss_weight(alpha_prod_t: torch.Tensor, kind: str, gamma: float) -> torch.Tensor:
    """Per-sample weight of the eps MSE: 1 (uniform) or min(SNR_t, gamma) / SNR_t (min-SNR-gamma)."""
    if kind == "uniform":
        return torch.ones_like(alpha_prod_t)
    snr = alpha_prod_t / (1 - alpha_prod_t)
    return snr.clamp(max=gamma) / snr


def learning_rate(step: int, args) -> float:
    """Warmup over ``--warmup`` steps (counted from this run's first step), then constant, then linear decay."""
    lr = args.lr * min(1.0, (step - args.start_step + 1) / args.warmup)
    decay_from = args.steps * (1 - args.decay_frac)
    if step > decay_from:
        lr *= max(0.05, (args.steps - step) / (args.steps - decay_from))
    return lr


@torch.no_grad()
def clean_rate(unet, abar: torch.Tensor, n_steps: int, bf16: bool) -> float:
    """Share of N_EVAL samples from fixed noise (plain DDIM, n_steps over [0, 999]) that are one clean shape."""
    x_T = torch.randn(N_EVAL, 3, 32, 32, generator=torch.Generator().manual_seed(EVAL_SEED))

    def eps(x, t):
        with autocast_bf16(bf16):
            return unet(x, t).sample.float()

    samples = torch.cat([ddim_generate(eps, x, abar, timestep_grid(n_steps)) for x in x_T.split(64)])
    return float(oracle.read(samples).clean.mean())


def plot_loss(csv_path: Path, png_path: Path, title: str) -> None:
    """loss.csv -> loss.png; matplotlib imported here (optional for the library, slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return
    x = np.array([float(r["step"]) for r in rows])
    y = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(x, y, lw=0.6, alpha=0.4)
    k = max(1, len(y) // 30)
    ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.5)
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _init(args, unet, ema) -> int:
    """Load ``--init`` (a run folder: model + ema safetensors; or one weights file); returns its step count."""
    src = Path(args.init)
    if src.is_dir():
        state, meta = load_fp32(src / "model.safetensors")
        unet.load_state_dict(state)
        ema.load_state_dict(load_fp32(src / "ema.safetensors")[0])
        return int(meta.get("step", 0))
    state, _ = load_fp32(src)
    unet.load_state_dict(state)
    ema.load_state_dict(state)
    return 0


def _continue_logs(src: Path, out: Path, upto: int) -> None:
    """loss.csv / samples.csv in ``out`` continue ``src``'s (``out`` itself on a resume) up to step ``upto``: rows a
    killed run logged after its last checkpoint are dropped, so no step appears twice."""
    for name in ("loss.csv", "samples.csv"):
        if (src / name).is_file():
            rows = list(csv.reader((src / name).open()))
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= upto]
            with (out / name).open("w", newline="") as f:
                csv.writer(f).writerows(keep)


def _save(out: Path, unet, ema, opt, step: int, args) -> None:
    torch.save({"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step},
               out / "ckpt.tmp")  # fmt: skip
    (out / "ckpt.tmp").replace(out / "ckpt.pt")
    meta = {"step": step, "config": TOY_UNET_CONFIGS[args.arch], "schedule": DDPM_SCHEDULE, "args": vars(args)}
    save_fp16(unet.state_dict(), out / "model.safetensors", {**meta, "weights": "model"})
    save_fp16(ema.state_dict(), out / "ema.safetensors", {**meta, "weights": "ema"})
    plot_loss(out / "loss.csv", out / "loss.png", f"toy DDPM {args.arch}: eps MSE ({args.loss_weight})")


def _append(path: Path, header: list[str], row: list) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerow(row)


def train(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = resolve_bf16(args.bf16)
    unet = build_toy_unet(args.seed, args.arch).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    step0 = 0
    if (out / "ckpt.pt").is_file() and not args.fresh:
        st = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)  # tensors and numbers: no code runs
        unet.load_state_dict(st["model"]), ema.load_state_dict(st["ema"]), opt.load_state_dict(st["opt"])
        step0 = st["step"]
        args.start_step = -args.warmup  # an exact resume needs no new warmup
        _continue_logs(out, out, step0)
        print(f"resumed {out / 'ckpt.pt'} at step {step0}")
    elif args.init:
        step0 = _init(args, unet, ema)
        args.start_step = step0
        _continue_logs(Path(args.init), out, step0)
        print(f"initialised from {args.init} (step {step0}); fresh AdamW with {args.warmup} warmup steps")
    _, abar = schedule_from_config(dict(DDPM_SCHEDULE))
    abar = abar.float()
    print(
        f"toy DDPM {args.arch}: {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters, "
        f"bf16 autocast {'on' if bf16 else 'off'}, {args.threads} threads, steps {step0} -> {args.steps}"
    )
    gen = torch.Generator().manual_seed(args.seed + step0)
    t0, running = time.time(), []
    for step in range(step0, args.steps):
        lr = learning_rate(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x0 = shapes_batch(args.batch, TRAIN_SEED_BASE + step)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast_bf16(bf16):
            pred = unet(xt, t).sample
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (loss_weight(abar[t], args.loss_weight, args.snr_gamma) * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - min(args.ema, (1 + step) / (10 + step)))
        running.append(per_sample.mean().item())  # the unweighted eps MSE: comparable across --loss-weight
        if (step + 1) % args.log_every == 0:
            _append(out / "loss.csv", ["step", "loss", "lr", "seconds"],
                    [step + 1, f"{np.mean(running):.5f}", f"{lr:.2e}", f"{time.time() - t0:.1f}"])  # fmt: skip
            print(f"step {step + 1} eps mse {np.mean(running):.4f} lr {lr:.1e} {time.time() - t0:.0f}s", flush=True)
            running = []
        if args.eval_every and (step + 1) % args.eval_every == 0:
            rate = clean_rate(ema, abar, args.eval_steps, bf16)
            row = [step + 1, f"{rate:.4f}", N_EVAL, args.eval_steps]
            _append(out / "samples.csv", ["step", "clean", "n", "ddim_steps"], row)
            print(f"step {step + 1}: {rate:.1%} of {N_EVAL} EMA samples one clean shape", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            _save(out, unet, ema, opt, step + 1, args)
    if args.export:
        src = out / f"{args.export_weights}.safetensors"
        state, meta = load_fp32(src)
        save_fp16(state, DDPM_WEIGHTS, meta)
        print(f"exported {src} -> {DDPM_WEIGHTS}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/toy_ddpm")
    p.add_argument("--arch", choices=sorted(TOY_UNET_CONFIGS), default="v2")
    p.add_argument("--steps", type=int, default=40000, help="the run's last step (the lr decays towards it)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay-frac", type=float, default=0.3, help="linear lr decay over this last share of --steps")
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--loss-weight", choices=["min-snr", "uniform"], default="min-snr")
    p.add_argument("--snr-gamma", type=float, default=5.0)
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="CPU bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=1000, help="oracle clean rate of EMA samples (0: never)")
    p.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of those samples (the edits' count)")
    p.add_argument("--init", default=None, help="a run folder (model + ema .safetensors) or a weights file")
    p.add_argument("--fresh", action="store_true", help="ignore an existing ckpt.pt in --out")
    p.add_argument("--export", action="store_true", help=f"write the weights to {DDPM_WEIGHTS}")
    p.add_argument("--export-weights", choices=["ema", "model"], default="ema", help="EMA or raw weights")
    args = p.parse_args(argv)
    args.start_step = 0
    if args.init and not Path(args.init).exists():
        p.error(f"--init {args.init}: no such file or folder")
    train(args)


if __name__ == "__main__":
    main()
