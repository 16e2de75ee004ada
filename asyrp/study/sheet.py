"""Build user-study sheets (App. K.1): sets of (original, method A, method B) in one self-contained HTML page.

    files = build_study([Condition("smiling", "smiling", original="data/test", a="ours/smiling",
                                   b="diffusionclip/smiling", group="CelebA-HQ in-domain")],
                        "study/", methods=("Asyrp", "DiffusionCLIP"), seed=0)
    files.sheet   # study/sheet.html: give this to participants (images inlined, no network, no method names)
    files.key     # study/answer_key.json: keep this; `tally` needs it

Images are matched across the three sources by image id (the file stem: ``000123.png`` -> ``000123``). For
each condition, ``n_images`` ids are drawn with the seed and split into sets of ``group_size`` images
(App. K.1: 8 images per CelebA-HQ attribute in sets of 1; LSUN-church in sets of 4, which adds the
diversity question). Which method is on the left is drawn per set; the draw is recorded only in the answer
key. Sets of all conditions are shown in one seeded random order.

Every text from prompts, labels, titles or file names is HTML-escaped; the page's Content-Security-Policy
allows only its own inline script and style (by hash) and ``data:`` images, so the page makes no network
request and injected markup could not run even if escaping failed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

KEY_FORMAT = "asyrp-study-key"
RESPONSE_FORMAT = "asyrp-study-response"
VERSION = 1
SIDES = ("left", "right")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# App. K.1's questions, in its order; "{label}" is the condition's attribute label.
QUESTIONS: dict[str, str] = {
    "quality": "Quality: Which image quality do you think is better? (clear and less noisy)",
    "attribute": "Attribute: Which image do you think is \u201c{label}\u201d naturally?",
    "diversity": "Diversity: Which group do you think has a more diverse style?",
    "overall": "Overall: Which image do you think is better considering the above evaluation criteria?",
}
GROUP_QUESTIONS: dict[str, str] = {
    "quality": "Quality: Which group's image quality do you think is better? (clear and less noisy)",
    "attribute": "Attribute: Which group do you think is \u201c{label}\u201d naturally?",
    "diversity": QUESTIONS["diversity"],
    "overall": "Overall: Which group do you think is better considering the above evaluation criteria?",
}

ImageLike = str | Path | bytes | np.ndarray | Image.Image
ImageSource = str | Path | Mapping[str, ImageLike]


class StudyError(ValueError):
    """A study cannot be built (missing images, too few ids, bad settings)."""


@dataclass
class Condition:
    """One attribute of the study: where its originals and both methods' images are.

    ``original``, ``a``, ``b``: a folder of ``<id>.png|jpg|webp`` files or a mapping id -> image (path, bytes,
    (H, W, 3) uint8 array or PIL image). ``label``: the attribute as participants read it ("smiling").
    ``group``: the Table 1 column this condition is tallied under (default: the attribute).
    """

    attribute: str
    label: str
    original: ImageSource
    a: ImageSource
    b: ImageSource
    group: str | None = None
    n_images: int = 8
    group_size: int = 1

    def questions(self) -> list[str]:
        qs = ["quality", "attribute", "diversity", "overall"]
        return qs if self.group_size > 1 else [q for q in qs if q != "diversity"]


@dataclass
class StudyFiles:
    sheet: Path
    key: Path
    study_id: str
    n_sets: int
    n_questions: int
    sets: list[dict] = field(repr=False, default_factory=list)


# --- images ---------------------------------------------------------------------------------------------------


def _folder_index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise StudyError(f"image folder not found: {folder}")
    index: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in index:
                raise StudyError(f"{folder}: two images with id {p.stem!r} ({index[p.stem].name}, {p.name})")
            index[p.stem] = p
    return index


def _index(source: ImageSource) -> dict[str, ImageLike]:
    if isinstance(source, str | Path):
        return dict(_folder_index(Path(source)))
    return {str(k): v for k, v in source.items()}


def _describe(source: ImageSource) -> str:
    return str(source) if isinstance(source, str | Path) else f"<{len(source)} images in memory>"


def _data_uri(image: ImageLike, what: str) -> str:
    """An image as a data: URI (PNG/JPEG files inlined as they are; anything else encoded as PNG)."""
    if isinstance(image, str | Path):
        path = Path(image)
        raw = path.read_bytes()
        try:
            with Image.open(io.BytesIO(raw)) as im:
                im.verify()
                fmt = im.format
        except Exception as err:  # noqa: BLE001 - re-raised with the file named
            raise StudyError(f"{what}: {path} is not a readable image: {err}") from None
        if fmt in ("PNG", "JPEG"):
            return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode("ascii")
        image = Image.open(io.BytesIO(raw))
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise StudyError(f"{what}: arrays must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise StudyError(f"{what}: unsupported image type {type(image).__name__}")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- drawing the sets -------------------------------------------------------------------------------------------


def _check(c: Condition) -> None:
    if not c.attribute.strip() or not c.label.strip():
        raise StudyError("every condition needs a non-empty attribute and label")
    if c.group_size < 1 or c.n_images < 1:
        raise StudyError(f"{c.attribute}: n_images and group_size must be >= 1")
    if c.group_size > 36:
        raise StudyError(f"{c.attribute}: group_size must be <= 36, got {c.group_size}")
    if c.n_images % c.group_size:
        raise StudyError(f"{c.attribute}: n_images ({c.n_images}) must be a multiple of group_size ({c.group_size})")


def draw_sets(conditions: Sequence[Condition], seed: int) -> tuple[list[dict], dict[str, dict[str, dict]]]:
    """The seeded draw: image ids per set, which method is left, and the presentation order.

    Each condition draws from its own stream (seed, attribute), so adding a condition leaves the others' images
    and sides unchanged. -> (sets in presentation order, {attribute: {"original"|"a"|"b": {id: image}}}).
    """
    sets, images = [], {}
    seen = set()
    for c in conditions:
        _check(c)
        if c.attribute in seen:
            raise StudyError(f"condition {c.attribute!r} is listed twice")
        seen.add(c.attribute)
        idx = {role: _index(src) for role, src in (("original", c.original), ("a", c.a), ("b", c.b))}
        common = sorted(set(idx["original"]) & set(idx["a"]) & set(idx["b"]))
        if len(common) < c.n_images:
            counts = ", ".join(
                f"{r}: {len(v)} ({_describe(s)})" for (r, v), s in zip(idx.items(), (c.original, c.a, c.b), strict=True)
            )
            raise StudyError(
                f"{c.attribute}: {c.n_images} images requested but only {len(common)} ids are in all three "
                f"sources ({counts}); images are matched by file stem"
            )
        rng = random.Random(f"{seed}:{c.attribute}")
        chosen = rng.sample(common, c.n_images)
        images[c.attribute] = {role: {i: idx[role][i] for i in chosen} for role in idx}
        for j in range(0, c.n_images, c.group_size):
            left = rng.choice(("A", "B"))
            sets.append(
                {
                    "attribute": c.attribute,
                    "group": c.group or c.attribute,
                    "label": c.label,
                    "ids": chosen[j : j + c.group_size],
                    "left": left,
                    "right": "B" if left == "A" else "A",
                    "questions": c.questions(),
                }
            )
    random.Random(f"{seed}:order").shuffle(sets)
    width = max(2, len(str(len(sets))))
    for n, s in enumerate(sets, 1):
        s["set"] = f"s{n:0{width}d}"
    return [{"set": s.pop("set"), **s} for s in sets], images


# --- the page ----------------------------------------------------------------------------------------------------


STYLE = (
    """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 1em 4em;color:#222}
