"""Benchmark every hot path against one plain U-Net forward on the same model, batch and device.

    python -m asyrp.bench --model small|toy|ddpm256 [--batch B] [--device cpu|cuda] [--repeats R] [--dtype bf16]

Prints one JSON object. Every ``*_ratio`` is the median, over repeats, of (time of the path) / (time of one
plain U-Net forward run right before it), in this process after warm-up, so ratios compare like with like
even when the machine's speed drifts during the run:

    inversion_step_ratio   one DDIM inversion step (forward + update)               limit 1.0
    plain_step_ratio       one generation step outside the editing interval          limit 1.0
    up_path_ratio          the up path alone (its share of a forward)
    edit_step_ratio        one step inside the interval: one down pass, f_t, two up passes (batched on GPU)
                           (limit 1 + up_path_ratio; naive two forwards = 2.0)
    naive_edit_step_ratio  the same step as two full passes, measured
    train_step_ratio       ours: down (no graph) + up + f_t + up with graph + CLIP loss + backward + SGD step,
                           P_t^source read from the invert stage's cache
    naive_train_step_ratio the official way: edited path as two full forwards (the second with a graph through
                           the whole U-Net), source path recomputed by a third forward, same loss and step
    stage_throughput_ratio images/s of bulk inversion into Parquet shards / (images/s of bare forwards at the
                           same number of passes), both timed in the bulk run's own process (limit 1.0)
    peak_rss_mb_1x/_4x     peak RSS of bulk inversion of N and 4N images (fresh processes; flat = bounded)

Candidate optimisations, each as a speedup of one plain forward (> 1: faster; kept only where it helps):

    opt_inference_mode_speedup  torch.no_grad time / torch.inference_mode time
    opt_channels_last_speedup   contiguous time / channels_last time (weights and input)
    opt_compile_speedup         eager time / torch.compile time (with --compile; opt_compile_s: compile time)
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODELS = {
    "small": ("offline:small", 32, "offline:tiny"),
    "toy": ("offline:toy", 32, "offline:toy-clip"),  # the shipped toy DDPM (2.5 M parameters)
    "ddpm256": ("offline:ddpm-256-random", 256, "ViT-B-16"),
}


def timed(fn, device) -> float:
    """Seconds of one call of fn (CUDA synchronised on both sides)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn, repeats: int, device) -> float:
    fn()  # warm-up (allocations, kernel selection)
    return statistics.median(timed(fn, device) for _ in range(repeats))


def median_ratio(fn, ref, repeats: int, device) -> float:
    """Median over repeats of time(fn) / time(ref), each pair timed back to back: load that drifts over the run
    (a shared machine) moves both alike, where separately taken medians drift apart."""
    fn(), ref()  # warm-up
    return statistics.median(timed(fn, device) / timed(ref, device) for _ in range(repeats))


def _inference(fn):
    def run():
        with torch.inference_mode():
            return fn()

    return run


def _clip(name: str, device):
    from .models.clip import load_clip

    return load_clip(name, None, device)  # random weights: the cost is the architecture's, not the weights'


