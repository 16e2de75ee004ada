"""Train the toy CLIP contrastively on generated shapes and captions that drop attributes at random.

    python -m asyrp.toy.train_clip --minutes 25 --out runs/toy_clip --export

A caption names each factor with probability 1/2 ("a red shape", "a large circle on a gray background",
"a shape"), so prompts that name one attribute are in-distribution. The loss is a multi-positive
InfoNCE: every caption the image satisfies is a positive (captions that drop attributes match many
images). Half the images are blurred and noised, so that CLIP also reads the blurry predicted x0 (P_t)
the directional loss sees. Writes ``<out>/loss.csv`` (step, loss, zero-shot accuracies), ``loss.png``,
``clip.safetensors`` (fp16, every --save-every steps) and with --export the shipped weights.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .clip_model import MEAN, STD, TOY_CLIP_CONFIG, VOCAB, WordTokenizer, build_toy_clip
from .generator import FACTORS, render_shapes, shape_factors
from .models import CLIP_WEIGHTS, load_fp32, save_fp16
from .train_ddpm import plot_loss

TRAIN_SEED_BASE = 20_000
EVAL_SEED = 999


def caption(f: dict, i: int, keep: np.ndarray) -> str:
    """Caption of image i naming the factors where keep[k] (shape, colour, size, background)."""
    name = {k: FACTORS[k][int(f[k][i])] for k in FACTORS}
    words = ["a"]
    if keep[2]:
        words.append(name["size"])
    if keep[1]:
        words.append(name["colour"])
    words.append(name["shape"] if keep[0] else "shape")
    if keep[3]:
        words += ["on", "a", name["background"], "background"]
    return " ".join(words)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur (down/up-sampling by a random factor) and noise half of the batch; x in [-1, 1]."""
    n = x.shape[0]
    sel = torch.rand(n, generator=gen) < 0.5
    if sel.any():
        y = x[sel]
        s = int(torch.randint(8, 33, (1,), generator=gen))
        y = F.interpolate(F.interpolate(y, size=(s, s), mode="bilinear", antialias=True, align_corners=False),
                          size=x.shape[-2:], mode="bilinear", align_corners=False)  # fmt: skip
        sig = torch.rand(y.shape[0], 1, 1, 1, generator=gen) * 0.3
        x = x.clone()
        x[sel] = (y + sig * torch.randn(y.shape, generator=gen)).clamp(-1.5, 1.5)
    return x


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def zero_shot_prompts() -> dict[str, list[str]]:
    return {
        "colour": [f"a {c} shape" for c in FACTORS["colour"]],
        "shape": [f"a {s}" for s in FACTORS["shape"]],
        "size": [f"a {s} shape" for s in FACTORS["size"]],
        "background": [f"a shape on a {b} background" for b in FACTORS["background"]],
    }


@torch.no_grad()
def zero_shot(model, tok, images: torch.Tensor, f: dict) -> dict[str, float]:
    """Zero-shot accuracy per factor: argmax over the factor's prompts. images (N, 3, 32, 32) in [-1, 1]."""
    model.eval()
    e = F.normalize(model.encode_image(normalise(images)), dim=-1)
    acc = {}
    for k, prompts in zero_shot_prompts().items():
        t = F.normalize(model.encode_text(tok(prompts)), dim=-1)
        acc[k] = float(((e @ t.T).argmax(1).numpy() == f[k]).mean())
    model.train()
    return acc


def train(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model, tok = build_toy_clip(args.seed).train(), WordTokenizer()
    if args.init:  # continue from saved weights (fp16 safetensors; the optimiser state starts afresh)
        model.load_state_dict(load_fp32(Path(args.init))[0])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fe = shape_factors(1000, 32, EVAL_SEED)
    xe = torch.from_numpy(render_shapes(fe, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    log = (out / "loss.csv").open("w", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "loss", "lr", "seconds", *zero_shot_prompts()])
    t0, running, step = time.time(), [], 0
    deadline = t0 + args.minutes * 60
    while step < args.steps and time.time() < deadline:
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        f = shape_factors(args.batch, 32, TRAIN_SEED_BASE + args.step0 + step)
        x = torch.from_numpy(render_shapes(f, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = degrade(x, gen)
        keep = rng.random((args.batch, 4)) < 0.5
        caps = [caption(f, i, keep[i]) for i in range(args.batch)]
        # positives: image i satisfies caption j where every named factor of j equals i's factor
        fac = np.stack([f[k] for k in FACTORS], 1)  # (B, 4)
        pos = np.all((fac[:, None, :] == fac[None, :, :]) | ~keep[None, :, :], axis=-1)  # (B_img, B_cap)
        pos = torch.from_numpy(pos)
        img = F.normalize(model.encode_image(normalise(x)), dim=-1)
        txt = F.normalize(model.encode_text(tok(caps)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        neg_inf = torch.finfo(logits.dtype).min
        l_i = -(torch.logsumexp(logits.masked_fill(~pos, neg_inf), 1) - torch.logsumexp(logits, 1)).mean()
        l_t = -(torch.logsumexp(logits.T.masked_fill(~pos.T, neg_inf), 1) - torch.logsumexp(logits.T, 1)).mean()
        loss = (l_i + l_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            acc = zero_shot(model, tok, xe, fe) if step % (args.log_every * 4) == 0 else {}
            writer.writerow([step, f"{np.mean(running):.4f}", f"{lr:.2e}", f"{time.time() - t0:.0f}",
                             *[f"{acc.get(k, float('nan')):.4f}" for k in zero_shot_prompts()]])  # fmt: skip
            log.flush()
            print(f"step {step} loss {np.mean(running):.4f} {time.time() - t0:.0f}s {acc}", flush=True)
            running = []
        if step % args.save_every == 0:
            save_fp16(model.state_dict(), out / "clip.safetensors", {"step": step, "config": TOY_CLIP_CONFIG})
            plot_loss(out / "loss.csv", out / "loss.png", "toy CLIP: multi-positive InfoNCE")
    acc = zero_shot(model, tok, xe, fe)
    print(f"final step {step}: zero-shot accuracy on 1000 held-out images {acc}", flush=True)
    meta = {"step": step, "config": TOY_CLIP_CONFIG, "vocab": list(VOCAB), "zero_shot": acc}
    save_fp16(model.state_dict(), out / "clip.safetensors", meta)
    plot_loss(out / "loss.csv", out / "loss.png", "toy CLIP: multi-positive InfoNCE")
    if args.export:
        save_fp16(model.state_dict(), CLIP_WEIGHTS, meta)
        print(f"exported {CLIP_WEIGHTS}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/toy_clip")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=25.0, help="stop after this wall time")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--step0", type=int, default=0, help="data offset when continuing (--init): fresh batches")
    p.add_argument("--init", default=None, help="start from these weights (e.g. <out>/clip.safetensors)")
    p.add_argument("--export", action="store_true", help=f"write the weights to {CLIP_WEIGHTS}")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
