"""The pipeline's single configuration: ``params.yaml`` as validated pydantic models.

``load_params(path) -> Params`` validates on load; any problem raises :class:`ParamsError`, whose
message lists every problem as ``dotted.key: message`` (``train.lr: must be > 0, got -1``). The YAML's
comments describe each block. Effective stage blocks (``profiles.<name>.overrides`` deep-merged over
the top-level inversion/schedule/train/edit/evaluate): ``params.active_train`` etc.

    python -m pipeline.params [--path params.yaml]   # validate; exit 2 on problems
"""

import argparse
import difflib
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from asyrp.core.config import EditConfig, LossConfig, TrainConfig, build, interval_ok

from .blocks import (  # noqa: F401  (the block types are part of this module's API: pipeline.params.Train, ...)
    BLOCKS,
    NAME_PATTERN,
    AttributeSpec,
    Blocks,
    Edit,
    Evaluate,
    Inversion,
    Name,
    Profile,
    Schedule,
    Strict,
    Study,
    Train,
)


class _Problems(ValueError):
    """Cross-key problems found by Params' validator, already as ``dotted.key: message`` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def _choices(name: str, valid: list[str], always_list: bool = True) -> str:
    """' (did you mean 'x'?); valid: a, b' for an unknown name (the list only if no match or asked)."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return hint if close and not always_list else f"{hint}; valid: {', '.join(valid) or '(none)'}"


