"""Dataset layer of the `download` stage: image preparation, synthetic shapes, `prepare_dataset`.

Every prepared dataset has the same layout, whatever its source::

    out_dir/images/<id>.png   RGB uint8, image_size x image_size, id = zero-padded output index
    out_dir/manifest.csv      one row per written image (id, source, source_sha256, width, height, ...)
    out_dir/report.json       counts for every input file: ok / converted / skipped / unused / ignored

The sources registry, fetching, checksums and safe extraction live in `asyrp.data.archive`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import random
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ..toy.data import TOY_SEED_BASE
from ..toy.generator import FACTORS, render_shapes, shape_factors
from .archive import (
    DATASETS,
    DatasetError,
    DatasetSource,
    Items,
    extract_once,
    fetch,
    lmdb_items,
    parquet_items,
)

__all__ = [
    "DATASETS", "DatasetError", "DatasetSource", "fetch", "list_images", "make_shapes_dataset",
    "prepare_dataset", "prepare_images",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------ listing
IMAGE_EXTENSIONS = frozenset(".png .jpg .jpeg .jfif .webp .bmp .gif .tif .tiff .ppm .pgm .pbm .pnm .tga".split())


def list_images(root: str | Path) -> tuple[list[Path], Counter]:
    """Image files under `root`, recursive, sorted by relative POSIX path; and ignored-file counts.

    Hidden files and folders (leading '.') and files without an image extension (case-insensitive)
    are ignored and counted. Symlinked folders are not followed (no cycles).
    """
    root, files, ignored = Path(root), [], Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        ignored["hidden"] += sum(d.startswith(".") for d in dirnames)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                ignored["hidden"] += 1
            elif Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                ignored["extension"] += 1
            else:
                files.append(Path(dirpath, name))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return files, +ignored


def _file_items(files_or_dir: str | Path | Iterable) -> tuple[list, Counter]:
    """(name, reader) pairs for a folder or an explicit list of files."""
    if isinstance(files_or_dir, str | Path):
        root = Path(files_or_dir)
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist; check the `path` of the folder source.")
        files, ignored = list_images(root)
    else:
        files, ignored = sorted(Path(f) for f in files_or_dir), Counter()
        root = Path(os.path.commonpath([f.parent for f in files])) if files else Path(".")
    return [(f.relative_to(root).as_posix(), f.read_bytes) for f in files], ignored


# ---------------------------------------------------------------------------------------- one image
class _Skip(Exception):
    """One input file is skipped; args = (reason, detail)."""


@contextlib.contextmanager
def _pil_guard(max_pixels: int):
    """PIL's decompression-bomb guard at `max_pixels` (warning -> error); truncated files stay errors."""
    old = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old


