"""Train the toy DDPM on freshly generated shapes (every batch is new: the data never repeats).

    python -m asyrp.toy.train_ddpm --steps 6000 --out runs/toy_ddpm     # then --export to ship it
    python -m asyrp.toy.train_ddpm --init asyrp/toy/assets/ddpm.safetensors --steps 3000 --out runs/more
                                                                         # continue from shipped weights

Epsilon-prediction MSE on DDPM's linear 1000-step schedule, AdamW with warmup and a linear decay over the
last 30% of steps, an EMA of the weights. ``--export-weights`` picks what ships: the EMA, or the raw weights
(better when the run ends in the low-lr decay, which the EMA still averages with earlier weights).
Writes ``<out>/loss.csv`` (step, loss, lr, seconds), ``<out>/loss.png``,
``<out>/ckpt.pt`` (resumable) and ``<out>/ema.safetensors`` (fp16) every ``--save-every`` steps.
Training images use seeds 10_000 + step; the pipeline's held-out images use other seeds (see
`asyrp.toy.data`), so evaluation never sees a training image.
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.diffusion import DDPM_SCHEDULE, schedule_from_config
from .generator import render_shapes, shape_factors
from .models import DDPM_WEIGHTS, TOY_UNET_CONFIG, build_toy_unet, load_fp32, save_fp16

TRAIN_SEED_BASE = 10_000


def shapes_batch(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1] from the generator with `seed`."""
    img = render_shapes(shape_factors(n, size, seed), size)
    return torch.from_numpy(img).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


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


def train(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    unet = build_toy_unet(args.seed).train()
    if args.init:  # continue from exported weights (fresh optimiser, warmup, its own step count and seeds)
        unet.load_state_dict(load_fp32(Path(args.init))[0])
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    step0 = 0
    ckpt = out / "ckpt.pt"
    if ckpt.is_file() and not args.fresh:
        st = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and numbers only: no code runs
        unet.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step0 = st["step"]
        print(f"resumed at step {step0}")
    _, abar = schedule_from_config(dict(DDPM_SCHEDULE))
    abar = abar.float()
    log = (out / "loss.csv").open("a" if step0 else "w", newline="")
    writer = csv.writer(log)
    if not step0:
        writer.writerow(["step", "loss", "lr", "seconds"])
    gen = torch.Generator().manual_seed(args.seed + step0)
    t0, running = time.time(), []
    for step in range(step0, args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if step > args.steps * 0.7:  # linear decay over the last 30%
            lr *= max(0.05, (args.steps - step) / (args.steps * 0.3))
        for g in opt.param_groups:
            g["lr"] = lr
        x0 = shapes_batch(args.batch, TRAIN_SEED_BASE + args.seed_offset + step)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        running.append(loss.item())
        if (step + 1) % args.log_every == 0:
            writer.writerow([step + 1, f"{np.mean(running):.5f}", f"{lr:.2e}", f"{time.time() - t0:.1f}"])
            log.flush()
            print(f"step {step + 1} loss {np.mean(running):.4f} {time.time() - t0:.0f}s", flush=True)
            running = []
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            torch.save({"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "step": step + 1}, ckpt.with_suffix(".tmp"))  # fmt: skip
            ckpt.with_suffix(".tmp").replace(ckpt)
            meta = {"step": step + 1, "config": TOY_UNET_CONFIG, "schedule": DDPM_SCHEDULE, "args": vars(args)}
            save_fp16(ema.state_dict(), out / "ema.safetensors", meta)
            plot_loss(out / "loss.csv", out / "loss.png", "toy DDPM: eps MSE")
    log.close()
    if args.export:
        state = (ema if args.export_weights == "ema" else unet).state_dict()
        meta = {"step": args.steps, "config": TOY_UNET_CONFIG, "weights": args.export_weights, "args": vars(args)}
        save_fp16(state, DDPM_WEIGHTS, meta)
        print(f"exported {DDPM_WEIGHTS}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/toy_ddpm")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--init", default=None, help="start from these weights (.safetensors), e.g. the shipped ones")
    p.add_argument(
        "--seed-offset", type=int, default=0, help="data seeds 10_000 + offset + step (continuing: new images)"
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--export", action="store_true", help=f"write the weights to {DDPM_WEIGHTS}")
    p.add_argument("--export-weights", choices=["ema", "model"], default="ema", help="EMA or raw weights")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