class Params(Strict):
    """The whole params.yaml. Build with :func:`load_params` or :func:`params_from_dict`.

    Immutable; the effective per-profile blocks are computed once, at validation (so derive variants
    with ``params_from_dict({...})``, not ``model_copy(update=...)``).
    """

    profile: Name
    attributes: list[Name] = Field(min_length=1)
    profiles: dict[Name, Profile]
    catalog: dict[Name, dict[Name, AttributeSpec]]
    custom_attributes: dict[Name, AttributeSpec] = Field(default_factory=dict)
    inversion: Inversion
    schedule: Schedule
    train: Train
    edit: Edit
    evaluate: Evaluate
    study: Study = Field(default_factory=Study)
    _blocks: dict[str, Blocks] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_check(self) -> "Params":
        problems = self._check_catalog_refs()
        for name, profile in self.profiles.items():
            try:
                self._blocks[name] = self._merge(profile)
            except ValidationError as exc:
                problems += [f"profiles.{name}.overrides.{line}" for line in _problems(exc)]
        if self.profile not in self.profiles:
            problems.append(f"profile: unknown profile {self.profile!r}{_choices(self.profile, [*self.profiles])}")
        elif self.active_profile.catalog in self.catalog and self.profile in self._blocks:
            problems += self._check_active()
        if problems:
            raise _Problems(problems)
        return self

    def _check_catalog_refs(self) -> list[str]:
        problems = []
        for name, profile in self.profiles.items():
            if profile.catalog not in self.catalog:
                valid = _choices(profile.catalog, [*self.catalog])
                problems.append(f"profiles.{name}.catalog: unknown catalog {profile.catalog!r}{valid}")
        known = {a for rows in self.catalog.values() for a in rows} | set(self.custom_attributes)
        for attr in self.schedule.overrides:
            if attr not in known:
                problems.append(f"schedule.overrides.{attr}: unknown attribute{_choices(attr, sorted(known))}")
        return problems

    def _check_active(self) -> list[str]:
        profile, problems = self.active_profile, []
        if not profile.supported:
            problems.append(f"profile: {self.profile!r} is not supported: {profile.unsupported_reason}")
        valid, seen = self.active_catalog, set()
        for i, attr in enumerate(self.attributes):
            if attr in seen:
                problems.append(f"attributes[{i}]: {attr!r} is listed twice")
            elif attr not in valid:
                where = f"profile {self.profile!r} (catalog {profile.catalog!r} + custom_attributes)"
                problems.append(f"attributes[{i}]: unknown attribute {attr!r} for {where}{_choices(attr, [*valid])}")
            seen.add(attr)
        for attr in self.active_schedule.overrides:  # t_edit_default and an override's t_boost: both known here
            te, tb = self.fixed_times(attr)
            if te and tb and not interval_ok(te[1], tb[1]):
                problems.append(f"{te[0]}: {te[1]} must be above {tb[0]}={tb[1]} (need t_boost < t_edit)")
        n_coef, n_attr = len(self.active_edit.coefficients), len(self.attributes)
        if n_coef not in (1, n_attr):
            problems.append(f"edit.coefficients: {n_coef} values for {n_attr} attributes (give 1 or {n_attr})")
        return problems

    def _merge(self, profile: Profile) -> Blocks:
        over = profile.overrides.model_dump(exclude_unset=True)
        merged = {
            name: cls.model_validate(_deep_merge(getattr(self, name).model_dump(), over.get(name, {})))
            for name, cls in BLOCKS.items()
        }
        return Blocks(**merged)

    # --- accessors -------------------------------------------------------------------------------------

    @property
    def active_profile(self) -> Profile:
        """The profile named by ``profile``."""
        return self.profiles[self.profile]

    def catalog_for(self, profile: str | None = None) -> dict[str, AttributeSpec]:
        """A profile's attribute rows: its catalog, then custom_attributes (which win on a clash)."""
        return {**self.catalog[self.profiles[profile or self.profile].catalog], **self.custom_attributes}

    @property
    def active_catalog(self) -> dict[str, AttributeSpec]:
        """Every attribute the active profile can run (catalog + custom_attributes)."""
        return self.catalog_for()

    def attribute(self, name: str) -> AttributeSpec:
        """One attribute's row for the active profile (custom_attributes first, then the catalog)."""
        rows = self.active_catalog
        if name not in rows:
            raise ParamsError([f"attributes: unknown attribute {name!r}{_choices(name, [*rows])}"])
        return rows[name]

    @property
    def active_attributes(self) -> dict[str, AttributeSpec]:
        """The attributes that run, in the order of ``attributes``."""
        return {name: self.attribute(name) for name in self.attributes}

    def fixed_times(self, attr: str) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        """(key, value) of the params that fix ``attr``'s t_edit and t_boost; None: the LPIPS curves choose."""
        sch = self.active_schedule
        over = sch.overrides.get(attr)
        if over and over.t_edit is not None:
            t_edit = (f"schedule.overrides.{attr}.t_edit", over.t_edit)
        else:
            t_edit = ("schedule.t_edit_default", sch.t_edit_default) if sch.t_edit_default is not None else None
        t_boost = (f"schedule.overrides.{attr}.t_boost", over.t_boost) if over and over.t_boost is not None else None
        return t_edit, t_boost

    @property
    def active_coefficients(self) -> dict[str, float]:
        """Edit coefficient c_i per active attribute: the attribute row's ``coefficient`` where set, else
        edit.coefficients (one value = the same for all, or one per attribute in the order of ``attributes``)."""
        coefs = self.active_edit.coefficients
        out = {}
        for i, a in enumerate(self.attributes):
            own = self.attribute(a).coefficient
            out[a] = own if own is not None else (coefs[0] if len(coefs) == 1 else coefs[i])
        return out

    def blocks(self, profile: str | None = None) -> Blocks:
        """Effective stage blocks of a profile (default: the active one)."""
        return self._blocks[profile or self.profile]

    @property
    def active_inversion(self) -> Inversion:
        return self.blocks().inversion

    @property
    def active_schedule(self) -> Schedule:
        return self.blocks().schedule

    @property
    def active_train(self) -> Train:
        return self.blocks().train

    @property
    def active_edit(self) -> Edit:
        return self.blocks().edit

    @property
    def active_evaluate(self) -> Evaluate:
        return self.blocks().evaluate

    # --- the library's configs, built from the blocks by field name (asyrp.core.config.build) ------------

    def train_config(self, t_edit: int) -> TrainConfig:
        """Algorithm 2's settings for this t_edit: the train block, the inversion's grid spacing and depth."""
        return build(TrainConfig, self.active_train, self.active_inversion, t_edit=t_edit)

    def loss_config(self, attr: str) -> LossConfig:
        """Eq. 7's settings for one attribute: its lambdas, the train block's loss form, CLIP source, templates."""
        spec, tr = self.attribute(attr), self.active_train
        return build(LossConfig, spec, tr, lambda_recon=spec.loss_lambda_recon)

    def edit_config(self, t_edit: int, t_boost: int, t_0: int | None, **values: Any) -> EditConfig:
        """Algorithm 1's settings for this interval: the edit block, the inversion's spacing; ``values`` override."""
        return build(
            EditConfig, self.active_edit, self.active_inversion, t_edit=t_edit, t_boost=t_boost, t_0=t_0, **values
        )

    def summary(self) -> str:
        """One line: profile, model, attributes, sizes."""
        p, inv = self.active_profile, self.active_inversion
        return (
            f"profile {self.profile} ({p.model.id}, {p.model.image_size}px, device {p.device}, {p.dtype}); "
            f"{len(self.attributes)} attributes: {', '.join(self.attributes)}; "
            f"{inv.n_train_images}+{inv.n_test_images} images, {inv.n_inv_steps} inversion steps"
        )


