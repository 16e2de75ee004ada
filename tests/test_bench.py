"""The benchmark runs and emits every key (no timing assertions: machines are noisy)."""

import json

import pytest

from asyrp import bench

KEYS = {
    "forward_s",
    "inversion_step_ratio",
    "up_path_ratio",
    "edit_step_ratio",
    "naive_edit_step_ratio",
    "plain_step_ratio",
    "train_step_ratio",
    "naive_train_step_ratio",
    "stage_throughput_ratio",
    "peak_rss_mb_1x",
    "peak_rss_mb_4x",
    "device",
    "torch",
    "params_m",
    "image_size",
    "batch",
    "opt_inference_mode_speedup",
    "opt_channels_last_speedup",
}


@pytest.mark.slow
def test_bench_smoke(capsys):
    bench.main(["--model", "small", "--repeats", "1", "--batch", "2", "--bulk-images", "2"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(out), KEYS - set(out)
    assert all(v > 0 for k, v in out.items() if k.endswith(("_ratio", "_s", "_mb_1x", "_mb_4x", "_speedup")))
