"""Semantic segmenters for segmentation consistency (SC, App. K.2): a face parser and ADE20K scene parsers.

``load_segmenter(id, device, sha256=None, input_size=None) -> Segmenter``; ``segmenter(x)`` maps images
(B, 3, H, W) in [-1, 1] to label maps (B, H, W) int64 at the same H, W. Ids:

- ``bisenet:<path>``: the 19-class CelebAMask-HQ BiSeNet face parser of zllrunning/face-parsing.PyTorch
  (ResNet-18 context path; its public checkpoint ``79999_iter.pth``), read from a local file with
  ``torch.load(weights_only=True)``. The architecture is rebuilt here with the checkpoint's parameter names;
  the ResNet-18 is torchvision's. Preprocessing as that repository's ``test.py``: bilinear resize to
  512 x 512, ImageNet mean/std. The file's sha256 is computed on load (``Segmenter.sha256``; metrics record
  it); pass ``sha256=`` to insist on a known file.
- ``hf:<hub id or local folder>``: any transformers semantic-segmentation checkpoint (SegFormer, UperNet,
  ...) through ``AutoModelForSemanticSegmentation`` (safetensors where the repository has them, otherwise
  ``weights_only`` unpickling). Resize and mean/std from its ``preprocessor_config.json``. For churches and
  bedrooms (ADE20K, 150 classes): ``hf:openmmlab/upernet-convnext-small`` (UperNet, the scene parser family
  of the paper's citations) or ``hf:nvidia/segformer-b0-finetuned-ade-512-512`` (small and fast); for faces,
  ``hf:jonathandinu/face-parsing`` (SegFormer on CelebAMask-HQ, 19 classes).
- ``offline:bisenet``, ``offline:segformer``, ``offline:upernet``: the same architectures with seeded
  random weights (tests and the plumbing-only offline profile). ``is_pretrained`` is False: SC made with
  them means nothing, and the pipeline says so next to the number.

Nothing is downloaded at import; a missing checkpoint is one :class:`SegmenterLoadError` naming the file or
hub id and where to get it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..seeding import seeded
from .errors import ModelLoadError

Tensor = torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# zllrunning/face-parsing.PyTorch label order (CelebAMask-HQ parts).
CELEBAMASK_LABELS = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
BISENET_CHECKPOINT = "79999_iter.pth"
BISENET_SOURCE = (
    "zllrunning/face-parsing.PyTorch (https://github.com/zllrunning/face-parsing.PyTorch): its README links the "
    "pre-trained model on Google Drive (file id 154JgKpzCPW82qINcVieuPH3fZ2e0P812)"
)
OFFLINE_IDS = ("offline:bisenet", "offline:segformer", "offline:upernet")


class SegmenterLoadError(ModelLoadError):
    """A segmenter checkpoint is missing, unreadable or not the expected one."""


# --- BiSeNet (Yu et al. 2018) as in zllrunning/face-parsing.PyTorch; names match 79999_iter.pth --------------


class ConvBNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BiSeNetOutput(nn.Module):
    def __init__(self, c_in: int, c_mid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(c_in, c_mid)
        self.conv_out = nn.Conv2d(c_mid, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class AttentionRefinementModule(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = ConvBNReLU(c_in, c_out)
        self.conv_atten = nn.Conv2d(c_out, c_out, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ResNet18Features(nn.Module):
    """torchvision's ResNet-18 without its classifier: (B, 3, H, W) -> features at strides 8, 16, 32."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet18

        tv = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)  # (B, 128, H/8, W/8)
        feat16 = self.layer3(feat8)  # (B, 256, H/16, W/16)
        feat32 = self.layer4(feat16)  # (B, 512, H/32, W/32)
        return feat8, feat16, feat32


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Features()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = F.interpolate(self.conv_avg(F.adaptive_avg_pool2d(feat32, 1)), feat32.shape[2:], mode="nearest")
        feat32_up = F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(feat32_up)
        feat16_up = F.interpolate(self.arm16(feat16) + feat32_up, feat8.shape[2:], mode="nearest")
        feat16_up = self.conv_head16(feat16_up)
        return feat8, feat16_up, feat32_up  # strides 8, 8, 16


