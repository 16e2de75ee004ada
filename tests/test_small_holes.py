"""Small holes: a t_edit override below t_boost named by its key in train@, a prompt longer than CLIP's text context
warned about, prompts escaped in report.md's tables, the toy DDPM's checkpoint loaded without running code."""

import json
import os
import pickle
import re
import warnings

import pytest
import torch
import yaml

from pipeline.layout import Layout
from pipeline.params import params_from_dict

from .pipeline_util import plumbing_params


def finished_schedule_curves(out) -> None:
    """The schedule stage's LPIPS curves: LPIPS(x, x_t) reaches the offline profile's 0.05 at t = 125."""
    sched = Layout(out).schedule
    sched.folder.mkdir(parents=True, exist_ok=True)
    rows = [(0, 0.0, 0.0), (250, 0.25, 0.1), (500, 0.5, 0.2), (750, 0.75, 0.3), (999, 1.0, 0.4)]
    sched.curves_csv.write_text("t,lpips_pred_x0,lpips_xt\n" + "".join(f"{t},{p},{x}\n" for t, p, x in rows))
    sched.metrics_json.write_text(json.dumps({"n_images": 2, "lpips_is_paper_metric": False, "t_boost": 125}))


def params_with(tmp_path, **schedule) -> tuple:
    data = plumbing_params()
    data["schedule"].update(schedule)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, params_from_dict(data)


def test_a_t_edit_default_below_the_curves_t_boost_names_its_key_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from pipeline.stages import train

    path, _ = params_with(tmp_path, t_edit_default=100)
    out = tmp_path / "out"
    finished_schedule_curves(out)
    monkeypatch.setenv("ASYRP_MLFLOW", "0")
    monkeypatch.delenv("ASYRP_DEBUG", raising=False)
    monkeypatch.setattr(train, "load_model", lambda p: pytest.fail("the model loaded before the check"))
    with pytest.raises(SystemExit) as exit_:
        train.main(["red", "--params", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "error: red: schedule.t_edit_default=100 must be above t_boost=125 (the schedule stage's" in err
    assert "raise schedule.t_edit_default" in err


def test_an_overridden_t_boost_above_the_lpips_t_edit_names_its_key(tmp_path, tiny_clip):
    from pipeline.stages import train

    _, params = params_with(tmp_path, overrides={"red": {"t_boost": 999}})
    out = tmp_path / "out"
    finished_schedule_curves(out)
    with pytest.raises(ValueError, match=r"red: t_edit=\d+ \(the LPIPS rule for these prompts\) must be above "
                       r"schedule.overrides.red.t_boost=999: .*lower schedule.overrides.red.t_boost"):  # fmt: skip
        train.attribute_schedule(params, "red", tiny_clip, out)


def test_a_prompt_longer_than_the_clip_context_warns_once_and_is_recorded(tiny_clip):
    long = "a photo of a " + " ".join(["very"] * 40) + " red shape"  # offline:tiny's context: 32 tokens
    with pytest.warns(UserWarning, match=r"longer than its 32-token text context and is truncated"):
        tiny_clip.encode_text([long, "a shape"])
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        tiny_clip.encode_text([long])
    assert again == []  # once per prompt
    assert long in tiny_clip.truncated and "a shape" not in tiny_clip.truncated


def test_report_md_escapes_prompts_in_tables(tmp_path):
    from pipeline.stages import report

    data = plumbing_params()
    data["attributes"] = ["red"]
    params, out, lay = params_from_dict(data), tmp_path / "out", Layout(tmp_path / "out")
    lay.train("red").schedule_json.parent.mkdir(parents=True)
    lay.evaluate("red").metrics_json.parent.mkdir(parents=True)
    source, target = "a shape | or not", "a <b>red</b> shape"
    sched = {"source": source, "target": target, "clip_similarity": 0.9, "t_edit": 500, "t_boost": 200,
             "chosen_by": "lpips"}  # fmt: skip
    lay.train("red").schedule_json.write_text(json.dumps(sched))
    ev = {"s_dir": {"mean": 0.2, "ci95": 0.01, "n": 2}, "clip_is_pretrained": False}
    lay.evaluate("red").metrics_json.write_text(json.dumps(ev))
    report.run(params, out)
    md = lay.report.report_md.read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| red | a shape")]
    assert len(re.findall(r"(?<!\\)\|", row)) == 11  # 10 columns
    assert "a shape \\| or not" in row and "a &lt;b&gt;red&lt;/b&gt; shape" in row
    assert "<b>" not in md


class _Payload:
    """A pickle that runs code when loaded (mkdir: harmless, and visible)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_the_toy_ddpm_checkpoint_loads_weights_only(tmp_path, monkeypatch, capsys):
    """Explicitly: torch's default (weights_only since 2.6) yields to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which some
    environments set for old checkpoints; an explicit weights_only=True does not."""
    from asyrp.toy import train_ddpm

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    args = ["--arch", "v1", "--batch", "2", "--warmup", "1", "--log-every", "1", "--save-every", "1", "--eval-every",
            "0", "--out", str(tmp_path)]  # fmt: skip
    train_ddpm.main(["--steps", "1", *args])
    train_ddpm.main(["--steps", "2", *args])  # a real checkpoint (tensors, AdamW state) resumes
    assert f"resumed {tmp_path / 'ckpt.pt'} at step 1" in capsys.readouterr().out
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(pickle.UnpicklingError):
        train_ddpm.main(["--steps", "3", *args])
    assert not marker.exists()
