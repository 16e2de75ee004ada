"""The blocks of ``params.yaml`` as pydantic models: the attribute catalogue, profiles, and the stage blocks.

Keys that are settings of the method ARE asyrp.core.config fields: ``_block`` takes their types, choices and bounds
from the config dataclass, so params.yaml and the library refuse the same values. ``pipeline.params`` puts the blocks
together into ``Params`` (cross-key checks, profile overrides, error messages, loading).
"""

import re
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    create_model,
    model_validator,
)

from asyrp.core.config import (
    BulkInversion,
    EditConfig,
    LossConfig,
    TrainConfig,
    check_depth,
    check_interval,
    constraints,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"  # usable as a DVC foreach key and a file name
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _device(value: str) -> str:
    if not DEVICE_PATTERN.match(value):
        raise ValueError(f"must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


def _lambda_recon(value: Any) -> float | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be 'auto' or a number >= 0, got {value!r}")
    return float(value)


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PosInt = Annotated[int, Field(ge=1)]
Steps = Annotated[int, Field(ge=2)]
Seed = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Timestep = Annotated[int, Field(ge=0, le=999)]
Device = Annotated[str, AfterValidator(_device)]
LambdaRecon = Annotated[float | str, PlainValidator(_lambda_recon)]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]  # asyrp.core.precision.autocast_dtype


class Strict(BaseModel):
    """Base: unknown keys are errors (typos), instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the attribute catalogue -----------------------------------------------------------------------


class PaperRow(Strict):
    """Table 2's numbers for an attribute (reference only; the schedule stage recomputes t)."""

    clip_similarity: float = Field(ge=-1, le=1)
    t_edit: Timestep
    t_boost: Timestep

    @model_validator(mode="after")
    def _order(self) -> "PaperRow":
        check_interval(self.t_edit, self.t_boost)
        return self


class AttributeSpec(Strict):
    """One attribute: prompts and loss coefficients (Tables 2 and 3)."""

    source: Text
    target: Text
    lambda_clip: PosFloat
    lambda_recon: LambdaRecon = "auto"  # "auto" = 3 x CLIP cosine similarity of the prompts
    from_noise: bool | None = False  # train from x_T ~ N(0, I); None (unknown) = inverted images
    # Beyond the paper: a per-image source prompt for training, filled from each image's manifest columns,
    # e.g. "a {colour} shape" (Delta T then points from what the image is to the target). None: `source`.
    source_per_image: Text | None = None
    # The edit strength c of this attribute (Eq. 9's delta_h scale) in edit@ and the analyses; None: the
    # value of edit.coefficients. A row's own value wins over edit.coefficients.
    coefficient: float | None = None
    paper: PaperRow | None = None

    @model_validator(mode="after")
    def _prompts_differ(self) -> "AttributeSpec":
        if self.source.lower() == self.target.lower():
            raise ValueError(f"target must differ from source, both are {self.source!r}")
        if self.source_per_image is not None and self.from_noise:
            raise ValueError("source_per_image needs inverted images with manifest columns, not from_noise")
        return self

    @property
    def loss_lambda_recon(self) -> float | None:
        """LossConfig's lambda_recon: the fixed number, or None for ``auto`` (Table 3's rule, applied there)."""
        return None if self.lambda_recon == "auto" else float(self.lambda_recon)

    def lambda_recon_for(self, clip_cosine: float) -> float:
        """The L1 weight: the fixed number, or 3 x the prompts' CLIP cosine similarity for ``auto``."""
        return LossConfig(lambda_recon=self.loss_lambda_recon).lambda_recon_for(clip_cosine)

    @property
    def trains_from_noise(self) -> bool:
        """Whether training starts from random x_T instead of inverted images (None counts as no)."""
        return bool(self.from_noise)


# --- profiles ----------------------------------------------------------------------------------------


class ModelSpec(Strict):
    id: Text  # "offline:small", a hub id, a local diffusers folder, or a .pt/.ckpt checkpoint file
    image_size: int = Field(ge=8)
    # Checkpoint files only (asyrp.models.archs): the architecture preset (None = inferred from the file name) and
    # the file's sha256, verified before loading (None = not checked).
    preset: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]*$")] | None = None
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    channels_last: bool = False  # U-Net weights in NHWC (faster convolutions where measured so: docs/benchmarks.md)


class DatasetSpec(Strict):
    source: Literal["toy", "synthetic", "celeba_hq", "lsun_church", "lsun_bedroom", "afhq_dog", "metfaces", "folder"]
    path: str | None = None  # folder of images; None = data/<source>
    n_images: PosInt | None = None  # synthetic: how many to draw; folders: a cap (None = all)


