"""The one config schema of the method: loss, training, editing and inversion settings with their bounds and rules.

Each field's bounds and choices are declared once, here, as ``setting(...)`` metadata. The library checks
them (``check``); ``pipeline.blocks`` builds params.yaml's blocks from the same metadata (so a bound
changed here changes both), and ``build`` fills a config from params blocks by field name instead of
copying fields one by one. The rules that tie two settings together are functions, written once:

    check_interval   0 <= t_boost < t_edit (<= t_0): Algorithm 1's three phases
    check_depth      a partial inversion (t_0 < T - 1) needs the uniform or linspace grid
    lambda_recon_auto  Table 3: lambda_recon = 3 x the CLIP cosine similarity of the prompts
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

SPACINGS = ("uniform", "linspace", "leading", "trailing")
DEPTH_SPACINGS = ("uniform", "linspace")  # the grids that can top out below T - 1
OPTIMIZERS = ("sgd", "adam")
STEP_PER = ("timestep", "trajectory")
LR_STEP_PER = ("epoch", "step")
TEMPLATES = ("imagenet", "official", "none")
LOSS_FORMS = ("log", "one_minus_cos")
CLIP_SOURCES = ("x0", "p_t")
_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}  # fmt: skip


def setting(default: Any = MISSING, *, choices: tuple | None = None, **bounds: float) -> Any:
    """A config field with its bounds (ge, gt, le, lt) and choices, read by ``check`` and pipeline.params."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}; use {sorted(_BOUNDS)}")
    return field(default=default, metadata={"choices": choices, "bounds": bounds})


def constraints(f: Field) -> tuple[tuple | None, dict[str, float]]:
    """(choices, bounds) declared for one dataclass field (none for plain fields)."""
    return f.metadata.get("choices"), dict(f.metadata.get("bounds", {}))


def check(config: Any) -> None:
    """Raise ValueError naming the first field of ``config`` outside its declared choices or bounds."""
    for f in fields(config):
        value, (choices, bounds) = getattr(config, f.name), constraints(f)
        if value is None:
            continue
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        for kind, bound in bounds.items():
            op, ok = _BOUNDS[kind]
            if not ok(value, bound):
                raise ValueError(f"{f.name} must be {op} {bound}, got {value!r}")


def build(cls: type, *sources: Any, **values: Any) -> Any:
    """A ``cls`` config: each field from ``values``, else the first source with that attribute, else its default."""
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = values[f.name]
            continue
        src = next((s for s in sources if hasattr(s, f.name)), None)
        if src is not None:
            kwargs[f.name] = getattr(src, f.name)
    return cls(**kwargs)


def interval_ok(t_edit: int, t_boost: int) -> bool:
    """Algorithm 1's phases need 0 <= t_boost < t_edit (callers that name params keys ask this directly)."""
    return 0 <= t_boost < t_edit


def check_interval(t_edit: int, t_boost: int, top: int | None = None) -> None:
    """Algorithm 1's phases need 0 <= t_boost < t_edit, and t_edit <= the grid's top t_0 when given."""
    if not interval_ok(t_edit, t_boost):
        raise ValueError(f"t_boost ({t_boost}) must be < t_edit ({t_edit}): need 0 <= t_boost < t_edit")
    if top is not None and t_edit > top:
        raise ValueError(f"need t_edit <= t_0={top}, got t_edit={t_edit}")


def check_depth(t_0: int | None, spacing: str, num_train_timesteps: int | None = None) -> None:
    """A grid that tops out at t_0 < T - 1 (partial inversion) exists for the uniform and linspace spacings only."""
    partial = t_0 is not None and (num_train_timesteps is None or t_0 < num_train_timesteps - 1)
    if partial and spacing not in DEPTH_SPACINGS:
        raise ValueError(f"t_0 needs spacing uniform or linspace, got {spacing!r}")


def lambda_recon_auto(prompt_similarity: float) -> float:
    """Table 3's rule: lambda_recon = 3 x CLIP cosine similarity of the two prompts."""
    return 3.0 * prompt_similarity


def _top(t_0: int | None, num_train_timesteps: int) -> int:
    return num_train_timesteps - 1 if t_0 is None else t_0