class FeatureFusionModule(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.convblk = ConvBNReLU(c_in, c_out, ks=1, padding=0)
        self.conv1 = nn.Conv2d(c_out, c_out // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out // 4, c_out, 1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class BiSeNet(nn.Module):
    """BiSeNet face parser (the spatial path replaced by ResNet stride-8 features, as in face-parsing.PyTorch).

    ``forward(x) -> (B, n_classes, H, W)`` logits of the main head (the two auxiliary heads are kept only so
    the checkpoint loads strictly; ``aux=True`` returns all three, as the training code does).
    """

    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: Tensor, aux: bool = False):
        size = x.shape[2:]
        feat_res8, feat_cp8, feat_cp16 = self.cp(x)
        up = lambda t: F.interpolate(t, size, mode="bilinear", align_corners=True)  # noqa: E731
        out = up(self.conv_out(self.ffm(feat_res8, feat_cp8)))
        if not aux:
            return out
        return out, up(self.conv_out16(feat_cp8)), up(self.conv_out32(feat_cp16))


# --- the wrapper every metric uses ---------------------------------------------------------------------------


class Segmenter(nn.Module):
    """A frozen segmentation network with its preprocessing: images in [-1, 1] -> label maps.

    ``logits(x)``: (B, 3, H, W) -> (B, K, h, w) at the network's output resolution; ``forward(x)``: labels
    (B, H, W) int64, logits bilinearly resized to the input's H, W before the argmax.
    """

    def __init__(
        self,
        net: nn.Module,
        kind: str,
        name: str,
        num_classes: int,
        input_size: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        is_pretrained: bool = True,
        labels: tuple[str, ...] | None = None,
        sha256: str | None = None,
    ):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.kind, self.name, self.num_classes, self.input_size = kind, name, int(num_classes), int(input_size)
        self.is_pretrained, self.labels, self.sha256 = is_pretrained, labels, sha256
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def note(self) -> str:
        what = f"{self.kind} segmenter {self.name} ({self.num_classes} classes, {self.input_size}px input)"
        return what if self.is_pretrained else f"{what} with RANDOM weights: SC is not meaningful"

    def preprocess(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalised network input."""
        x = (x.float().to(self.device) + 1.0) / 2.0
        s = self.input_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=min(x.shape[-2:]) > s)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        inp = self.preprocess(x)
        out = self.net(pixel_values=inp).logits if self.kind == "transformers" else self.net(inp)
        return out.float()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        out = self.logits(x)
        if tuple(out.shape[-2:]) != tuple(x.shape[-2:]):
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out.argmax(dim=1)


# --- loading -------------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _seeded(build):
    with seeded(0):  # thread-safe seeding (asyrp.seeding)
        return build()


def load_bisenet(path: str | Path, sha256: str | None = None, n_classes: int = 19) -> tuple[BiSeNet, str]:
    """BiSeNet with the weights of a local ``79999_iter.pth`` (or another checkpoint of the same network)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SegmenterLoadError(
            f"BiSeNet face-parsing checkpoint not found: {path}. This is {BISENET_CHECKPOINT} (CelebAMask-HQ, "
            f"19 classes) from {BISENET_SOURCE}. Download it, then put it at {path} or point the segmenter id "
            f"at it: bisenet:/path/to/{BISENET_CHECKPOINT}."
        )
    digest = file_sha256(path)
    if sha256 and digest != sha256.lower():
        raise SegmenterLoadError(f"{path}: sha256 is {digest}, expected {sha256.lower()} (a different file?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise SegmenterLoadError(f"{path}: not a readable PyTorch state dict (weights_only load): {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SegmenterLoadError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = BiSeNet(n_classes)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise SegmenterLoadError(f"{path}: does not fit the {n_classes}-class BiSeNet: {err}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SegmenterLoadError(
            f"{path}: not a {n_classes}-class face-parsing BiSeNet checkpoint; missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    return net, digest


def _hf_preprocessing(model_id: str) -> dict:
    """The checkpoint's preprocessor_config.json (local folder or HF cache), or {} if it has none."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        f = local / "preprocessor_config.json"
        return json.loads(f.read_text()) if f.is_file() else {}
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(model_id, "preprocessor_config.json")).read_text())
    except Exception:  # noqa: BLE001 - no processor config: ImageNet defaults
        return {}


def _input_size(cfg: dict, default: int = 512) -> int:
    size = cfg.get("size") or cfg.get("crop_size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or default
    return int(size or default)


def load_hf_segmenter(model_id: str, device="cpu", input_size: int | None = None) -> Segmenter:
    """A transformers semantic-segmentation checkpoint (hub id or local folder) as a :class:`Segmenter`."""
    from huggingface_hub import constants
    from transformers import AutoModelForSemanticSegmentation

    try:
        net = AutoModelForSemanticSegmentation.from_pretrained(model_id)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        where = "folder" if Path(model_id).expanduser().exists() else "hub id"
        raise SegmenterLoadError(
            f"could not load the segmentation checkpoint {model_id!r} ({where}) with transformers: it is neither "
            f"a complete local folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), and the hub is "
            f"offline or unreachable. On a machine with internet: `hf download {model_id}` (then copy the cache, "
            f"or pass the downloaded folder as hf:/path/to/folder). Cause: {str(err).splitlines()[0]}"
        ) from None
    cfg = _hf_preprocessing(model_id)
    id2label = getattr(net.config, "id2label", None) or {}
    labels = tuple(id2label[i] for i in sorted(id2label)) if id2label else None
    return Segmenter(
        net,
        "transformers",
        model_id,
        net.config.num_labels,
        input_size or _input_size(cfg),
        cfg.get("image_mean", IMAGENET_MEAN),
        cfg.get("image_std", IMAGENET_STD),
        is_pretrained=True,
        labels=labels,
    ).to(device)


def _offline(name: str, input_size: int | None) -> Segmenter:
    if name == "offline:bisenet":
        net = _seeded(lambda: BiSeNet(19))
        return Segmenter(net, "bisenet", name, 19, input_size or 64, is_pretrained=False, labels=CELEBAMASK_LABELS)
    from transformers import (
        ConvNextConfig,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    if name == "offline:segformer":
        cfg = SegformerConfig(
            num_labels=150,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 2, 2],
            decoder_hidden_size=32,
        )
        net = _seeded(lambda: SegformerForSemanticSegmentation(cfg))
    elif name == "offline:upernet":
        backbone = ConvNextConfig(
            hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
        )
        cfg = UperNetConfig(
            backbone_config=backbone,
            num_labels=150,
            hidden_size=32,
            auxiliary_in_channels=32,
            use_auxiliary_head=False,
        )
        net = _seeded(lambda: UperNetForSemanticSegmentation(cfg))
    else:
        raise SegmenterLoadError(f"unknown offline segmenter {name!r}; choose one of {', '.join(OFFLINE_IDS)}")
    return Segmenter(net, "transformers", name, 150, input_size or 64, is_pretrained=False)


def load_segmenter(
    segmenter_id: str, device="cpu", sha256: str | None = None, input_size: int | None = None
) -> Segmenter:
    """``bisenet:<path>`` | ``hf:<hub id or folder>`` | ``offline:bisenet|segformer|upernet`` -> Segmenter.

    ``input_size`` overrides the network's input resolution (default: 512 for BiSeNet, the checkpoint's
    preprocessor size for transformers models, 64 for the random offline ones).
    """
    kind, _, ref = segmenter_id.partition(":")
    if kind == "offline":
        return _offline(segmenter_id, input_size).to(device)
    if not ref.strip():
        raise SegmenterLoadError(f"segmenter id {segmenter_id!r}: expected bisenet:<path>, hf:<id> or offline:<name>")
    if kind == "bisenet":
        net, digest = load_bisenet(ref, sha256)
        return Segmenter(net, "bisenet", ref, 19, input_size or 512, labels=CELEBAMASK_LABELS, sha256=digest).to(device)
    if kind == "hf":
        return load_hf_segmenter(ref, device, input_size)
    raise SegmenterLoadError(
        f"segmenter id {segmenter_id!r}: unknown kind {kind!r}; expected bisenet:<path>, hf:<id> or offline:<name>"
    )