class ClipSpec(Strict):
    name: Text  # open_clip model name, or "offline:tiny"
    pretrained: str | None = None


class LpipsSpec(Strict):
    net: Literal["alex", "vgg", "squeeze"] = "alex"
    allow_random_backbone: bool = False


class SegmenterSpec(Strict):
    """The segmenter of SC (App. K.2), an asyrp.models.segment id; a profile without one computes no SC."""

    id: Text  # bisenet:<path to 79999_iter.pth> | hf:<hub id or folder> | offline:bisenet|segformer|upernet
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] | None = None  # pin the file
    input_size: Annotated[int, Field(ge=16)] | None = None  # None = the network's own


# --- stage blocks ------------------------------------------------------------------------------------


def _block(name: str, doc: str, keys: dict[str, Any], base: type[BaseModel] | None = None) -> type[BaseModel]:
    """A params block whose keys ARE asyrp.core.config settings where ``keys`` names a config dataclass.

    keys: key -> a config dataclass (its type, choices and bounds; required here), or the block's own
    ``(type, default)`` (``...`` = required). Bounds live in one place: the dataclass's ``setting(...)``.
    """
    fields = {}
    for key, spec in keys.items():
        if isinstance(spec, tuple):
            fields[key] = spec
            continue
        choices, bounds = constraints({f.name: f for f in dataclass_fields(spec)}[key])
        tp = Literal[choices] if choices else get_type_hints(spec)[key]
        fields[key] = (Annotated[tp, Field(**bounds)] if bounds else tp, ...)
    return create_model(name, __base__=base or Strict, __doc__=doc, **fields)


class _DepthRule(Strict):
    @model_validator(mode="after")
    def _t_0_spacing(self) -> "_DepthRule":
        check_depth(self.t_0, self.spacing)
        return self


Inversion = _block(
    "Inversion",
    "DDIM inversion of the dataset into latent shards (asyrp.core.config.BulkInversion).",
    {
        "n_inv_steps": BulkInversion,
        "spacing": BulkInversion,
        "n_train_images": (PosInt, ...),
        "n_test_images": (PosInt, ...),
        "seed": (Seed, ...),
        "batch_size": BulkInversion,
        "shard_size": BulkInversion,
        "dtype": (Literal["float32", "float64", "bfloat16", "float16"], ...),
        # P_t^source of every training image is cached for grid t >= cache_min_t (Table 2's smallest t_edit
        # is 301): training then skips a whole U-Net pass per step. Lower attributes recompute it.
        "cache_min_t": (Timestep, 300),
        # Inversion depth: x_T is x_{t_0} and the editing interval is [t_0, t_edit] (the official code's
        # --t_0; the paper inverts fully, t_0 = T - 1 = null). A partial inversion keeps the layout in x_{t_0}.
        "t_0": (Timestep | None, None),
    },
    _DepthRule,
)


class TOverride(Strict):
    """Hand-picked t_edit / t_boost for one attribute (either may be left to the schedule stage)."""

    t_edit: Timestep | None = None
    t_boost: Timestep | None = None

    @model_validator(mode="after")
    def _order(self) -> "TOverride":
        if self.t_edit is None and self.t_boost is None:
            raise ValueError("give t_edit, t_boost or both")
        if self.t_edit is not None and self.t_boost is not None:
            check_interval(self.t_edit, self.t_boost)
        return self


class Schedule(Strict):
    lpips_edit_threshold: PosFloat
    lpips_boost_threshold: PosFloat
    n_images: PosInt
    n_curve_steps: Steps
    overrides: dict[Name, TOverride]
    # t_edit for every attribute without an override (None: the LPIPS rule). For worlds whose CLIP makes
    # the 0.33 x cos rule unusable (the toy CLIP's prompt similarities can be negative).
    t_edit_default: Timestep | None = None


Train = _block(
    "Train",
    "Algorithm 2 (asyrp.core.config.TrainConfig and the loss's choices in LossConfig) and the f_t kind.",
    {
        "optimizer": TrainConfig,
        "lr": TrainConfig,
        "momentum": TrainConfig,
        "lr_step_size": TrainConfig,
        "lr_gamma": TrainConfig,
        "lr_step_per": TrainConfig,
        "epochs": TrainConfig,
        "n_train_steps": TrainConfig,
        "batch_size": (PosInt, ...),
        "step_per": TrainConfig,
        # official: the official block of the model's family (official_guided for converted guided-diffusion models)
        "direction": (Literal["official", "official_guided", "concat", "delta_h_t", "global"], ...),
        "loss_form": LossConfig,
        "clip_source": LossConfig,
        "templates": LossConfig,
        "seed": TrainConfig,
    },
)