header{border-bottom:1px solid #ccc;margin-bottom:1em}
.set{border:1px solid #ddd;border-radius:6px;margin:1.2em 0;padding:.6em 1em}
.set h2{font-size:1.05em;margin:.2em 0 .6em}
.row{display:flex;gap:1.2em;flex-wrap:wrap;align-items:flex-start}
figure{margin:0}
figcaption{font-weight:600;text-align:center;margin-bottom:.3em}
.imgs{display:grid;gap:4px}
.imgs img{width:100%;max-width:256px;image-rendering:auto;display:block}
fieldset{border:none;margin:.5em 0;padding:0}
legend{padding:0;margin-bottom:.2em}
label.choice{margin-right:1.5em;cursor:pointer}
#status.error{color:#a00}
#status.ok{color:#060}
#export-text{width:100%;font-family:monospace}
#progress{margin-left:1em;color:#555}
""".strip()
    + "\n"
    + "\n".join(f".cols{k}{{grid-template-columns:repeat({k},minmax(0,256px))}}" for k in range(1, 7))
)


def _template() -> str:
    return resources.files("asyrp.study").joinpath("sheet.html").read_text(encoding="utf-8")


def _script() -> str:
    return resources.files("asyrp.study").joinpath("sheet.js").read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def json_for_script(obj) -> str:
    """JSON safe inside a <script> element: no '<', '>', '&' or line separators appear literally."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _figure(caption: str, uris: list[str], alt: str) -> str:
    cols = math.ceil(math.sqrt(len(uris)))
    imgs = "".join(f'<img src="{u}" alt="{html.escape(alt)}">' for u in uris)
    return f'<figure><figcaption>{html.escape(caption)}</figcaption><div class="imgs cols{cols}">{imgs}</div></figure>'


def _set_html(n: int, total: int, s: dict, uris: dict[str, list[str]]) -> str:
    group = len(s["ids"]) > 1
    wording = GROUP_QUESTIONS if group else QUESTIONS
    parts = [
        f'<section class="set" id="set-{s["set"]}" data-set="{s["set"]}">',
        f"<h2>Set {n} of {total}</h2>",
        '<div class="row">',
        _figure("Original" + ("s" if group else ""), uris["original"], "original"),
        _figure("Left", uris[s["left"]], "left"),
        _figure("Right", uris[s["right"]], "right"),
        "</div>",
    ]
    for k, q in enumerate(s["questions"], 1):
        name = f"{s['set']}/{q}"
        text = wording[q].replace("{label}", s["label"])
        parts.append(f'<fieldset data-question="{q}"><legend>{k}) {html.escape(text)}</legend>')
        for side in SIDES:
            parts.append(
                f'<label class="choice"><input type="radio" name="{name}" value="{side}" data-set="{s["set"]}" '
                f'data-question="{q}" required> {side.capitalize()}</label>'
            )
        parts.append("</fieldset>")
    parts.append("</section>")
    return "\n".join(parts)


def render_sheet(sets: list[dict], images: dict, study_id: str, title: str, intro: str) -> str:
    """The participant's page: every image inlined, no method names, the study's meta for the script."""
    blocks = []
    for n, s in enumerate(sets, 1):
        im = images[s["attribute"]]
        uris = {
            "original": [_data_uri(im["original"][i], f"{s['attribute']}/original/{i}") for i in s["ids"]],
            "A": [_data_uri(im["a"][i], f"{s['attribute']}/A/{i}") for i in s["ids"]],
            "B": [_data_uri(im["b"][i], f"{s['attribute']}/B/{i}") for i in s["ids"]],
        }
        blocks.append(_set_html(n, len(sets), s, uris))
    meta = {"study_id": study_id, "sets": [{"set": s["set"], "questions": s["questions"]} for s in sets]}
    script, style = _script(), STYLE
    csp = (
        f"default-src 'none'; img-src data:; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
        "base-uri 'none'; form-action 'none'"
    )
    values = {
        "CSP": csp,
        "TITLE": html.escape(title),
        "INTRO": html.escape(intro),
        "PLURAL": "s" if any(len(s["ids"]) > 1 for s in sets) else "",
        "STYLE": style,
        "SETS": "\n".join(blocks),
        "META": json_for_script(meta),
        "SCRIPT": script,
    }
    return re.sub(r"@@([A-Z]+)@@", lambda m: values[m.group(1)], _template())


def study_id_of(sets: list[dict], methods: dict[str, str], seed: int, title: str) -> str:
    canon = json.dumps({"sets": sets, "methods": methods, "seed": seed, "title": title}, sort_keys=True)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:12]


def build_study(
    conditions: Sequence[Condition],
    out_dir: str | Path,
    methods: tuple[str, str] = ("Asyrp", "other method"),
    seed: int = 0,
    title: str = "Image editing study",
    intro: str = "Thank you for taking part. There are no right or wrong answers: go with your impression.",
) -> StudyFiles:
    """Write ``sheet.html`` (for participants) and ``answer_key.json`` (for the organiser) into ``out_dir``."""
    if not conditions:
        raise StudyError("a study needs at least one condition")
    if len(methods) != 2 or methods[0] == methods[1] or not all(m.strip() for m in methods):
        raise StudyError(f"methods must be two different names, got {methods!r}")
    sets, images = draw_sets(conditions, seed)
    method_map = {"A": methods[0], "B": methods[1]}
    study_id = study_id_of(sets, method_map, seed, title)
    page = render_sheet(sets, images, study_id, title, intro)
    key = {
        "format": KEY_FORMAT,
        "version": VERSION,
        "study_id": study_id,
        "title": title,
        "seed": seed,
        "methods": method_map,
        "questions": QUESTIONS,
        "conditions": [
            {
                "attribute": c.attribute,
                "label": c.label,
                "group": c.group or c.attribute,
                "n_images": c.n_images,
                "group_size": c.group_size,
                "original": _describe(c.original),
                "a": _describe(c.a),
                "b": _describe(c.b),
            }
            for c in conditions
        ],
        "sets": sets,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sheet, key_path = out / "sheet.html", out / "answer_key.json"
    _atomic_write(sheet, page)
    _atomic_write(key_path, json.dumps(key, indent=2, ensure_ascii=False) + "\n")
    return StudyFiles(sheet, key_path, study_id, len(sets), sum(len(s["questions"]) for s in sets), sets)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
