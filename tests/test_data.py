"""Dataset layer: bad-file handling, determinism, safe extraction, fetching, synthetic shapes."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import os
import re
import stat
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyrp.data import archive
from asyrp.data.datasets import (
    DATASETS,
    DatasetError,
    fetch,
    list_images,
    make_shapes_dataset,
    prepare_dataset,
    prepare_images,
)
from asyrp.toy.generator import BACKGROUNDS, COLOURS, SHAPES, SIZES, shape_factors


# ------------------------------------------------------------------------------------------------ helpers
def _png(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=40, h=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def messy(tmp_path) -> Path:
    """A folder with one file of every good, convertible and bad kind (all built here)."""
    d = tmp_path / "messy"
    (d / "sub").mkdir(parents=True)
    (d / ".cache").mkdir()
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 20, 40))  # left half fully transparent (blue underneath)
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([10, 20, 30] * 256)
    i16 = Image.fromarray(np.full((40, 40), 65535, np.uint16))
    files = {
        "a_ok.png": _png(_rgb()),
        "sub/B_OK.JPG": _png(_rgb(seed=1), "JPEG", quality=95),  # upper-case extension
        "gray.png": _png(Image.new("L", (40, 40), 77)),
        "rgba.png": _png(rgba),
        "la.png": _png(Image.new("LA", (40, 40), (10, 128))),
        "ptrans.png": _png(pal, transparency=0),
        "palette.png": _png(pal),
        "i16.png": _png(i16),
        "float.tif": _png(Image.fromarray(np.full((40, 40), 0.5, np.float32)), "TIFF"),
        "cmyk.jpg": _png(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"),
        "zero.png": b"",
        "text.jpg": b"this is not an image at all\n" * 10,
        "trunc.png": _png(_rgb(64, 64, seed=2))[:300],
        "tiny.png": _png(_rgb(4, 4)),
        "huge.png": _png(Image.new("L", (2000, 2000))),  # 4 Mpx, compresses to a few KB
        "notes.txt": b"readme",
        ".hidden.png": _png(_rgb()),
        ".cache/x.png": _png(_rgb()),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    os.symlink(d / "does-not-exist.png", d / "broken.png")  # unreadable even as root
    return d


def _prep(src, out, **kw):
    kw = {"min_side": 16, "max_pixels": 1_000_000, **kw}
    return prepare_images(src, out, 32, **kw)


# ------------------------------------------------------------------------------------- listing and images
def test_listing_is_sorted_recursive_and_ignores_hidden(messy):
    files, ignored = list_images(messy)
    rel = [f.relative_to(messy).as_posix() for f in files]
    assert rel == sorted(rel) and "sub/B_OK.JPG" in rel and "broken.png" in rel
    assert not any(part.startswith(".") for r in rel for part in r.split("/"))
    assert ignored == {"hidden": 2, "extension": 1}  # .hidden.png + .cache/, notes.txt


def test_every_bad_file_is_converted_or_skipped_with_reason(messy, tmp_path):
    report = _prep(messy, tmp_path / "out")
    assert report["skipped_reasons"] == {
        "corrupt": 1, "not_an_image": 1, "too_large": 1, "too_small": 1, "unreadable": 1, "zero_bytes": 1,
    }  # fmt: skip
    assert report["converted_reasons"] == {
        "16bit_to_8bit": 1, "alpha_on_white": 3, "cmyk": 1, "float_to_8bit": 1, "grayscale": 1, "palette": 1,
    }  # fmt: skip
    assert (report["ok"], report["converted"], report["skipped"], report["unused"]) == (2, 8, 6, 0)
    assert report["total"] == 16 and report["ignored"] == 3 and report["written"] == 10
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    rows = {r["source"]: r for r in _manifest(tmp_path / "out")}
    assert rows["i16.png"]["mode"] == "I;16" and rows["cmyk.jpg"]["conversion"] == "cmyk"
    assert rows["a_ok.png"]["source_sha256"] == _sha(messy / "a_ok.png")
    for r in rows.values():
        im = Image.open(tmp_path / "out" / "images" / f"{r['id']}.png")
        assert (im.mode, im.size) == ("RGB", (32, 32))


def test_conversion_values(messy, tmp_path):
    _prep(messy, tmp_path / "out")
    rows = {r["source"]: r for r in _manifest(tmp_path / "out")}

    def px(name):
        return np.asarray(Image.open(tmp_path / "out" / "images" / f"{rows[name]['id']}.png"))

    rgba = px("rgba.png")
    assert (rgba[:, :14] == 255).all() and (rgba[:, 18:] == [255, 0, 0]).all()  # transparent -> white
    assert (px("i16.png") == 255).all() and (px("float.tif") == 128).all()  # 65535 -> 255, 0.5 -> 128
    assert (px("gray.png") == 77).all() and (px("ptrans.png") == 255).all()
    assert (px("palette.png") == [10, 20, 30]).all()


def test_pil_bomb_guard_and_truncation(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "ok.png").write_bytes(_png(_rgb(32, 32)))
    (d / "warn.png").write_bytes(_png(Image.new("L", (40, 40))))  # 1600 px: over max, PIL warns
    (d / "error.png").write_bytes(_png(Image.new("L", (100, 100))))  # over 2x max: PIL raises
    (d / "trunc.jpg").write_bytes(_png(_rgb(64, 64), "JPEG")[:400])
    report = _prep(d, tmp_path / "out", max_pixels=1200)
    assert report["skipped_reasons"] == {"corrupt": 1, "too_large": 2} and report["written"] == 1
    assert Image.MAX_IMAGE_PIXELS != 1200  # the guard is restored afterwards


def test_outputs_are_deterministic_and_rerun_is_idempotent(messy, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra, rb = _prep(messy, a), _prep(messy, b)
    assert ra == rb and (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == sorted(p.name for p in (b / "images").iterdir())
    assert all(_sha(a / "images" / n) == _sha(b / "images" / n) for n in names)
    before = {n: (a / "images" / n).stat().st_mtime_ns for n in names}
    assert _prep(messy, a) == ra  # same outputs, files left untouched
    assert before == {n: (a / "images" / n).stat().st_mtime_ns for n in names}
    small = _prep(messy, a, max_images=3)  # stale images of the larger run are removed
    assert sorted(p.name for p in (a / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert small["written"] == 3 and small["ok"] + small["converted"] + small["skipped"] + small["unused"] == 16


def test_shuffle_is_seeded(messy, tmp_path):
    s1 = [r["source"] for r in (_prep(messy, tmp_path / "1", shuffle_seed=3), _manifest(tmp_path / "1"))[1]]
    s2 = [r["source"] for r in (_prep(messy, tmp_path / "2", shuffle_seed=3), _manifest(tmp_path / "2"))[1]]
    s0 = [r["source"] for r in (_prep(messy, tmp_path / "0"), _manifest(tmp_path / "0"))[1]]
    assert s1 == s2 and sorted(s1) == sorted(s0) and s1 != s0


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no usable image"):
        _prep(tmp_path / "in", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped_reasons"] == {"zero_bytes": 1}
    with pytest.raises(DatasetError, match="does not exist"):
        _prep(tmp_path / "nope", tmp_path / "out")


# ---------------------------------------------------------------------------------------- safe extraction
def _zip_with_symlink(path: Path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/ok.txt", "fine")
        zf.writestr("../evil.txt", "escaped")
        zf.writestr("/abs.txt", "absolute")
        zf.writestr("data\\..\\..\\win.txt", "backslash traversal")
        link = zipfile.ZipInfo("data/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")


def _tar_with_links(path: Path):
    def add(tf, name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, linkname
        tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w:gz") as tf:
        add(tf, "data/ok.txt")
        add(tf, "../evil.txt")
        add(tf, "/abs.txt")
        add(tf, "data/sym", tarfile.SYMTYPE, linkname="/etc/passwd")
        add(tf, "data/hard", tarfile.LNKTYPE, linkname="data/ok.txt")
        add(tf, "data/dev", tarfile.CHRTYPE)
        add(tf, "data/fifo", tarfile.FIFOTYPE)


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_safe_extract_rejects_unsafe_members(tmp_path, kind):
    arc = tmp_path / f"a.{kind}"
    (_zip_with_symlink if kind == "zip" else _tar_with_links)(arc)
    dest = tmp_path / "deep" / "dest"
    res = archive.safe_extract(arc, dest)
    assert res["extracted"] == 1 and (dest / "data" / "ok.txt").read_bytes() in (b"fine", b"x")
    want = (
        {"traversal": 2, "absolute_path": 1, "symlink": 1}
        if kind == "zip"
        else {"traversal": 1, "absolute_path": 1, "symlink": 1, "hardlink": 1, "special": 2}
    )
    assert res["skipped"] == want
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"a.{kind}", "deep/dest/data/ok.txt"]  # nothing outside dest, no links
    with pytest.raises(DatasetError, match="unsafe member"):
        archive.safe_extract(arc, tmp_path / "strict", strict=True)


def test_safe_extract_plain_tar_and_not_an_archive(tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("hi")
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        tf.add(src, arcname="x/f.txt")
    assert archive.safe_extract(tmp_path / "a.tar", tmp_path / "d")["extracted"] == 1
    with pytest.raises(DatasetError, match="not a zip or tar"):
        archive.safe_extract(src, tmp_path / "e")


# ----------------------------------------------------------------------------------------------- fetching
def test_fetch_local_and_checksum_mismatch(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    assert fetch(str(f), tmp_path / "dest", sha256=good) == f
    assert fetch(f.as_uri(), tmp_path / "dest", md5=hashlib.md5(b"hello").hexdigest()) == f
    with pytest.raises(DatasetError, match=f"expected sha256 {'0' * 64}, got {good}"):
        fetch(str(f), tmp_path / "dest", sha256="0" * 64)
    with pytest.raises(DatasetError, match="does not exist"):
        fetch(str(tmp_path / "missing.zip"), tmp_path / "dest")


def test_fetch_offline_fails_fast_with_manual_hint(tmp_path):
    dest = tmp_path / "cache" / "x.zip"
    t0 = time.monotonic()
    with pytest.raises(DatasetError) as err:
        fetch("http://127.0.0.1:9/x.zip", dest, sha256="ab" * 32, timeout=2)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "http://127.0.0.1:9/x.zip" in msg and str(dest) in msg and "ab" * 32 in msg
    assert not dest.exists() and not dest.with_name("x.zip.part").exists()


def test_fetch_skips_present_file_without_network(tmp_path):
    dest, sha = tmp_path / "x.zip", hashlib.sha256(b"cached").hexdigest()
    dest.write_bytes(b"cached")
    assert fetch("http://127.0.0.1:9/x.zip", dest, sha256=sha) == dest
    assert dest.with_name("x.zip.verified").is_file()  # next runs skip re-hashing
    assert fetch("http://127.0.0.1:9/x.zip", dest, sha256=sha) == dest
    dest.write_bytes(b"changed")  # size/mtime change: verified again, fails, tries the network
    with pytest.raises(DatasetError, match="could not download"):
        fetch("http://127.0.0.1:9/x.zip", dest, sha256=sha)


@pytest.fixture
def http_dir(tmp_path):
    """A throwaway HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_verifies_and_renames(http_dir, tmp_path, caplog):
    www, base = http_dir
    (www / "a.bin").write_bytes(b"payload" * 1000)
    good = hashlib.sha256(b"payload" * 1000).hexdigest()
    dest = tmp_path / "dl" / "a.bin"
    assert fetch(f"{base}/a.bin", dest, sha256=good) == dest and _sha(dest) == good
    dest.unlink()
    with caplog.at_level("WARNING", logger="asyrp.data"):
        fetch(f"{base}/a.bin", dest)  # unpinned: logs the sha256 to pin
    assert good in caplog.text
    dest.unlink()
    with pytest.raises(DatasetError, match="checksum mismatch"):
        fetch(f"{base}/a.bin", dest, sha256="1" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))
    (www / "page.html").write_text("<html>click to download</html>")
    with pytest.raises(DatasetError, match="HTML page"):
        fetch(f"{base}/page.html", tmp_path / "dl" / "p.zip")