def _decode(data: bytes, min_side: int, max_pixels: int) -> Image.Image:
    """Open and fully decode one image, or raise _Skip with the reason."""
    if not data:
        raise _Skip("zero_bytes", "empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Skip("too_large", str(e)) from e
    except UnidentifiedImageError as e:
        raise _Skip("not_an_image", "not a format Pillow can identify") from e
    except Exception as e:  # a damaged header can raise nearly anything inside a plugin
        raise _Skip("corrupt", f"{type(e).__name__}: {e}") from e
    w, h = im.size
    if w * h > max_pixels:
        raise _Skip("too_large", f"{w}x{h} > max_pixels={max_pixels}")
    if min(w, h) < min_side:
        raise _Skip("too_small", f"{w}x{h}, shorter side < min_side={min_side}")
    try:
        im.load()
    except Exception as e:  # truncated data: OSError; broken streams: SyntaxError, ValueError, ...
        raise _Skip("corrupt", f"{type(e).__name__}: {e}") from e
    return im


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str]:
    """RGB uint8 version of `im` and the conversion applied ('' when it was plain RGB already)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im, ""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Transparent pixels carry arbitrary colours; composite on white, as a viewer shows them.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), "alpha_on_white"
    if mode.startswith("I;16") or mode == "I":
        # 16-bit PNG/TIFF data: scale the full 0..65535 range to 0..255.
        a = np.clip(np.asarray(im).astype(np.float64), 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(np.rint(a).astype(np.uint8)).convert("RGB"), "16bit_to_8bit"
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        a = a * 255.0 if a.size and a.min() >= 0.0 and a.max() <= 1.0 else a  # [0,1] floats or 0..255
        return Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8)).convert("RGB"), "float_to_8bit"
    reason = {"1": "grayscale", "L": "grayscale", "P": "palette", "CMYK": "cmyk"}.get(mode, f"mode_{mode}")
    return im.convert("RGB"), reason


def _square(im: Image.Image, size: int, resize: str) -> Image.Image:
    """Center-crop to a square (resize="center_crop", or "stretch" keeps all) then Lanczos to size x size."""
    if resize == "center_crop":
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    return im if im.size == (size, size) else im.resize((size, size), Image.Resampling.LANCZOS)


def _skip(name: str, reason: str, detail: str) -> dict:
    return {"source": name, "status": "skipped", "reason": reason, "detail": detail}


def _process(name: str, read, cfg: dict) -> dict:
    """Turn one input into PNG bytes plus manifest fields, or a skip record. Never raises for bad input."""
    try:
        data = read()
    except OSError as e:
        return _skip(name, "unreadable", f"{type(e).__name__}: {e}")
    try:
        im = _decode(data, cfg["min_side"], cfg["max_pixels"])
        w, h, mode = *im.size, im.mode
        rotated = im.getexif().get(0x0112, 1) not in (0, 1)  # EXIF Orientation: phone photos
        rgb, reason = _to_rgb(ImageOps.exif_transpose(im) if rotated else im)
        reason = "+".join(filter(None, [reason, "exif_rotated" if rotated else ""]))
        buf = io.BytesIO()  # PNG without metadata at a fixed zlib level: same pixels -> same bytes
        _square(rgb, cfg["image_size"], cfg["resize"]).save(buf, format="PNG")
    except _Skip as e:
        return _skip(name, *e.args)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return _skip(name, "too_large", str(e))
    except Exception as e:  # a plugin failing mid-conversion must not stop the run
        return _skip(name, "corrupt", f"{type(e).__name__}: {e}")
    return {
        "source": name, "status": "converted" if reason else "ok", "reason": reason, "png": buf.getvalue(),
        "source_sha256": hashlib.sha256(data).hexdigest(), "width": w, "height": h, "mode": mode,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------- writing outputs
MANIFEST_COLUMNS = ["id", "source", "source_sha256", "width", "height", "mode", "status", "conversion"]


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves identical files untouched (idempotent re-runs keep mtimes)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _finish(out_dir: Path, rows: list[dict], columns: list[str], report: dict) -> dict:
    """Write manifest.csv and report.json, and drop images a previous, larger run left behind."""
    keep = {f"{r['id']}.png" for r in rows}
    for stale in (out_dir / "images").glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _write_if_changed(out_dir / "manifest.csv", buf.getvalue().encode())
    _write_if_changed(out_dir / "report.json", (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return report


_WORKERS = max(1, min(8, os.cpu_count() or 1))  # Pillow releases the GIL while decoding and resizing


def _id_width(n: int | None) -> int:
    return max(5, len(str(max((n or 1) - 1, 0))))


def _summary(rows: list[dict], skipped: list[dict], ignored: Counter, total: int, cfg: dict) -> dict:
    """report.json: every input counted once (ok + converted + skipped + unused == total)."""
    status = Counter(r["status"] for r in rows)
    return {
        **cfg, "total": total, "written": len(rows), "ok": status["ok"], "converted": status["converted"],
        "skipped": len(skipped), "unused": total - len(rows) - len(skipped), "ignored": sum(ignored.values()),
        "converted_reasons": dict(sorted(Counter(r["reason"] for r in rows if r["reason"]).items())),
        "skipped_reasons": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "ignored_reasons": dict(sorted(ignored.items())), "skipped_files": skipped,
    }  # fmt: skip


def _run_items(items, out_dir: Path, cfg: dict, ignored: Counter, extra: dict) -> dict:
    """Process items in order: threads decode and resize, results are consumed in input order."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    limit = cfg["max_images"] or len(items)
    width, rows, skipped = _id_width(limit), [], []
    it = iter(items)
    bar = tqdm(total=limit, desc="prepare images", unit="img")
    with _pil_guard(cfg["max_pixels"]), ThreadPoolExecutor(_WORKERS) as pool, bar:
        while len(rows) < limit and (chunk := list(itertools.islice(it, 32))):
            for res in pool.map(lambda item: _process(*item, cfg), chunk):
                if res["status"] == "skipped":
                    skipped.append({k: res[k] for k in ("source", "reason", "detail")})
                    continue
                res["id"], res["conversion"] = f"{len(rows):0{width}d}", res["reason"]
                _write_if_changed(out_dir / "images" / f"{res['id']}.png", res.pop("png"))
                rows.append(res)
                bar.update(1)
                if len(rows) == limit:
                    break  # results computed beyond the limit are dropped and counted as unused
    report = {**_summary(rows, skipped, ignored, len(items), cfg), **extra}
    if not rows:  # keep the report so the user can see why every file was skipped
        _write_if_changed(out_dir / "report.json", (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
        raise DatasetError(
            f"no usable image among {len(items)} inputs ({report['skipped_reasons']}); "
            f"per-file reasons in {out_dir / 'report.json'}."
        )
    return _finish(out_dir, rows, MANIFEST_COLUMNS, report)


def prepare_images(
    files_or_dir: str | Path | Iterable[str | Path] | Items,
    out_dir: str | Path,
    image_size: int,
    *,
    max_images: int | None = None,
    min_side: int | None = None,
    max_pixels: int = 50_000_000,
    resize: str = "center_crop",
    shuffle_seed: int | None = None,
    report_extra: dict | None = None,
) -> dict:
    """Write `out_dir/images/<id>.png`, `manifest.csv` and `report.json` from a folder or file list.

    Inputs are read in sorted order (or a seeded permutation of it with `shuffle_seed`, so a subset of a
    class-sorted folder is not one class only) until `max_images` images are written. Each file ends
    `ok`, `converted` (reason recorded), `skipped` (reason recorded) or `unused` (after the limit).
    `min_side` defaults to image_size // 2 (at most 2x upsampling). `report_extra` is merged into
    report.json. Returns the report dict.
    """
    if resize not in ("center_crop", "stretch"):
        raise DatasetError(f"resize={resize!r}: use 'center_crop' or 'stretch'.")
    if isinstance(files_or_dir, Items):
        items, ignored = files_or_dir, Counter()
    else:
        items, ignored = _file_items(files_or_dir)
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(items)
    cfg = {
        "image_size": int(image_size), "resize": resize, "max_pixels": int(max_pixels),
        "min_side": max(1, int(image_size) // 2) if min_side is None else int(min_side),
        "max_images": max_images, "shuffle_seed": shuffle_seed,
    }  # fmt: skip
    return _run_items(items, Path(out_dir), cfg, ignored, report_extra or {})


# ---------------------------------------------------------------------------------------- synthetic shapes
SHAPE_COLUMNS = MANIFEST_COLUMNS + ["shape", "colour", "size", "background", "cx", "cy", "caption"]


def _shape_row(f: dict, i: int, width: int, seed: int) -> dict:
    row = {k: names[f[k][i]] for k, names in FACTORS.items()}
    row.update(id=f"{i:0{width}d}", source=f"synthetic:shapes/seed={seed}/{i}", cx=int(f["cx"][i]),
               cy=int(f["cy"][i]), status="ok", conversion="", mode="RGB")  # fmt: skip
    row["caption"] = f"a {row['size']} {row['colour']} {row['shape']} on a {row['background']} background"
    return row


def make_shapes_dataset(out_dir: str | Path, n_images: int, image_size: int = 32, seed: int = 0) -> dict:
    """Procedural coloured shapes with known factors: the standard layout plus factor columns.

    Factors: SHAPES x COLOURS x SIZES x BACKGROUNDS, centre (cx, cy) in pixels with the shape fully inside.
    Deterministic by seed; the first k images are the same for any n_images >= k.
    """
    out_dir, width = Path(out_dir), _id_width(n_images)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    f, rows = shape_factors(n_images, image_size, seed), []
    for start in range(0, n_images, 1024):  # bounded memory for large image_size
        stop = min(start + 1024, n_images)
        batch = render_shapes({k: v[start:stop] for k, v in f.items()}, image_size)
        for i, arr in enumerate(batch, start):
            row, buf = _shape_row(f, i, width, seed), io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            row.update(source_sha256=hashlib.sha256(buf.getvalue()).hexdigest(), width=image_size)
            row["height"] = image_size
            _write_if_changed(out_dir / "images" / f"{row['id']}.png", buf.getvalue())
            rows.append(row)
    report = {"kind": "synthetic", "seed": seed, "image_size": image_size, "total": n_images,
              "written": n_images, "ok": n_images, "converted": 0, "skipped": 0, "unused": 0, "ignored": 0,
              "converted_reasons": {}, "skipped_reasons": {}, "skipped_files": []}  # fmt: skip
    return _finish(out_dir, rows, SHAPE_COLUMNS, report)


# ---------------------------------------------------------------------------------------- entry point
def default_cache_dir() -> Path:
    """Download cache: $ASYRP_DATA_CACHE, else ~/.cache/asyrp/datasets (kept out of DVC outputs)."""
    return Path(os.environ.get("ASYRP_DATA_CACHE") or Path.home() / ".cache" / "asyrp" / "datasets")


def _find_subdir(root: Path, subdir: str | None) -> Path:
    """root/subdir, or the one folder whose path ends with `subdir` (archives nest differently)."""
    if not subdir or (root / subdir).is_dir():
        return root / (subdir or "")
    hits = [p for p in root.rglob(Path(subdir).name) if p.is_dir() and p.as_posix().endswith(subdir)]
    if len(hits) != 1:
        top = sorted(p.name for p in root.iterdir())
        raise DatasetError(f"expected one folder {subdir!r} in {root}, found {len(hits)}; top level: {top}.")
    return hits[0]


# The toy world's shapes: the generator on seeds from TOY_SEED_BASE, away from its models' training seeds.
TOY = DatasetSource("toy", "synthetic", format="procedural coloured shapes (asyrp.toy.data)", licence="generated")
SEED_BASE = {"toy": TOY_SEED_BASE}  # synthetic source name -> offset of the generator seed


def _as_source(source: str | dict) -> DatasetSource:
    if isinstance(source, DatasetSource):
        return source
    if isinstance(source, str):
        source = {"synthetic": "shapes"}.get(source, source)  # the pipeline's params say `synthetic`
        if source == TOY.name:
            return TOY
        if source not in DATASETS:
            names = sorted([*DATASETS, TOY.name])
            raise DatasetError(f"unknown dataset {source!r}: use one of {names} or a dict source.")
        return DATASETS[source]
    spec = dict(source)
    kind = spec.pop("kind", None)
    if kind not in ("archive", "folder", "synthetic", "hf_dataset"):
        raise DatasetError(f"source kind {kind!r}: use 'folder', 'archive', 'hf_dataset' or 'synthetic'.")
    url = next(filter(None, [spec.pop(k, None) for k in ("url", "path", "id")]), None)
    if kind in ("archive", "folder", "hf_dataset") and not url:
        raise DatasetError(f"a {kind} source needs `path` (or `url`, or `id`), e.g. {{kind: {kind}, path: ...}}.")
    if kind == "hf_dataset" and not spec.get("files"):
        raise DatasetError("an hf_dataset source needs `files`: parquet paths in the repo (and `revision`).")
    spec["files"] = tuple(tuple(x) if isinstance(x, list | tuple) else (x, None) for x in spec.get("files", ()))
    try:
        return DatasetSource(name=spec.pop("name", kind), kind=kind, url=url and str(url), **spec)
    except TypeError as e:
        raise DatasetError(f"bad source {source!r}: {e}") from e


def _items_for(src: DatasetSource, cache: Path) -> Items | Path:
    """Fetch (and extract) what `src` needs; return a folder or an item stream."""
    paths = [fetch(url, cache / name, sha, md5) for url, name, sha, md5 in src.downloads()]
    if src.kind == "hf_dataset":
        return parquet_items(paths)
    archive = paths[0]
    extracted = extract_once(archive, cache / f"{src.name}.extracted")
    root = _find_subdir(extracted, src.subdir)
    return lmdb_items(root) if (root / "data.mdb").is_file() else root


def prepare_dataset(
    source: str | dict | DatasetSource,
    out_dir: str | Path,
    image_size: int,
    n_images: int | None,
    seed: int = 0,
    *,
    cache_dir: str | Path | None = None,
    **image_options,
) -> dict:
    """Fetch/prepare `source` into `out_dir` (standard layout); return the report dict.

    `source`: a registry name (see `DATASETS`), ``"toy"`` (the toy world's shapes, generator seed
    TOY_SEED_BASE + seed), or {"kind": "folder", "path": ...},
    {"kind": "archive", "path" | "url": ..., "sha256": ..., "subdir": ...}, {"kind": "synthetic"}.
    Folder-like sources take a seeded random subset of n_images; LMDB sources stream in key order.
    `image_options` go to `prepare_images` (min_side, max_pixels, resize).
    """
    src = _as_source(source)
    if src.kind == "synthetic":
        return make_shapes_dataset(out_dir, n_images or 1000, image_size, SEED_BASE.get(src.name, 0) + seed)
    if src.kind == "folder":
        data = Path(src.url)
    else:
        data = _items_for(src, Path(cache_dir) if cache_dir else default_cache_dir())
    extra = {"source": src.name, "kind": src.kind, "provenance": src.provenance, "licence": src.licence}
    return prepare_images(
        data, out_dir, image_size, max_images=n_images, shuffle_seed=seed, report_extra=extra, **image_options
    )
