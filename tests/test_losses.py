"""Eq. 4 / Eq. 7 loss: directional cosine, both loss forms, lambda_recon rule, every image counts."""

import math

import pytest
import torch

from asyrp.core.losses import AsyrpLoss, LossConfig, direction_loss, directional_cos


def test_directional_cos_by_hand():
    edit = torch.tensor([[1.0, 1.0, 0.0]])
    src = torch.tensor([[1.0, 0.0, 0.0]])
    text = torch.tensor([0.0, 1.0, 0.0])
    assert directional_cos(edit, src, text).item() == pytest.approx(1.0)
    text2 = torch.tensor([0.0, 1.0, 1.0]) / math.sqrt(2)
    assert directional_cos(edit, src, text2).item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)


def test_loss_forms():
    cos = torch.tensor([1.0, 0.0, -0.5])
    assert torch.allclose(direction_loss(cos, "one_minus_cos"), 1 - cos)
    l = 1 - cos
    assert torch.allclose(direction_loss(cos, "log"), -torch.log((2 - l) / 2), atol=1e-6)
    with pytest.raises(ValueError, match="loss_form"):
        direction_loss(cos, "l2")


def test_lambda_recon_auto_is_three_times_similarity(tiny_clip):
    loss = AsyrpLoss(tiny_clip, "face", "smiling face", LossConfig(templates=False))
    assert loss.lambda_recon == pytest.approx(3 * tiny_clip.prompt_similarity("face", "smiling face"))
    fixed = AsyrpLoss(tiny_clip, "face", "smiling face", LossConfig(lambda_recon=1.5, templates=False))
    assert fixed.lambda_recon == 1.5


def test_templates_average_every_template(tiny_clip):
    from asyrp.models.clip import imagenet_templates

    templates = imagenet_templates()
    assert len(templates) == 80 and all("{}" in t for t in templates)
    emb = tiny_clip.text_embedding("dog", templates)
    ref = tiny_clip.encode_text([t.format("dog") for t in templates]).mean(0)
    assert torch.allclose(emb, ref)


def test_every_image_of_the_batch_gets_a_gradient(tiny_clip):
    """The official code's bs > 1 bug: only the last image reached the loss. Here each one does."""
    loss = AsyrpLoss(tiny_clip, "a shape", "a red shape", LossConfig(templates=False))
    g = torch.Generator().manual_seed(0)
    edit = (torch.rand(3, 3, 32, 32, generator=g) * 2 - 1).requires_grad_()
    src = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    value, stats = loss(edit, src, loss.source_embedding(src))
    value.backward()
    per_image = edit.grad.flatten(1).abs().sum(1)
    assert torch.all(per_image > 0), per_image
    assert set(stats) == {"loss", "clip", "recon", "cos"}


def test_bad_config(tiny_clip):
    with pytest.raises(ValueError, match="non-empty"):
        AsyrpLoss(tiny_clip, " ", "x")
    with pytest.raises(ValueError, match="clip_source"):
        AsyrpLoss(tiny_clip, "a", "b", LossConfig(clip_source="real"))


def test_clip_preprocess_is_differentiable_and_sized(tiny_clip):
    x = torch.zeros(2, 3, 64, 48, requires_grad=True)
    y = tiny_clip.preprocess(x)
    assert y.shape == (2, 3, 32, 32)
    y.sum().backward()
    assert x.grad is not None


def test_per_image_source_prompts(tiny_clip):
    """text_directions: the pair's own source gives the pair's direction; a source equal to the target, none."""
    loss = AsyrpLoss(tiny_clip, "a shape", "a red shape", LossConfig(templates=False))
    dirs = loss.text_directions(["a shape", "a green shape", "a red shape"])
    assert dirs.shape == (3, loss.text_direction.shape[0])
    assert torch.allclose(dirs[0], loss.text_direction, atol=1e-6)
    assert not torch.allclose(dirs[1], loss.text_direction, atol=1e-3)
    assert dirs[2].abs().max() < 1e-6  # already the target: no pull
    g = torch.Generator().manual_seed(0)
    edit, src = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    emb = loss.source_embedding(src)
    same = loss.text_directions(["a shape"] * 3)
    assert loss(edit, src, emb, same)[0].item() == pytest.approx(loss(edit, src, emb)[0].item(), rel=1e-6)
    _, stats = loss(edit, src, emb, dirs)
    cos = directional_cos(tiny_clip.encode_image(edit), emb, dirs)
    assert cos[2].item() == 0.0 and stats["cos"] == pytest.approx(cos.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        loss.text_directions([" "])
