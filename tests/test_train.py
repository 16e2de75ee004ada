"""Algorithm 2: gradients reach f_t only, every image counts, the source trajectory is computed once."""

import pytest
import torch

from asyrp.api import invert, new_direction
from asyrp.core.losses import AsyrpLoss, LossConfig
from asyrp.core.train import TrainBatch, TrainConfig, source_trajectory, tensor_batches, train_direction

T_EDIT = 600
CFG = dict(t_edit=T_EDIT, n_train_steps=8)


@pytest.fixture(scope="module")
def latents(small_model):
    g = torch.Generator().manual_seed(1)
    low = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    x0 = torch.nn.functional.interpolate(low, size=32, mode="bilinear")
    return x0, invert(small_model, x0, n_inv_steps=8)


@pytest.fixture(scope="module")
def loss(tiny_clip):
    return AsyrpLoss(tiny_clip, "a shape", "a red shape", LossConfig(templates=False))


def _train(model, loss, data, seed=0, **kw):
    d, _ = new_direction(model, "a shape", "a red shape", t_edit=T_EDIT, n_train_steps=8, seed=seed)
    hist = train_direction(model, d, loss, data, TrainConfig(**{**CFG, **kw}))
    return d, hist


def test_gradients_reach_only_the_direction(small_model, loss, latents):
    x0, x_T = latents
    grad_modes = []
    hook = small_model.unet.unet.mid_block.register_forward_hook(
        lambda mod, inp, out: grad_modes.append((torch.is_grad_enabled(), out.requires_grad))
    )
    try:
        d, hist = _train(small_model, loss, tensor_batches(x_T, 2, x0=x0))
    finally:
        hook.remove()
    assert grad_modes and not any(enabled or req for enabled, req in grad_modes)  # down path: no graph
    assert all(p.grad is None for p in small_model.unet.parameters())
    assert all(p.grad is not None for p in d.parameters())
    steps = [t for t in (999, 856, 713) if t >= T_EDIT]  # grid of 8: 0, 142, ..., 713, 856, 999
    assert [h["t"] for h in hist[: len(steps)]] == steps
    assert len(hist) == 2 * len(steps)  # 2 batches x one optimiser step per t (official)


def test_loss_uses_every_image_of_the_batch(small_model, loss, latents):
    """Changing only the FIRST image of the batch changes the trained f_t (the official bug: it would not)."""
    x0, x_T = latents
    batch = [TrainBatch(x_T[:2], x0=x0[:2], ids=["a", "b"])]
    swapped = [TrainBatch(torch.stack([x_T[2], x_T[1]]), x0=torch.stack([x0[2], x0[1]]), ids=["c", "b"])]
    d1, _ = _train(small_model, loss, batch)
    d2, _ = _train(small_model, loss, swapped)
    assert any(not torch.allclose(p, q) for p, q in zip(d1.parameters(), d2.parameters(), strict=True))


def test_source_trajectory_is_computed_once(small_model, loss, latents, monkeypatch):
    x0, x_T = latents
    calls = {"down": 0}
    orig = small_model.unet.down

    def counting(*a, **k):
        calls["down"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(small_model.unet, "down", counting)
    _train(small_model, loss, tensor_batches(x_T, 4, x0=x0), epochs=1)
    one_epoch = calls["down"]
    calls["down"] = 0
    _train(small_model, loss, tensor_batches(x_T, 4, x0=x0), epochs=3)
    n_interval = 3  # t = 999, 856, 713
    # epoch 1: source (n_interval passes) + edited path (n_interval); later epochs: edited path only
    assert one_epoch == 2 * n_interval
    assert calls["down"] == one_epoch + 2 * n_interval


def test_cached_source_predictions_are_used(small_model, loss, latents):
    x0, x_T = latents
    from asyrp.core.ddim import timestep_grid

    preds, _ = source_trajectory(small_model, x_T[:2], timestep_grid(8), T_EDIT)
    assert sorted(preds) == [713, 856, 999]
    d1, h1 = _train(small_model, loss, [TrainBatch(x_T[:2], source_pred=preds, x0=x0[:2])])
    d2, h2 = _train(small_model, loss, [TrainBatch(x_T[:2], x0=x0[:2])])
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h2], rel=1e-5)


