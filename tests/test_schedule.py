"""t_edit / t_boost from LPIPS curves: exact crossings, clear errors, Table 2's ordering, real curves."""

import numpy as np
import pytest

from asyrp.core.schedule import LpipsCurves, choose_schedule, crossing_t, lpips_curves, t_edit_threshold


def test_crossing_exact_on_piecewise_linear():
    t = np.array([0, 100, 200, 300])
    v = np.array([0.0, 0.1, 0.3, 0.5])
    assert crossing_t(t, v, 0.2) == 150  # halfway between 100 and 200
    assert crossing_t(t, v, 0.3) == 200
    assert crossing_t(t, v, 0.21) == 155
    assert crossing_t(t, v, 0.0) == 0


def test_no_crossing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"never reaches 1\.2 \(max 0\.5"):
        crossing_t(np.array([0, 500, 999]), np.array([0.0, 0.3, 0.5]), 1.2, "LPIPS(x, x_t)")


def test_threshold_rule():
    assert t_edit_threshold(1.0) == pytest.approx(0.33)
    assert t_edit_threshold(0.899) == pytest.approx(0.33 - 0.33 * (1 - 0.899))
    assert t_edit_threshold(0.899) == pytest.approx(0.33 * 0.899)


def synthetic_curves():
    t = np.linspace(0, 999, 101)
    return LpipsCurves(t, lpips_pred_x0=0.5 * t / 999, lpips_xt=2.5 * np.sqrt(t / 999), n_images=10)


def test_more_distant_prompts_give_smaller_t_edit():
    """Table 2: lower CLIP similarity -> longer editing interval (smaller t_edit); t_boost unchanged."""
    curves = synthetic_curves()
    sims = [0.905, 0.899, 0.802, 0.667, 0.443]
    schedules = [choose_schedule(curves, s) for s in sims]
    t_edits = [s.t_edit for s in schedules]
    assert t_edits == sorted(t_edits, reverse=True) and len(set(t_edits)) == len(sims)
    assert len({s.t_boost for s in schedules}) == 1
    assert schedules[1].t_edit == int(np.ceil(0.33 * 0.899 / 0.5 * 999 - 1e-9))
    assert schedules[0].t_boost == int(np.ceil((1.2 / 2.5) ** 2 * 999 - 1e-9))


def test_overrides_and_validation():
    curves = synthetic_curves()
    s = choose_schedule(curves, 0.9, t_edit=600)
    assert s.t_edit == 600 and s.source == "override"
    with pytest.raises(ValueError, match="t_boost < t_edit"):
        choose_schedule(curves, 0.9, t_edit=100, t_boost=500)


def test_curves_on_the_small_model(small_model, random_lpips, images):
    curves = lpips_curves(small_model, random_lpips, images, n_curve_steps=5)
    assert curves.t.tolist() == [0, 249, 499, 749, 999]
    assert curves.lpips_xt[0] == pytest.approx(0.0, abs=1e-6)  # x_t at t = 0 is the image itself
    assert np.all(np.isfinite(curves.lpips_pred_x0)) and curves.lpips_xt[-1] > curves.lpips_xt[1]
    assert not curves.is_paper_metric
    merged = curves.merge(curves)
    assert merged.n_images == 8 and np.allclose(merged.lpips_xt, curves.lpips_xt)