# ----------------------------------------------------------------------------------------- prepare_dataset
def test_prepare_dataset_folder_archive_and_errors(tmp_path):
    src = tmp_path / "imgs" / "nested" / "dog"
    src.mkdir(parents=True)
    for i in range(5):
        (src / f"{i}.png").write_bytes(_png(_rgb(seed=i)))
    rep = prepare_dataset({"kind": "folder", "path": str(src)}, tmp_path / "f", 32, 3, seed=0)
    assert rep["written"] == 3 and rep["unused"] == 2 and rep["kind"] == "folder"
    arc = tmp_path / "a.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, f"top/nested/dog/{p.name}")
        zf.writestr("top/nested/cat/x.png", _png(_rgb()))
    spec = {"kind": "archive", "path": str(arc), "sha256": _sha(arc), "subdir": "nested/dog", "name": "mine"}
    rep = prepare_dataset(spec, tmp_path / "a", 32, None, cache_dir=tmp_path / "cache")
    assert rep["written"] == 5 and rep["source"] == "mine"
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "a")  # re-read is stable
    assert prepare_dataset(spec, tmp_path / "a2", 32, None, cache_dir=tmp_path / "cache") == rep
    with pytest.raises(DatasetError, match="unknown dataset"):
        prepare_dataset("nope", tmp_path / "x", 32, 1)
    with pytest.raises(DatasetError, match="needs `path`"):
        prepare_dataset({"kind": "folder"}, tmp_path / "x", 32, 1)
    with pytest.raises(DatasetError, match="checksum mismatch"):
        prepare_dataset({**spec, "sha256": "f" * 64}, tmp_path / "x", 32, 1, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="expected one folder"):
        prepare_dataset({**spec, "subdir": "nested/cow"}, tmp_path / "x", 32, 1, cache_dir=tmp_path / "c")


