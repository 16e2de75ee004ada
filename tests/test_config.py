"""asyrp.core.config is the one schema: params.yaml's blocks take its bounds and choices, the library checks the
same ones, and the pipeline's configs are built from the blocks without losing a field."""

import copy
from dataclasses import fields
from pathlib import Path

import pytest

from asyrp.core.config import (
    BulkInversion,
    EditConfig,
    LossConfig,
    TrainConfig,
    build,
    check,
    check_depth,
    check_interval,
    constraints,
)
from pipeline import params as P

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# params block -> the config dataclass(es) some of its keys are settings of
BLOCK_CONFIGS = {
    "train": (TrainConfig, LossConfig),
    "edit": (EditConfig,),
    "inversion": (BulkInversion,),
}


@pytest.fixture(scope="module")
def raw() -> dict:
    return P.parse_yaml(PARAMS.read_text())


def _bad_values(f) -> list:
    """Values just outside a field's declared choices and bounds."""
    choices, bounds = constraints(f)
    bad = ["no-such-choice"] if choices else []
    step = 1 if f.type in ("int", "int | None") else 1e-3
    for kind, b in bounds.items():
        bad.append(b - step if kind == "ge" else b if kind == "gt" else b + step if kind == "le" else b)
    return bad


def _shared_keys():
    for block, configs in BLOCK_CONFIGS.items():
        model = getattr(P, block.capitalize())
        for cfg in configs:
            for f in fields(cfg):
                constrained = any(constraints(f))
                if constrained and f.name in model.model_fields and f.name not in ("t_0", "cache_min_t"):
                    yield block, cfg, f  # (t_0 and cache_min_t are params' own Timestep, 0..999)


@pytest.mark.parametrize("block,cfg,f", list(_shared_keys()), ids=lambda x: getattr(x, "name", str(x)))
def test_params_and_the_library_refuse_the_same_values(raw, block, cfg, f):
    for bad in _bad_values(f):
        data = copy.deepcopy(raw)
        data[block][f.name] = bad
        with pytest.raises(P.ParamsError, match=rf"{block}\.{f.name}: must be"):
            P.params_from_dict(data)
        ok = cfg(
            **({"t_edit": 500, "t_boost": 200} if cfg is EditConfig else {"t_edit": 500} if cfg is TrainConfig else {})
        )
        setattr(ok, f.name, bad)
        with pytest.raises(ValueError, match=f.name):
            check(ok)


def test_every_config_field_comes_from_a_block_or_is_named_here(raw):
    """A field added to a config is either a params key or deliberately left to its default (listed here)."""
    params = P.params_from_dict(copy.deepcopy(raw))
    given = {TrainConfig: {"t_edit", "cache_sources"}, EditConfig: {"t_edit", "t_boost", "t_0"},
             LossConfig: {"lambda_recon"}}  # fmt: skip
    blocks = [params.active_train, params.active_inversion, params.active_edit, params.attribute("red")]
    for cfg, own in given.items():
        for f in fields(cfg):
            assert f.name in own or any(hasattr(b, f.name) for b in blocks), f"{cfg.__name__}.{f.name}: no params key"
    train = params.train_config(300)
    tr, inv = params.active_train, params.active_inversion
    assert (train.t_edit, train.lr, train.n_train_steps, train.seed, train.spacing, train.t_0) == (
        300, tr.lr, tr.n_train_steps, tr.seed, inv.spacing, inv.t_0
    )  # fmt: skip
    edit = params.edit_config(300, 100, 500)
    ed = params.active_edit
    assert (edit.n_gen_steps, edit.eta_boost, edit.normalize_multi, edit.spacing) == (
        ed.n_gen_steps, ed.eta_boost, ed.normalize_multi, inv.spacing
    )  # fmt: skip
    loss = params.loss_config("red")
    spec = params.attribute("red")
    assert (loss.lambda_clip, loss.loss_form, loss.clip_source) == (spec.lambda_clip, tr.loss_form, tr.clip_source)
    assert loss.templates == tr.templates


def test_build_refuses_unknown_fields_and_prefers_explicit_values():
    class Src:
        lr, seed, n_train_steps = 0.1, 7, 12

    cfg = build(TrainConfig, Src(), t_edit=400, seed=3)
    assert (cfg.t_edit, cfg.lr, cfg.seed, cfg.n_train_steps, cfg.epochs) == (400, 0.1, 3, 12, 1)
    with pytest.raises(TypeError, match="no field"):
        build(TrainConfig, t_edit=1, learning_rate=0.1)


def test_the_rules_are_one_function_each():
    check_interval(500, 200, 999)
    with pytest.raises(ValueError, match=r"t_boost \(500\) must be < t_edit \(200\)"):
        check_interval(200, 500)
    with pytest.raises(ValueError, match="t_edit <= t_0=400"):
        check_interval(500, 200, 400)
    check_depth(None, "leading")
    check_depth(999, "leading", 1000)  # the full depth is every spacing's
    with pytest.raises(ValueError, match="t_0 needs spacing uniform or linspace"):
        check_depth(500, "leading")
    assert (
        LossConfig().lambda_recon_for(0.5) == pytest.approx(1.5)
        and LossConfig(lambda_recon=2).lambda_recon_for(0.5) == 2
    )
