"""The toy world: oracle exactness, the shipped weights, a tiny end-to-end edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyrp.toy import evaluate, oracle
from asyrp.toy.generator import FACTORS, render_shapes, shape_factors
from asyrp.toy.models import CLIP_WEIGHTS, DDPM_WEIGHTS


def test_oracle_reads_every_factor_exactly():
    f = shape_factors(600, 32, seed=7)
    r = oracle.read(render_shapes(f, 32))
    for k in FACTORS:
        np.testing.assert_array_equal(r.factors()[k], f[k], err_msg=k)
    np.testing.assert_array_equal(r.cx, f["cx"])
    np.testing.assert_array_equal(r.cy, f["cy"])
    assert r.clean.all()
    assert oracle.mask_iou(r.mask, oracle.expected_mask(f, 32)).min() == 1.0


def test_oracle_flags_unclean_images():
    f = shape_factors(4, 32, seed=1)
    img = render_shapes(f, 32).copy()
    img[0] = img[0, :, ::-1] // 2 + img[0] // 2  # two half-bright shapes
    img[1, :4, :4] = (0, 255, 0) if f["colour"][1] != 1 else (255, 0, 0)  # a second blob in another colour
    img[2] = np.random.default_rng(0).integers(0, 256, img[2].shape, dtype=np.uint8)  # noise
    r = oracle.read(img)
    assert not r.clean[:3].any() and r.clean[3]


def test_oracle_on_tensors_and_edit_scoring():
    f = shape_factors(8, 32, seed=3)
    x = torch.from_numpy(render_shapes(f, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    r = oracle.read(x)
    same = evaluate.score(r, f, "colour", 0)
    np.testing.assert_array_equal(same["success"], f["colour"] == 0)
    assert same["preserved"].all()
    g = {k: v.copy() for k, v in f.items()}
    g["colour"][:] = 0  # the "edited" images: all red, same everything else
    m = evaluate.score(oracle.read(render_shapes(g, 32)), f, "colour", 0)
    assert m["clean_edit"].all()


def test_edit_target_parsing():
    assert evaluate.edit_target("a shape", "a red shape") == ("colour", 0)
    assert evaluate.edit_target("a shape", "a circle") == ("shape", 0)
    assert evaluate.edit_target("a shape", "a large shape") == ("size", 1)
    with pytest.raises(ValueError):
        evaluate.edit_target("a shape", "a nice shape")


def test_shipped_weights_are_small_and_load():
    assert DDPM_WEIGHTS.is_file() and CLIP_WEIGHTS.is_file()
    assert DDPM_WEIGHTS.stat().st_size + CLIP_WEIGHTS.stat().st_size <= 20 * 2**20
    from asyrp.models.clip import load_clip
    from asyrp.models.diffusion import load_diffusion

    model = load_diffusion("offline:toy")
    assert model.unet.h_shape() == (128, 8, 8)
    clip = load_clip("offline:toy-clip", None)
    assert clip.is_pretrained
    f = shape_factors(40, 32, seed=11)
    x = torch.from_numpy(render_shapes(f, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    prompts = [f"a {c} shape" for c in FACTORS["colour"]]
    pred = (clip.encode_image(x) @ clip.encode_text(prompts).T).argmax(1).numpy()
    assert (pred == f["colour"]).mean() >= 0.9  # a trained CLIP reads colour zero-shot


def test_tiny_end_to_end_edit():
    """Invert 2 images, train a direction for a few steps, edit: runs and the oracle can score it."""
    from asyrp.api import invert, new_direction
    from asyrp.core.edit import EditConfig, EditDirection, asyrp_generate
    from asyrp.core.losses import AsyrpLoss, LossConfig
    from asyrp.core.train import TrainConfig, tensor_batches, train_direction
    from asyrp.models.clip import load_clip
    from asyrp.models.diffusion import load_diffusion

    torch.manual_seed(0)
    model, clip = load_diffusion("offline:toy"), load_clip("offline:toy-clip", None)
    f = shape_factors(2, 32, seed=5)
    x0 = torch.from_numpy(render_shapes(f, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    x_T = invert(model, x0, n_inv_steps=10)
    direction, dcfg = new_direction(model, "a shape", "a red shape", t_edit=600, t_boost=200, n_train_steps=10)
    loss = AsyrpLoss(clip, "a shape", "a red shape", LossConfig(lambda_clip=1.0, templates=False))
    hist = train_direction(
        model, direction, loss, tensor_batches(x_T, 2, x0), TrainConfig(t_edit=600, n_train_steps=10)
    )
    assert hist and all(np.isfinite(h["loss"]) for h in hist)
    out = asyrp_generate(model, x_T, [EditDirection(direction, dcfg)], EditConfig(600, 200, n_gen_steps=10))
    m = evaluate.score(oracle.read(out), f, "colour", 0)
    assert set(m) >= {"success", "preserved", "clean_edit"} and len(m["success"]) == 2


@pytest.mark.parametrize("factor,value", [("colour", 0), ("shape", 0), ("size", 1), ("background", 2)])
def test_ground_truth_edits_change_one_factor(factor, value):
    from asyrp.toy.analysis import edited_images

    f = shape_factors(50, 32, seed=13)
    r = oracle.read(edited_images(f, 32, **{factor: value}))
    assert (r.factors()[factor] == value).all()
    for k in FACTORS:
        if k != factor:
            np.testing.assert_array_equal(r.factors()[k], f[k], err_msg=k)
    change = {factor: value} if factor in ("shape", "size") else {}
    assert oracle.mask_iou(r.mask, oracle.expected_mask(f, 32, **change)).min() == 1.0  # same place


def test_grown_shapes_move_inside_the_image_as_the_generator_keeps_them():
    f = shape_factors(400, 32, seed=3)
    small = np.nonzero(f["size"] == 0)[0]
    near = small[np.minimum(f["cx"][small], 32 - f["cx"][small]) < 10]  # a large shape here would be cut off
    assert len(near) > 10
    g = oracle.replace_factors(f, 32, size=1)
    lo = np.ceil(g["radius"]).astype(int)
    assert ((g["cx"] >= lo) & (g["cx"] <= 32 - lo) & (g["cy"] >= lo) & (g["cy"] <= 32 - lo)).all()
    far = np.setdiff1d(small, near)
    np.testing.assert_array_equal(g["cx"][far], f["cx"][far])  # shapes that fit stay where they were
    centred = oracle.replace_factors(g, 32, cx=16, cy=16, colour=0, background=0)  # red on black: mask = R > 0
    whole = render_shapes(centred, 32)[..., 0] > 0
    mask = oracle.expected_mask(f, 32, size=1)
    np.testing.assert_array_equal(mask.sum((1, 2))[near], whole.sum((1, 2))[near])  # nothing cut off
    np.testing.assert_array_equal(oracle.replace_factors(f, 32)["cx"], f["cx"])  # no change: same image


def test_supervised_ceiling_fits_the_ground_truth():
    """f_t trained on the ground-truth edit's P_t lowers its L1 and is scored like any edit."""
    from asyrp.api import invert, new_direction
    from asyrp.core.edit import EditConfig
    from asyrp.core.train import TrainConfig
    from asyrp.models.diffusion import load_diffusion
    from asyrp.toy.analysis import TargetL1, supervised_ceiling

    x = torch.zeros(2, 3, 4, 4)
    assert TargetL1()(x, x)[0].item() == 0.0
    model = load_diffusion("offline:toy")
    f = shape_factors(8, 32, seed=21)
    x0 = torch.from_numpy(render_shapes(f, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    x_T = invert(model, x0, n_inv_steps=10, t_0=500)
    _, dcfg = new_direction(model, "a shape", "a red shape", t_edit=300, t_boost=200, n_train_steps=10, t_0=500)
    train = TrainConfig(t_edit=300, n_train_steps=10, t_0=500, epochs=3, lr=1.0)
    cfg = EditConfig(300, 200, n_gen_steps=10, t_0=500)
    res = supervised_ceiling(model, dcfg, train, x_T[:6], {k: v[:6] for k, v in f.items()}, x_T[6:],
                             {k: v[6:] for k, v in f.items()}, "colour", 0, cfg, [0, 1])  # fmt: skip
    assert res["n"] == 2 and res["n_train"] == 6 and 0.0 <= res["clean_edit"] <= 1.0
    assert res["final_l1"] < res["first_l1"], res


def test_clip_check_prefers_the_clean_edit_with_the_shipped_clip():
    from asyrp.core.losses import AsyrpLoss, LossConfig
    from asyrp.models.clip import load_clip
    from asyrp.toy.analysis import clip_check

    clip = load_clip("offline:toy-clip", None)
    f = shape_factors(60, 32, seed=17)
    f = {k: v[f["colour"] != 0] for k, v in f.items()}
    loss = AsyrpLoss(clip, "a shape", "a red shape", LossConfig(lambda_recon=0.0, templates=False))
    dirs = loss.text_directions([f"a {FACTORS['colour'][c]} shape" for c in f["colour"]])
    res = clip_check(clip, dirs, f, "colour", 0, 32)
    assert set(res) == {"clean edit", "edit + shape", "edit + size", "edit + background", "clean_edit_best", "n"}
    assert res["clean edit"] > max(res[k] for k in ("edit + shape", "edit + size", "edit + background")), res
    assert res["clean_edit_best"] >= 0.8, res


def test_train_ddpm_continues_from_shipped_weights_and_from_a_run_folder(tmp_path):
    from asyrp.toy import train_ddpm
    from asyrp.toy.models import load_fp32

    args = ["--arch", "v1", "--batch", "2", "--lr", "1e-9", "--warmup", "1", "--log-every", "1", "--save-every", "2",
            "--eval-every", "0", "--bf16", "off"]  # fmt: skip
    train_ddpm.main(args + ["--steps", "2", "--out", str(tmp_path / "more"), "--init", str(DDPM_WEIGHTS)])
    shipped, _ = load_fp32(DDPM_WEIGHTS)
    cont, meta = load_fp32(tmp_path / "more" / "ema.safetensors")
    assert meta["args"]["init"] == str(DDPM_WEIGHTS) and meta["step"] == 2
    assert max((cont[k] - shipped[k]).abs().max().item() for k in shipped) < 1e-3  # started from the shipped ones
    # a committed run folder (fp16 model + EMA, no optimiser state) continues its step count and its loss log
    train_ddpm.main(args + ["--steps", "4", "--out", str(tmp_path / "again"), "--init", str(tmp_path / "more")])
    _, meta = load_fp32(tmp_path / "again" / "model.safetensors")
    steps = [int(line.split(",")[0]) for line in (tmp_path / "again" / "loss.csv").read_text().splitlines()[1:]]
    assert meta["step"] == 4 and steps == [1, 2, 3, 4]
    train_ddpm.main(args + ["--steps", "2", "--out", str(tmp_path / "fresh")])
    fresh, _ = load_fp32(tmp_path / "fresh" / "ema.safetensors")
    assert max((fresh[k] - shipped[k]).abs().max().item() for k in shipped) > 0.1  # a fresh init is far away


def test_toy_v2_has_a_deep_bottleneck_and_loads_as_its_file_says(tmp_path):
    """v2's h is 256 x 4 x 4 (1/8 of the image), the split is exact, and a weights file builds its own arch."""
    from asyrp.core.hspace import HUNet
    from asyrp.toy.models import TOY_UNET_CONFIGS, build_toy_unet, load_toy_unet, save_fp16

    unet = build_toy_unet(3, "v2").eval()
    h = HUNet(unet)
    x = torch.randn(2, 3, 32, 32)
    assert h.h_shape() == (256, 4, 4)
    torch.testing.assert_close(h(x, 500), unet(x, 500).sample, rtol=1e-4, atol=1e-5)
    save_fp16(unet.state_dict(), tmp_path / "v2.safetensors", {"config": TOY_UNET_CONFIGS["v2"]})
    loaded = load_toy_unet(tmp_path / "v2.safetensors")
    assert tuple(loaded.config.block_out_channels) == (32, 64, 128, 256)
    assert torch.allclose(loaded(x, 500).sample, unet.half().float()(x, 500).sample, atol=1e-3)


def test_linearity_reuses_edits_already_made():
    """Images passed as `known` (the edit stage's c = 0 and c) stand in for those coefficients: same result as
    sweeping them here, in the coefficients' order."""
    from asyrp.api import new_direction
    from asyrp.core.edit import EditConfig, EditDirection, asyrp_generate
    from asyrp.models.diffusion import load_diffusion
    from asyrp.toy.analysis import linearity

    torch.manual_seed(0)
    model = load_diffusion("offline:toy")
    f = shape_factors(3, 32, seed=9)
    x_T = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    direction, dcfg = new_direction(model, "a shape", "a red shape", t_edit=600, t_boost=200, n_train_steps=6)
    d, cfg, seeds = EditDirection(direction, dcfg), EditConfig(600, 200, n_gen_steps=6), [4, 5, 6]
    coefs = (-1.0, 0.0, 1.0, 2.0)
    known = {c: asyrp_generate(model, x_T, [EditDirection(direction, dcfg, c)], cfg, seeds) for c in (0.0, 2.0)}
    full, sweep_full = linearity(model, d, x_T, f, "colour", 0, cfg, coefs, seeds)
    part, sweep_part = linearity(model, d, x_T, f, "colour", 0, cfg, coefs, seeds, known=known)
    assert torch.allclose(sweep_full, sweep_part, atol=1e-4)
    assert torch.equal(sweep_part[3], known[2.0]) and torch.equal(sweep_part[1], known[0.0])
    assert full["mean_score"] == pytest.approx(part["mean_score"], abs=1e-3)
    assert len(part["clean_edit"]) == len(coefs) and all(0.0 <= v <= 1.0 for v in part["clean_edit"])


def test_toy_analysis_reuses_the_edit_stage_only_when_it_ran_the_same_edit(tmp_path):
    import json

    from asyrp.core.edit import EditConfig
    from asyrp.data.images import save_images
    from pipeline.layout import Layout
    from pipeline.stages.toy_analysis import _made

    paths, cfg = Layout(tmp_path), EditConfig(300, 224, n_gen_steps=20, t_0=500)
    folder = paths.attribute("red") / "edit"
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    save_images(x, [folder / "images" / f"{i}.png" for i in "ab"])
    save_images(-x, [folder / "recon" / f"{i}.png" for i in "ab"])
    summary = {"coefficient": 1.0, "t_edit": 300, "t_boost": 224, "n_gen_steps": 20, "t_0": 500}
    (folder / "summary.json").write_text(json.dumps(summary))
    made = _made(paths, "red", ["a", "b"], 1.0, cfg)
    assert set(made) == {0.0, 1.0}
    assert (made[1.0] - x).abs().max() <= 1 / 127.5 and (made[0.0] + x).abs().max() <= 1 / 127.5  # PNG rounding
    assert _made(paths, "red", ["a", "c"], 1.0, cfg) == {}  # an image the stage did not make
    assert _made(paths, "red", ["a"], 1.5, cfg) == {}  # another coefficient
    assert _made(paths, "red", ["a"], 1.0, EditConfig(300, 224, n_gen_steps=40, t_0=500)) == {}  # another grid
    (folder / "summary.json").write_text(json.dumps({**summary, "t_0": None}))
    assert _made(paths, "red", ["a"], 1.0, cfg) == {}  # another inversion depth


def test_oracle_verdict_steps_aside_for_prompts_that_name_no_factor(tmp_path):
    import json

    import yaml

    from pipeline.params import params_from_dict
    from pipeline.toy import oracle_verdict
    from tests.pipeline_util import ROOT

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert data["profile"] == "toy"
    data["catalog"]["toy"]["red"]["target"] = "a shiny shape"  # no colour, shape, size or background named
    note = oracle_verdict(params_from_dict(data), "red", out=tmp_path)
    assert "cannot tell" in note["skipped"]  # evaluate@ keeps its S_dir / LPIPS; no failed stage
    written = json.loads((tmp_path / "attributes" / "red" / "toy_eval" / "metrics.json").read_text())
    assert written == note