def step_paths(model, clip, batch: int, repeats: int) -> dict:
    """Times of the per-step paths, as ratios to one plain forward."""
    from .api import new_direction
    from .core.ddim import alpha_prod, ddim_step, pred_original_sample
    from .core.hspace import asyrp_step
    from .core.losses import AsyrpLoss, LossConfig

    unet, dev = model.unet, model.unet.device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, model.image_size, model.image_size, generator=g).to(dev)
    t, a_t, a_prev = 500, alpha_prod(model.alphas_cumprod, 500), alpha_prod(model.alphas_cumprod, 475)
    direction, _ = new_direction(model, "a face", "a smiling face", t_edit=400)
    opt = torch.optim.SGD(direction.parameters(), lr=0.5)
    loss_fn = AsyrpLoss(clip, "a face", "a smiling face", LossConfig(templates=False))
    src_pred = torch.randn_like(x)
    src_emb = loss_fn.source_embedding(src_pred)
    forward = _inference(lambda: unet(x, t))
    out = {"forward_s": median_time(forward, repeats, dev)}
    with torch.inference_mode():
        state = unet.down(x, t)

    def edit_step():  # the step asyrp_generate runs
        return asyrp_step(unet, x, t, direction, a_t, a_prev).prev_sample

    def naive_edit_step():  # two full passes, delta_h inserted by a hook (the official way)
        s = unet.down(x, t)
        eps_edit = unet.up(unet.down(x, t), s.h + direction(s.h, t, s.emb))
        return ddim_step(x, unet(x, t), a_t, a_prev, eps_edit=eps_edit)

    def train_step():  # the step train_direction runs (asyrp_step with grad: eps_edit's graph into f_t)
        step = asyrp_step(unet, x, t, direction, a_t, a_prev)
        loss, _ = loss_fn(pred_original_sample(x, step.eps_edit, a_t), src_pred, src_emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return step.prev_sample

    def naive_train_step():
        with torch.no_grad():
            eps = unet(x, t)  # full pass 1: plain eps of the edited path
            eps_src = unet(x, t)  # full pass 3: the source path, recomputed every step
            p_src = pred_original_sample(x, eps_src, a_t)
        s = unet.down(x, t)  # full pass 2 with a graph through the whole U-Net
        eps_edit = unet.up(s, s.h + direction(s.h, t, s.emb))
        loss, _ = loss_fn(pred_original_sample(x, eps_edit, a_t), p_src, src_emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return ddim_step(x, eps, a_t, a_prev, eps_edit=eps_edit.detach())

    paths = {
        "up_path": _inference(lambda: unet.up(state)),
        "inversion_step": _inference(lambda: ddim_step(x, unet(x, t), a_t, a_prev)),
        "plain_step": _inference(lambda: ddim_step(x, unet(x, t), a_t, a_prev)),
        "edit_step": _inference(edit_step),
        "naive_edit_step": _inference(naive_edit_step),
        "train_step": train_step,
        "naive_train_step": naive_train_step,
    }
    out.update({f"{k}_ratio": median_ratio(fn, forward, repeats, dev) for k, fn in paths.items()})
    return out


def optimisations(model, batch: int, repeats: int, compile_: bool = False) -> dict:
    """Speedups of one plain forward from inference_mode, channels_last and (opt-in) torch.compile."""
    unet, dev, t = model.unet, model.unet.device, 500
    x = torch.randn(batch, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0)).to(dev)
    eager = _inference(lambda: unet(x, t))

    def no_grad():
        with torch.no_grad():
            return unet(x, t)

    out = {"opt_inference_mode_speedup": median_ratio(no_grad, eager, repeats, dev)}
    cl_unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out["opt_channels_last_speedup"] = median_ratio(eager, _inference(lambda: cl_unet(x_cl, t)), repeats, dev)
    if compile_:
        try:
            compiled = torch.compile(unet.unet)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x, t)
            out["opt_compile_s"] = time.perf_counter() - start
            out["opt_compile_speedup"] = median_ratio(eager, _inference(lambda: compiled(x, t)), repeats, dev)
        except Exception as exc:  # no compiler toolchain, unsupported op: report, don't fail the bench
            out["opt_compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def _bulk_worker(model_id: str, n: int, batch: int, device: str, repeats: int, queue) -> None:
    """In a fresh process: bulk-invert n generated images; report time, peak RSS and bare-forward time."""
    from .core.config import BulkInversion
    from .data.bulk import invert_to_shards
    from .data.datasets import make_shapes_dataset
    from .models.diffusion import load_diffusion

    model = load_diffusion(model_id, device)
    # Bare forwards timed in this process and thread state, before and after the stage (median of both): a
    # forward timed in another process, or only before, drifts with the machine's load (docs/benchmarks.md).
    x = torch.randn(batch, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(model.unet.device)
    forward = _inference(lambda: model.unet(x, 500))
    forward_times = [median_time(forward, repeats, torch.device(device))]
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes_dataset(Path(tmp) / "data", n, model.image_size, seed=1)
        items = [(f"{i:05d}", str(Path(tmp) / "data" / "images" / f"{i:05d}.png")) for i in range(n)]
        cfg = BulkInversion(n_inv_steps=10, n_train_steps=10, cache_min_t=300, shard_size=2 * batch, batch_size=batch)
        invert_to_shards(model, items, Path(tmp) / "latents", cfg, {"bench": True}, progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    forward_times.append(median_time(forward, repeats, torch.device(device)))
    queue.put(
        {
            "seconds": cfg.timings["seconds"],
            "passes": cfg.timings["passes"],
            "peak_rss_mb": peak,
            "forward_s": statistics.median(forward_times),
        }
    )


def bulk_stats(model_id: str, n: int, batch: int, device: str, repeats: int = 3) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_bulk_worker, args=(model_id, n, batch, device, repeats, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 (small), 32 (toy), 1 (ddpm256)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="U-Net autocast (CUDA only)")
    ap.add_argument("--bulk-images", type=int, default=None, help="N for the bulk-inversion runs (4N too)")
    ap.add_argument("--skip-bulk", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    args = ap.parse_args(argv)
    from .models.diffusion import load_diffusion

    model_id, size, clip_name = MODELS[args.model]
    batch = args.batch or {"small": 8, "toy": 32}.get(args.model, 1)
    device = torch.device(args.device)
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = load_diffusion(model_id, device, autocast_dtype=autocast)
    out = {
        "model": args.model,
        "model_id": model_id,
        "image_size": size,
        "batch": batch,
        "device": str(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 2),
        "h_shape": list(model.unet.h_shape()),
        "clip": clip_name,
    }
    out.update(step_paths(model, _clip(clip_name, device), batch, args.repeats))
    out.update(optimisations(model, batch, args.repeats, args.compile))
    if not args.skip_bulk:
        n = args.bulk_images or (4 * batch if args.model == "small" else 2 * batch)
        one = bulk_stats(model_id, n, batch, args.device, args.repeats)
        four = bulk_stats(model_id, 4 * n, batch, args.device, args.repeats)
        ideal = four["passes"] / batch * four["forward_s"]  # seconds if the stage were nothing but forwards
        out.update(
            stage_throughput_ratio=ideal / four["seconds"],
            bulk_forward_s=four["forward_s"],
            peak_rss_mb_1x=one["peak_rss_mb"],
            peak_rss_mb_4x=four["peak_rss_mb"],
            bulk_images=[n, 4 * n],
        )
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
