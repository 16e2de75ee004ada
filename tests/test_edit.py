"""Algorithm 1 / Eq. 9: phases, pass counts, delta_h rescaling, multiple directions, sweeps, seeding."""

import math

import pytest
import torch

from asyrp.core.directions import DirectionConfig, GlobalDirection
from asyrp.core.edit import EditConfig, EditDirection, asyrp_generate, coefficient_sweep, mean_direction

H = (64, 8, 8)


def global_dir(seed=0, n_train_steps=10, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    cfg = DirectionConfig("global", H, 128, n_train_steps=n_train_steps)
    return GlobalDirection(H, torch.randn(H, generator=g) * scale), cfg


@pytest.fixture
def x_T():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def counting(monkeypatch, unet):
    calls = {"down": 0, "up": 0, "up_batch": []}
    down, up = unet.down, unet.up

    def c_down(*a, **k):
        calls["down"] += 1
        return down(*a, **k)

    def c_up(state, h=None):
        calls["up"] += 1
        calls["up_batch"].append((state.h if h is None else h).shape[0])
        return up(state, h)

    monkeypatch.setattr(unet, "down", c_down)
    monkeypatch.setattr(unet, "up", c_up)
    return calls


def test_phases_and_pass_counts(small_model, x_T, monkeypatch):
    d, cfg = global_dir()
    phases = []
    calls = counting(monkeypatch, small_model.unet)
    asyrp_generate(small_model, x_T, [EditDirection(d, cfg)], EditConfig(500, 200, 10), callback=phases.append)
    grid = [999, 888, 776, 666, 555, 444, 333, 222, 111, 0]
    expect = ["edit" if t >= 500 else "denoise" if t >= 200 else "boost" for t in grid]
    assert [p["phase"] for p in phases] == expect
    n_edit = expect.count("edit")
    assert calls["down"] == 10  # one down pass per step, inside and outside the interval
    assert calls["up"] == 10 + n_edit  # one up pass per step, a second (eps | delta_h) in the interval (CPU)
    assert calls["up_batch"][: 2 * n_edit] == [2] * 2 * n_edit and set(calls["up_batch"][2 * n_edit :]) == {2}


def test_zero_coefficient_is_plain_generation(small_model, x_T):
    d, cfg = global_dir()
    plain = asyrp_generate(small_model, x_T, [], EditConfig(500, 200, 10))
    zero = asyrp_generate(small_model, x_T, [EditDirection(d, cfg, 0.0)], EditConfig(500, 200, 10))
    edited = asyrp_generate(small_model, x_T, [EditDirection(d, cfg, 1.0)], EditConfig(500, 200, 10))
    assert torch.equal(plain, zero)
    assert (edited - plain).abs().mean() > 1e-3


def record_delta(monkeypatch, unet):
    seen = []
    orig = unet.eps_pair
    monkeypatch.setattr(unet, "eps_pair", lambda state, delta: (seen.append(delta.clone()), orig(state, delta))[1])
    return seen


def test_delta_h_rescaled_by_step_counts(small_model, x_T, monkeypatch):
    """f trained with S = 10 steps, generating with 20: each delta_h is halved (sum preserved)."""
    d, cfg = global_dir(n_train_steps=10)
    seen = record_delta(monkeypatch, small_model.unet)
    asyrp_generate(small_model, x_T, [EditDirection(d, cfg)], EditConfig(500, 200, 20))
    assert len(seen) == 10 and torch.allclose(seen[0][0], 0.5 * d.delta_h)
    assert torch.allclose(sum(s[0] for s in seen), 5 * d.delta_h, atol=1e-5)  # = 10 steps x f x 10/20


def test_multiple_directions_and_normalisation(small_model, x_T, monkeypatch):
    (d1, c1), (d2, c2) = global_dir(1, 10), global_dir(2, 10)
    seen = record_delta(monkeypatch, small_model.unet)
    dirs = [EditDirection(d1, c1, 1.5), EditDirection(d2, c2, -0.5)]
    asyrp_generate(small_model, x_T, dirs, EditConfig(500, 200, 10))
    asyrp_generate(small_model, x_T, dirs, EditConfig(500, 200, 10, normalize_multi=True))
    expect = 1.5 * d1.delta_h - 0.5 * d2.delta_h
    assert torch.allclose(seen[0][0], expect, atol=1e-6)
    assert torch.allclose(seen[5][0], expect / math.sqrt(2), atol=1e-6)


def test_sweep_equals_separate_runs(small_model, x_T):
    d, cfg = global_dir()
    coefs = [-1.0, 0.0, 2.0]
    sweep = coefficient_sweep(small_model, x_T, EditDirection(d, cfg), coefs, EditConfig(500, 200, 10), seeds=[7, 8])
    assert sweep.shape == (3, 2, 3, 32, 32)
    for k, c in enumerate(coefs):
        one = asyrp_generate(small_model, x_T, [EditDirection(d, cfg, c)], EditConfig(500, 200, 10), seeds=[7, 8])
        assert torch.allclose(sweep[k], one, rtol=1e-4, atol=1e-3)  # random model: |x| ~ 700


def test_boost_noise_is_per_image(small_model, x_T):
    cfg = EditConfig(500, 300, 10)
    both = asyrp_generate(small_model, x_T, [], cfg, seeds=[11, 12])
    alone = asyrp_generate(small_model, x_T[1:], [], cfg, seeds=[12])
    other_seed = asyrp_generate(small_model, x_T[1:], [], cfg, seeds=[13])
    assert torch.allclose(both[1:], alone, rtol=1e-4, atol=1e-3)  # batch-size kernels differ ~1e-6
    assert not torch.allclose(alone, other_seed)


def test_mean_and_global_direction_of_a_constant(small_model, x_T):
    d, cfg = global_dir()
    table, glob = mean_direction(small_model, EditDirection(d, cfg), x_T, EditConfig(500, 200, 10))
    assert table.config.kind == "delta_h_t", table.config
    # the official grid int(s * t_0 + 1e-6): 776.99.. -> 777
    assert table.config.timesteps == [999, 888, 777, 666, 555], table.config.timesteps
    assert torch.allclose(table.module.table, d.delta_h.expand(5, *H), atol=1e-6)
    assert torch.allclose(glob.module.delta_h, d.delta_h, atol=1e-6)


@pytest.mark.parametrize(
    "bad,msg",
    [
        (EditConfig(200, 500), "t_boost < t_edit"),
        (EditConfig(500, 200, 1), ">= 2"),
        (EditConfig(600, 200, t_0=500), "t_edit <= t_0=500"),
    ],
)
def test_bad_config(small_model, x_T, bad, msg):
    with pytest.raises(ValueError, match=msg):
        asyrp_generate(small_model, x_T, [], bad)


def test_partial_depth_edits_only_below_t_0(small_model, x_T, monkeypatch):
    """With t_0 the grid tops out at t_0: every step at t <= t_0, the interval [t_0, t_edit] edited."""
    d, cfg = global_dir()
    seen = []
    asyrp_generate(small_model, x_T, [EditDirection(d, cfg)], EditConfig(300, 100, 10, t_0=600), callback=seen.append)
    ts = [s["t"] for s in seen]
    assert max(ts) == 600 and len(ts) == 10
    assert [s["phase"] for s in seen if s["t"] >= 300] == ["edit"] * sum(t >= 300 for t in ts)
