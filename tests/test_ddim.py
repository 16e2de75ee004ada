"""DDIM as pure functions: against diffusers' DDIMScheduler, Theorem 1, and inversion/reconstruction."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from asyrp.core.ddim import (
    alpha_prod,
    ddim_generate,
    ddim_invert,
    ddim_step,
    generation_pairs,
    inversion_pairs,
    pred_original_sample,
    theorem1_factor,
    timestep_grid,
)

T = 1000


@pytest.fixture(scope="module")
def scheduler():
    return DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
    )


@pytest.fixture(scope="module")
def alphas(scheduler):
    return torch.cumprod(1 - scheduler.betas.double(), 0)


def test_uniform_grid_is_the_official_one():
    g = timestep_grid(40)
    assert g[:4].tolist() == [0, 25, 51, 76] and g[-1] == 999 and len(g) == 40
    assert torch.all(g[1:] > g[:-1])
    assert timestep_grid(1000).tolist() == list(range(1000))  # S = T: every timestep, no repeats
    assert timestep_grid(10)[7] == 777  # 776.9999.. without the official + 1e-6


@pytest.mark.parametrize("t_0", [999, 500])
def test_uniform_grid_matches_the_official_formula_for_every_step_count(t_0):
    # diffusion_latent.py: seq = [int(s + 1e-6) for s in np.linspace(0, 1, S) * t_0]
    for n_steps in range(2, t_0 + 2):
        official = [int(s + 1e-6) for s in np.linspace(0, 1, n_steps) * t_0]
        assert timestep_grid(n_steps, T, "uniform", t_0).tolist() == official, n_steps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_other_spacings_match_diffusers(spacing):
    s = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0)
    s.set_timesteps(20)
    assert sorted(s.timesteps.tolist()) == timestep_grid(20, T, spacing).tolist()


def test_grid_errors():
    with pytest.raises(ValueError, match=">= 2"):
        timestep_grid(1)
    with pytest.raises(ValueError, match="unknown spacing"):
        timestep_grid(10, spacing="cosine")
    with pytest.raises(ValueError, match="t_0 must be in"):
        timestep_grid(10, t_0=1000)
    with pytest.raises(ValueError, match="needs spacing"):
        timestep_grid(10, spacing="leading", t_0=500)
    with pytest.raises(ValueError, match="exceeds"):
        timestep_grid(12, t_0=10)


def test_partial_grid_is_the_official_t_0_one():
    """Official: seq = linspace(0, 1, S) * t_0; t_0 = None is the full T - 1."""
    g = timestep_grid(20, t_0=700)
    assert g[0] == 0 and g[-1] == 700 and len(g) == 20
    assert g.tolist() == (np.linspace(0, 1, 20) * 700).astype(np.int64).tolist()
    assert timestep_grid(20, t_0=999).tolist() == timestep_grid(20).tolist()
    assert timestep_grid(20, spacing="linspace", t_0=500)[-1] == 500


@pytest.mark.parametrize("n_steps,t", [(40, 999), (40, 500), (20, 50), (50, 19), (10, 99)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_step_equals_diffusers(scheduler, alphas, n_steps, t, eta):
    """Same (t, t_prev) as DDIMScheduler: prev = t - T // n_steps (alpha 1 below 0)."""
    scheduler.set_timesteps(n_steps)
    g = torch.Generator().manual_seed(t)
    x, eps, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    ref = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    t_prev = t - T // n_steps
    ours = ddim_step(x, eps, alpha_prod(alphas, t), alpha_prod(alphas, t_prev), eta=eta, noise=noise)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_theorem1_shift_in_both_terms_cancels(alphas, scheduler):
    """Shifting eps in P_t and D_t moves x_{t-1} by the analytic factor only; in P_t alone, a lot."""
    betas = scheduler.betas.double()
    g = torch.Generator().manual_seed(0)
    x, eps, shift = (torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (10, 300, 700, 999):
        a_t, a_prev = alpha_prod(alphas, t), alpha_prod(alphas, t - 1)
        base = ddim_step(x, eps, a_t, a_prev)
        both = ddim_step(x, eps + shift, a_t, a_prev)
        factor = theorem1_factor(a_t, float(betas[t]))
        assert torch.allclose(both - base, factor * shift, atol=1e-9)
        assert abs(factor) < 0.02
        asym = ddim_step(x, eps, a_t, a_prev, eps_edit=eps + shift)  # Eq. 6
        asym_factor = math.sqrt(a_prev) * math.sqrt(1 - a_t) / math.sqrt(a_t)
        assert torch.allclose(asym - base, -asym_factor * shift, atol=1e-9)
        assert asym_factor > 10 * abs(factor)  # >= 14x at t = 10, ~1000x at t = 999


def test_pairs_cover_the_grid():
    g = timestep_grid(5)
    assert list(inversion_pairs(g)) == [(0, 249), (249, 499), (499, 749), (749, 999)]
    assert list(generation_pairs(g)) == [(999, 749), (749, 499), (499, 249), (249, 0), (0, -1)]


def gaussian_eps(alphas, mu=0.2, var=0.25):
    """The exact eps-prediction for data ~ N(mu, var I): E[noise | x_t]."""

    def eps_fn(x, t):
        a = alpha_prod(alphas, t)
        return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * var + 1 - a)

    return eps_fn


def test_reconstruction_with_exact_denoiser_converges(alphas, images):
    """Inversion then generation: first-order error, 0.07 mean at 40 steps, -> 0 as S grows."""
    eps_fn, x0 = gaussian_eps(alphas), images.double()
    errors = {}
    for n in (10, 40, 200):
        g = timestep_grid(n)
        rec = ddim_generate(eps_fn, ddim_invert(eps_fn, x0, alphas, g), alphas, g)
        errors[n] = (rec - x0).abs().mean().item()
    assert errors[40] < 0.1 and errors[200] < 0.02
    assert errors[200] < errors[40] < errors[10]


def test_partial_inversion_reconstructs(alphas, images):
    """Inverting only to t_0 < T and generating back from x_{t_0} is at least as exact as the full depth."""
    eps_fn, x0 = gaussian_eps(alphas), images.double()
    errors = {}
    for t_0 in (None, 500):
        g = timestep_grid(40, t_0=t_0)
        errors[t_0] = (ddim_generate(eps_fn, ddim_invert(eps_fn, x0, alphas, g), alphas, g) - x0).abs().mean().item()
    assert errors[500] < 0.1 and errors[500] <= errors[None] + 1e-6


def test_reconstruction_on_small_model(small_model, images):
    """The random-weight U-Net is no consistent ODE field: its error is large, but falls with S."""
    m, errors = small_model, {}
    for n in (10, 40):
        g = timestep_grid(n)
        rec = ddim_generate(m.unet, ddim_invert(m.unet, images, m.alphas_cumprod, g), m.alphas_cumprod, g)
        errors[n] = (rec - images).abs().mean().item()
    print("small-model reconstruction L1:", errors)
    assert errors[40] < errors[10]


def test_invert_callback_gives_pred_x0(small_model, images):
    seen = []
    ddim_invert(small_model.unet, images, small_model.alphas_cumprod, timestep_grid(4), callback=seen.append)
    assert [e["t"] for e in seen] == [0, 333, 666]
    e = seen[1]
    ref = pred_original_sample(e["sample"], e["eps"], alpha_prod(small_model.alphas_cumprod, 333))
    assert torch.equal(e["pred_original_sample"], ref)


def test_eta_needs_noise(alphas):
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, x, alpha_prod(alphas, 500), alpha_prod(alphas, 400), eta=1.0)