@dataclass
class LossConfig:
    """Eq. 7's weights and the two choices the paper and the official code make differently (asyrp.core.losses)."""

    lambda_clip: float = setting(0.8, ge=0)
    lambda_recon: float | None = setting(None, ge=0)  # None -> lambda_recon_auto (Table 3)
    loss_form: str = setting("log", choices=LOSS_FORMS)
    clip_source: str = setting("x0", choices=CLIP_SOURCES)
    # Each prompt averaged over the OpenAI ImageNet templates: "imagenet" = open_clip's 80 (default),
    # "official" = the official code's 79 (the same less "a photo of many {}."), "none" = the raw prompt.
    # True / False mean "imagenet" / "none".
    templates: str = setting("imagenet", choices=TEMPLATES)

    def __post_init__(self):
        if isinstance(self.templates, bool):
            self.templates = "imagenet" if self.templates else "none"

    def lambda_recon_for(self, prompt_similarity: float) -> float:
        """The L1 weight: the fixed number, or Table 3's 3 x prompt similarity when None."""
        return lambda_recon_auto(prompt_similarity) if self.lambda_recon is None else float(self.lambda_recon)

    def validate(self) -> None:
        check(self)


@dataclass
class TrainConfig:
    """Algorithm 2's settings (asyrp.core.train); official: SGD lr 0.5, momentum 0, StepLR(20, 0.9)."""

    t_edit: int = setting(ge=0)
    n_train_steps: int = setting(40, ge=2)  # S: size of the generative grid used in training
    spacing: str = setting("uniform", choices=SPACINGS)
    t_0: int | None = setting(None, ge=1)  # inversion depth of x_T (None: T - 1); the editing interval is [t_0, t_edit]
    epochs: int = setting(1, ge=1)
    optimizer: str = setting("sgd", choices=OPTIMIZERS)
    lr: float = setting(0.5, gt=0)
    momentum: float = setting(0.0, ge=0, lt=1)
    lr_step_size: int = setting(20, ge=1)
    lr_gamma: float = setting(0.9, gt=0, le=1)
    # When StepLR counts a step: once per epoch (official: scheduler_ft.step() after the image loop, so one
    # epoch at lr 0.5 is constant) or after every optimiser step (decays within the epoch).
    lr_step_per: str = setting("epoch", choices=LR_STEP_PER)
    step_per: str = setting("timestep", choices=STEP_PER)  # "timestep" (official: one optimiser step per t)
    seed: int = setting(0, ge=0)
    # Keep computed source trajectories in memory for later epochs (None: only when epochs > 1). At paper
    # scale that is ~0.8 MB per image and step: prefer the invert stage's cache (TrainBatch.source_pred).
    cache_sources: bool | None = None

    def validate(self, num_train_timesteps: int) -> None:
        check(self)
        check_depth(self.t_0, self.spacing, num_train_timesteps)
        top = _top(self.t_0, num_train_timesteps)
        if self.t_edit > top:
            raise ValueError(f"t_edit must be in [0, t_0={top}], got {self.t_edit}")


@dataclass
class EditConfig:
    """Algorithm 1's settings (asyrp.core.edit): the interval ends, the grid and boosting."""

    t_edit: int = setting(ge=0)
    t_boost: int = setting(ge=0)
    n_gen_steps: int = setting(40, ge=2)
    spacing: str = setting("uniform", choices=SPACINGS)
    eta_boost: float = setting(1.0, ge=0, le=1)
    normalize_multi: bool = False  # official: delta_h / sqrt(n) for n directions
    t_0: int | None = setting(None, ge=1)  # inversion depth of x_T (None: T - 1); must match the inversion's

    def validate(self, num_train_timesteps: int = 1000) -> None:
        check(self)
        check_depth(self.t_0, self.spacing, num_train_timesteps)
        check_interval(self.t_edit, self.t_boost, _top(self.t_0, num_train_timesteps))


@dataclass
class BulkInversion:
    """Bulk DDIM inversion into latent shards (asyrp.data.bulk): the grid, the source cache, the shards."""

    n_inv_steps: int = setting(40, ge=2)
    spacing: str = setting("uniform", choices=SPACINGS)
    t_0: int | None = setting(None, ge=1)  # inversion depth (None: T - 1); training and editing must use the same
    n_train_steps: int = setting(40, ge=2)  # grid of the cached source trajectory (training's)
    cache_source: bool = True
    cache_min_t: int = setting(300, ge=0)
    reconstruct: bool = False
    shard_size: int = setting(64, ge=1)
    batch_size: int = setting(8, ge=1)
    timings: dict = field(default_factory=lambda: {"images": 0, "seconds": 0.0, "passes": 0})