def test_deterministic_under_seed(small_model, loss, latents):
    x0, x_T = latents
    d1, h1 = _train(small_model, loss, tensor_batches(x_T, 2, x0=x0, seed=5))
    d2, h2 = _train(small_model, loss, tensor_batches(x_T, 2, x0=x0, seed=5))
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    assert all(torch.equal(p, q) for p, q in zip(d1.parameters(), d2.parameters(), strict=True))


def test_training_lowers_the_loss_on_one_image(small_model, loss, latents):
    x0, x_T = latents
    data = [TrainBatch(x_T[:1], x0=x0[:1], ids=["0"])]
    _, hist = _train(small_model, loss, data, epochs=15, optimizer="adam", lr=1e-2, step_per="trajectory")
    first, last = hist[:3], hist[-3:]
    assert sum(h["loss"] for h in last) < sum(h["loss"] for h in first)


def test_from_noise_uses_the_generated_image_as_clip_source(small_model, loss):
    """App. J.2: x_T ~ N(0, I); the CLIP source is the plain generation from x_T (not a grey image)."""
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, hist = _train(small_model, loss, [TrainBatch(x_T, ids=["n0", "n1"])])
    assert len(hist) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)


def test_adam_and_trajectory_steps(small_model, loss, latents):
    x0, x_T = latents
    _, hist = _train(
        small_model,
        loss,
        tensor_batches(x_T, 2, x0=x0),
        optimizer="adam",
        lr=1e-3,
        step_per="trajectory",
        lr_step_size=1,
        lr_gamma=0.5,
        lr_step_per="step",
    )
    assert [h["lr"] for h in hist] == [1e-3] * 3 + [5e-4] * 3  # scheduler steps once per trajectory


@pytest.mark.parametrize(
    "lr_step_per,expected",
    [
        # official: StepLR steps once per epoch, after the image loop; lr constant within an epoch
        ("epoch", [0.5] * 6 + [0.25] * 6),
        # per optimiser step: 2 epochs x 2 batches x 3 timesteps, halved every 2 steps
        ("step", [0.5 * 0.5 ** (i // 2) for i in range(12)]),
    ],
)
def test_learning_rate_sequence_of_a_two_epoch_run(small_model, loss, latents, lr_step_per, expected):
    x0, x_T = latents
    kw = dict(epochs=2, lr=0.5, lr_gamma=0.5, lr_step_size=1 if lr_step_per == "epoch" else 2)
    _, hist = _train(small_model, loss, tensor_batches(x_T, 2, x0=x0), lr_step_per=lr_step_per, **kw)
    assert [h["epoch"] for h in hist] == [0] * 6 + [1] * 6
    assert [h["lr"] for h in hist] == pytest.approx(expected)
    assert TrainConfig(t_edit=1).lr_step_per == "epoch"  # the official behaviour is the default


@pytest.mark.parametrize(
    "bad,msg",
    [
        (dict(t_edit=1000), "t_edit"),
        (dict(n_train_steps=1), ">= 2"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(lr=0), "lr"),
    ],
)
def test_bad_config(small_model, loss, latents, bad, msg):
    x0, x_T = latents
    with pytest.raises(ValueError, match=msg):
        _train(small_model, loss, tensor_batches(x_T, 2, x0=x0), **bad)


def test_per_image_source_prompts_steer_training(small_model, loss, latents):
    """TrainBatch.source_prompts: the pair's source for every image trains exactly as no prompts; others differ."""
    x0, x_T = latents
    base, _ = _train(small_model, loss, [TrainBatch(x_T[:2], x0=x0[:2], ids=["0", "1"])])
    same, _ = _train(
        small_model, loss, [TrainBatch(x_T[:2], x0=x0[:2], ids=["0", "1"], source_prompts=["a shape"] * 2)]
    )
    other, _ = _train(
        small_model, loss, [TrainBatch(x_T[:2], x0=x0[:2], ids=["0", "1"], source_prompts=["a blue shape"] * 2)]
    )
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(base.parameters(), same.parameters(), strict=True))
    assert any(not torch.allclose(p, q, atol=1e-6) for p, q in zip(base.parameters(), other.parameters(), strict=True))
    with pytest.raises(ValueError, match="1 source prompts for 2 images"):
        _train(small_model, loss, [TrainBatch(x_T[:2], x0=x0[:2], source_prompts=["a shape"])])
