"""Shared fixtures. Every test runs offline: no hub, no telemetry, caches in temporary folders."""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="asyrp-tests-")
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HOME": os.path.join(_TMP, "hf"),
    "TORCH_HOME": os.path.join(_TMP, "torch"),
    "PREFECT_HOME": os.path.join(_TMP, "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_TRACKING_URI": "sqlite:///" + os.path.join(_TMP, "mlflow.db"),
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_model():
    from asyrp.models.diffusion import load_diffusion

    return load_diffusion("offline:small")


@pytest.fixture(scope="session")
def tiny_clip():
    from asyrp.models.clip import load_clip

    return load_clip("offline:tiny")


@pytest.fixture(scope="session")
def random_lpips():
    from asyrp.models.perceptual import load_lpips

    with pytest.warns(UserWarning, match="RANDOM backbone"):
        return load_lpips("alex", allow_random_backbone=True)


@pytest.fixture
def images():
    """Four smooth 32-px images in [-1, 1] (random low-frequency patterns, seeded)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