def test_registry_entries_are_well_formed():
    for name in ("celeba_hq", "lsun_church", "lsun_bedroom", "afhq_dog", "metfaces", "shapes"):
        assert name in DATASETS
    for src in DATASETS.values():
        assert src.kind in {"archive", "hf_dataset", "folder", "synthetic"}
        for url, fname, sha, _ in src.downloads():
            assert url.startswith(("http://", "https://")) and fname and "?" not in fname
            assert sha is None or re.fullmatch("[0-9a-f]{64}", sha)
        assert src.kind == "synthetic" or src.provenance


def test_hf_parquet_dataset_and_missing_lmdb(http_dir, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    www, base = http_dir
    shard = www / "datasets/user/faces/resolve/abc123/data/train-0.parquet"
    shard.parent.mkdir(parents=True)
    cells = [{"bytes": _png(_rgb(seed=i)), "path": f"{i}.png"} for i in range(3)]
    pq.write_table(pa.table({"image": [*cells, {"bytes": b"", "path": "e"}]}), shard)
    monkeypatch.setenv("HF_ENDPOINT", base)  # a local stand-in for huggingface.co
    files = [["data/train-0.parquet", _sha(shard)]]
    spec = {"kind": "hf_dataset", "id": "user/faces", "revision": "abc123", "files": files}
    rep = prepare_dataset(spec, tmp_path / "out", 32, None, cache_dir=tmp_path / "cache")
    assert (rep["written"], rep["skipped_reasons"], rep["total"]) == (3, {"zero_bytes": 1}, 4)
    assert _manifest(tmp_path / "out")[0]["source"] == "train-0/000000"
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb -> ImportError
    with pytest.raises(DatasetError, match="pip install lmdb"):
        archive.lmdb_items(tmp_path)


def test_lsun_style_lmdb_archive(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "church_val_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(3):
            txn.put(f"key{i}".encode(), _png(_rgb(seed=i), "WEBP", lossless=True))
    env.close()
    arc = tmp_path / "church_val_lmdb.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for f in sorted((tmp_path / "church_val_lmdb").iterdir()):
            zf.write(f, f"church_val_lmdb/{f.name}")
    spec = {"kind": "archive", "path": str(arc), "subdir": "church_val_lmdb"}
    rep = prepare_dataset(spec, tmp_path / "out", 32, 2, cache_dir=tmp_path / "cache")
    assert (rep["written"], rep["unused"]) == (2, 1)
    assert [r["source"] for r in _manifest(tmp_path / "out")] == ["key0", "key1"]  # LMDB key order


# ------------------------------------------------------------------------------------------ synthetic shapes
def test_shapes_are_deterministic_and_prefix_stable(tmp_path):
    make_shapes_dataset(tmp_path / "a", 50, 32, seed=1)
    make_shapes_dataset(tmp_path / "b", 50, 32, seed=1)
    make_shapes_dataset(tmp_path / "c", 20, 32, seed=1)
    make_shapes_dataset(tmp_path / "d", 50, 32, seed=2)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    a, c, d = _manifest(tmp_path / "a"), _manifest(tmp_path / "c"), _manifest(tmp_path / "d")
    assert a[:20] == c and a != d
    assert _sha(tmp_path / "a/images/00007.png") == _sha(tmp_path / "b/images/00007.png")


def test_shape_factors_are_readable_from_pixels(tmp_path):
    n, size = 400, 32
    report = make_shapes_dataset(tmp_path, n, size, seed=0)
    rows = _manifest(tmp_path)
    assert report["written"] == n and len(rows) == n
    assert {r["shape"] for r in rows} == set(SHAPES) and {r["colour"] for r in rows} == set(COLOURS)
    assert {r["size"] for r in rows} == set(SIZES) and {r["background"] for r in rows} == set(BACKGROUNDS)
    area = {"circle": np.pi, "square": 4.0, "triangle": 2.0}  # in units of r^2
    for r in rows:
        img = np.asarray(Image.open(tmp_path / "images" / f"{r['id']}.png"))
        cx, cy, radius = int(r["cx"]), int(r["cy"]), SIZES[r["size"]] * size
        fg, bg = np.array(COLOURS[r["colour"]]), np.array(BACKGROUNDS[r["background"]])
        assert (img[cy, cx] == fg).all()  # the pixel at the shape's centre
        far = max([(0, 0), (0, size - 1), (size - 1, 0), (size - 1, size - 1)],
                  key=lambda p: (p[0] - cy) ** 2 + (p[1] - cx) ** 2)  # fmt: skip
        assert (img[far] == bg).all()
        mask = (img == fg).all(-1)
        colours = {tuple(c) for c in np.unique(img.reshape(-1, 3), axis=0).tolist()}
        assert colours <= {tuple(fg.tolist()), tuple(bg.tolist())}  # hard edges: two colours only
        assert abs(mask.sum() / (area[r["shape"]] * radius**2) - 1) < 0.2
        ys, xs = np.nonzero(mask)
        assert xs.min() >= cx - radius - 1 and xs.max() <= cx + radius and 0 <= ys.min()
        assert r["caption"] == f"a {r['size']} {r['colour']} {r['shape']} on a {r['background']} background"
    f = shape_factors(n, size, 0)
    assert f["cx"].tolist() == [int(r["cx"]) for r in rows]


def test_prepare_dataset_synthetic(tmp_path):
    rep = prepare_dataset("synthetic", tmp_path / "s", 16, 10, seed=4)
    assert rep["written"] == 10 and Image.open(tmp_path / "s/images/00009.png").size == (16, 16)
    assert prepare_dataset({"kind": "synthetic"}, tmp_path / "t", 16, 10, seed=4) == rep