Edit = _block(
    "Edit",
    "Algorithm 1 (asyrp.core.config.EditConfig), the coefficients and what edit@ writes.",
    {
        "n_gen_steps": EditConfig,
        "coefficients": (list[float], Field(min_length=1)),
        "sweep": (list[float], Field(min_length=1)),
        "eta_boost": EditConfig,
        "n_images": (PosInt, ...),
        "seed": (Seed, ...),
        "normalize_multi": EditConfig,
    },
)


class ScSpec(Strict):
    """Segmentation consistency: pixel accuracy of the label maps of the reference and the edited image."""

    enabled: bool = True  # SC runs when this is true and the profile has a segmenter
    reference: Literal["original", "recon"] = "original"  # compare with the input or its reconstruction
    ignore_index: int | None = None  # a label left out where both maps carry it (None: every pixel counts)
    batch_size: PosInt = 8


class Evaluate(Strict):
    clip: ClipSpec
    n_images: PosInt
    lpips: bool
    sc: ScSpec = Field(default_factory=ScSpec)
    batch_size: PosInt = 32  # images per CLIP / LPIPS batch


class StudySheet(Strict):
    """One user-study sheet (App. K.1): our edits (method A) against method B's images of the same test ids."""

    method_b: Text  # its name in the answer key and the tally (participants never see it)
    folder: Text  # root folder of method B's images (a DVC dependency of the study stage)
    layout: Text = "{attribute}"  # where an attribute's <id>.png files are, below folder
    attributes: dict[Name, Text] = Field(min_length=1)  # attribute -> Table 1 group ("CelebA-HQ in-domain")
    labels: dict[Name, Text] = Field(default_factory=dict)  # attribute as participants read it (default: target)
    n_images: PosInt | None = None  # None: study.n_images
    group_size: PosInt | None = None  # None: study.group_size
    seed: Seed | None = None  # None: study.seed
    title: Text | None = None


class Study(Strict):
    """User-study sheets: `dvc repro` builds study@<name> for every entry of sheets (none by default)."""

    sheets: dict[Name, StudySheet] = Field(default_factory=dict)
    method_a: Text = "Asyrp"
    n_images: PosInt = 8  # App. K.1: 8 per CelebA-HQ attribute, 12 per LSUN-church attribute
    group_size: PosInt = 1  # App. K.1: 4 for LSUN-church (adds the diversity question)
    seed: Seed = 0


BLOCKS: dict[str, type[Strict]] = {
    "inversion": Inversion,
    "schedule": Schedule,
    "train": Train,
    "edit": Edit,
    "evaluate": Evaluate,
}


def _partial(model: type[Strict]) -> type[Strict]:
    """The same model with every field optional, nested models too, constraints kept: an override.

    Unset fields default to None without being validated, so an explicit ``null`` is still an error
    where the full model forbids it; ``model_dump(exclude_unset=True)`` gives what the user wrote.
    """
    fields = {}
    for name, f in model.model_fields.items():
        ann = (
            _partial(f.annotation)
            if isinstance(f.annotation, type) and issubclass(f.annotation, Strict)
            else f.annotation
        )
        fields[name] = (Annotated[(ann, *f.metadata)] if f.metadata else ann, None)
    return create_model(f"{model.__name__}Override", __base__=Strict, **fields)


ProfileOverrides = create_model(
    "ProfileOverrides", __base__=Strict, **{k: (_partial(m), None) for k, m in BLOCKS.items()}
)


class Profile(Strict):
    """A model/dataset pair and how to run it."""

    model: ModelSpec
    dataset: DatasetSpec
    clip: ClipSpec
    lpips: LpipsSpec
    catalog: Name
    segmenter: SegmenterSpec | None = None  # SC's segmenter (App. K.2); None = no SC
    device: Device = "auto"
    dtype: Dtype = "float32"
    supported: bool = True
    unsupported_reason: str | None = None
    overrides: ProfileOverrides = Field(default_factory=ProfileOverrides)

    @model_validator(mode="after")
    def _reason(self) -> "Profile":
        if not self.supported and not (self.unsupported_reason or "").strip():
            raise ValueError("unsupported_reason is required when supported is false")
        return self


@dataclass(frozen=True)
class Blocks:
    """The effective stage blocks of one profile (top-level blocks with its overrides merged in)."""

    inversion: Inversion
    schedule: Schedule
    train: Train
    edit: Edit
    evaluate: Evaluate