# --- errors --------------------------------------------------------------------------------------------


class ParamsError(ValueError):
    """Invalid params: ``problems`` holds one ``dotted.key: message`` line per problem."""

    def __init__(self, problems: list[str], source: str = "params"):
        self.problems, self.source = list(problems), source
        n = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}")


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _keys_at(loc: tuple) -> list[str]:
    """Valid keys of the model that ``loc`` reaches from Params (for 'did you mean')."""
    tp: Any = Params
    for part in (*loc, None):
        while get_origin(tp) in (Annotated, Union, UnionType):  # Annotated[X, ...], X | None
            tp = get_args(tp)[0]
        if part is None:
            break
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        else:  # dict[Name, X] or list[X]: skip the key or index
            tp = get_args(tp)[-1] if get_args(tp) else None
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _num(x: Any) -> Any:
    """0.0 -> 0 in messages."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _message(err: dict) -> str:
    """A short message for one pydantic error (without its location)."""
    kind, ctx, value, loc = err["type"], err.get("ctx", {}), err.get("input"), err["loc"]
    got = f", got {value!r}" if not isinstance(value, dict | list) else ""
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        valid = _keys_at(loc[:-1])
        return f"unknown key{_choices(str(loc[-1]), valid, always_list=False)}"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = _choices(str(value), options, always_list=False).split(";")[0]
        return f"must be one of {', '.join(options)}, got {value!r}{hint}"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {_num(next(iter(ctx.values())))}{got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "string_pattern_mismatch":
        what = "name" if loc and loc[-1] == "[key]" else "value"
        return f"invalid {what} {value!r}: use lower-case letters, digits, '_' and '-' ({NAME_PATTERN})"
    if kind in ("dict_type", "model_type"):
        return f"must be a mapping of keys{got}"
    if kind in ("value_error", "assertion_error"):
        return err["msg"].split(", ", 1)[1] if ", " in err["msg"] else err["msg"]
    return f"{err['msg'].replace('Input should be', 'must be')}{got}"


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            out.extend(cause.problems)
        else:
            out.append(f"{_dotted(err['loc'])}: {_message(err)}")
    return out


# --- loading -----------------------------------------------------------------------------------------


def params_from_dict(data: Any, source: str = "params") -> Params:
    """Validate already-parsed params; raises ParamsError listing every problem."""
    if not isinstance(data, dict):
        raise ParamsError([f"<root>: must be a mapping of keys, got {type(data).__name__}"], source)
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_problems(exc), source) from None


def parse_yaml(text: str, source: str = "params") -> Any:
    """Parse YAML 1.2 like DVC does (ruamel), duplicate keys being errors."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or str(exc)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ParamsError([f"<yaml>: {where}{' '.join(problem.split())}"], source) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ParamsError (never a raw pydantic error)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError([f"<file>: cannot read: {exc.strerror or exc}"], str(path)) from None
    return params_from_dict(parse_yaml(text, str(path)), str(path))


def main(argv: list[str] | None = None) -> int:
    """CLI: validate params.yaml, print a one-line summary (exit 0) or every problem (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.params", description=main.__doc__)
    parser.add_argument("--path", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.path)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.path}: OK: {params.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
