"""Where datasets come from: sources registry, downloads, checksums, safe extraction, LMDB/parquet readers.

Everything here is stdlib + tqdm; `lmdb` and `pyarrow` are imported only when a source needs them.
Errors are `DatasetError`, whose message always says what the user can do about it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import logging
import os
import shutil
import socket
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("asyrp.data")

CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for a smooth progress bar
USER_AGENT = "asyrp-data/0.1 (Python urllib)"


class DatasetError(ValueError):
    """A dataset could not be fetched, verified, extracted or read; the message says what to do."""


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how to read it. `provenance` says where URL/checksum are documented."""

    name: str
    kind: str  # "archive" | "hf_dataset" | "folder" | "synthetic"
    url: str | None = None  # archive URL, folder path, or Hugging Face dataset id (hf_dataset)
    filename: str | None = None  # archive file name in the download cache
    sha256: str | None = None  # None: not published; the fetch logs the computed sha256 so users can pin it
    md5: str | None = None
    files: tuple[tuple[str, str | None], ...] = ()  # hf_dataset: (path in the repo, sha256 or None)
    revision: str | None = None  # hf_dataset: pinned commit
    subdir: str | None = None  # folder inside the extracted archive that holds the images (or the LMDB)
    format: str = ""
    licence: str = ""
    provenance: str = ""
    approx_size: str = ""

    def downloads(self) -> list[tuple[str, str, str | None, str | None]]:
        """(url, cache file name, sha256, md5) for every file this source needs."""
        if self.kind == "archive":
            return [(self.url, self.filename or Path(self.url).name.split("?")[0], self.sha256, self.md5)]
        if self.kind == "hf_dataset":
            hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co")  # huggingface_hub's mirror knob
            base = f"{hub}/datasets/{self.url}/resolve/{self.revision or 'main'}"
            return [(f"{base}/{f}", f"{self.name}/{Path(f).name}", sha, None) for f, sha in self.files]
        return []


_LSUN = dict(
    kind="archive",
    format="zip of an LMDB (key -> webp/jpeg bytes, shorter side 256); needs `pip install lmdb`",
    licence="LSUN (yf.io/p/lsun): images from the web, for research; download code MIT (fyu/lsun)",
    provenance="URL: fyu/lsun download.py; sha256 and byte size: tensorflow/datasets url_checksums/lsun.txt",
)
_STARGAN = "URL: clovaai/stargan-v2 download.sh; sha256: LS4GAN/uvcgan2 scripts/download_dataset.sh"
_METFACES_SHARDS = tuple((f"data/train-{i:05d}-of-00004.parquet", None) for i in range(4))

DATASETS: dict[str, DatasetSource] = {
    s.name: s
    for s in [
        DatasetSource(
            "celeba_hq", "archive", "https://www.dropbox.com/s/f7pvjij2xlpff59/celeba_hq.zip?dl=1",
            "celeba_hq.zip", "f56b0d8c505aa01ec4792f8ee2fc2ca128e2cc669277438c0b27d5d69b7e4514",
            subdir="celeba_hq/train", format="zip of JPEGs: celeba_hq/{train,val}/{female,male}/",
            licence="CelebA terms: non-commercial research only (mmlab.ie.cuhk.edu.hk/projects/CelebA.html)",
            provenance=_STARGAN, approx_size="not documented (GB range)",
        ),
        DatasetSource(
            "afhq_dog", "archive", "https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1",
            "afhq.zip", "7f63dcc14ef58c0e849b59091287e1844da97016073aac20403ae6c6132b950f",
            subdir="afhq/train/dog", format="zip of 512 px images: afhq/{train,val}/{cat,dog,wild}/",
            licence="CC BY-NC 4.0 (NAVER Corp., clovaai/stargan-v2)",
            provenance=_STARGAN, approx_size="about 1.5 GB (third-party scripts)",
        ),
        DatasetSource(
            "lsun_church", url="http://dl.yf.io/lsun/scenes/church_outdoor_train_lmdb.zip",
            sha256="91128ae026840ac0c5982b4445ab5fc4e092d6847cca76793b2b1a0815c2e74a",
            subdir="church_outdoor_train_lmdb", approx_size="2,448,463,466 bytes", **_LSUN,
        ),
        DatasetSource(  # the 300-image validation split: 6 MB, enough for the paper's ~100 training images
            "lsun_church_val", url="http://dl.yf.io/lsun/scenes/church_outdoor_val_lmdb.zip",
            sha256="34635b7547a3e51a15f942a4a4082dd6bc9cca381a953515cb2275c0eed50584",
            subdir="church_outdoor_val_lmdb", approx_size="5,957,308 bytes", **_LSUN,
        ),
        DatasetSource(
            "lsun_bedroom", url="http://dl.yf.io/lsun/scenes/bedroom_train_lmdb.zip",
            sha256="a15644c2e7153106867f0adb3491fc41224102d1f01b24494fb47d9f5d1f174e",
            subdir="bedroom_train_lmdb", approx_size="45,922,737,680 bytes", **_LSUN,
        ),
        DatasetSource(
            "lsun_bedroom_val", url="http://dl.yf.io/lsun/scenes/bedroom_val_lmdb.zip",
            sha256="5d022e781b241c25ec2e1f1f769afcdb8091d7fd58362667aec03137b8114b12",
            subdir="bedroom_val_lmdb", approx_size="4,670,661 bytes", **_LSUN,
        ),
        # Upstream (NVlabs/metfaces-dataset) is a Google Drive folder with no direct URL; this is the
        # Hugging Face mirror at a pinned commit. No shard checksum is published: pin the logged sha256s.
        DatasetSource(
            "metfaces", "hf_dataset", "huggan/metfaces", files=_METFACES_SHARDS,
            revision="ef65320b6dbc3d4500a827fd0a126b0e5a89ad08",
            format="4 parquet shards, column `image` = {bytes, path}; 1336 PNG faces, 1024 px",
            licence="CC BY-NC 2.0 (NVIDIA); source artworks CC0 (The Met)",
            provenance="NVlabs/metfaces-dataset README; mirror huggingface.co/datasets/huggan/metfaces",
            approx_size="1,645,336,178 bytes (HF dataset_infos.json)",
        ),
        DatasetSource("shapes", "synthetic", format="procedural coloured shapes", licence="generated"),
    ]
}  # fmt: skip


# --------------------------------------------------------------------------------------------- checksums
def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file, streamed in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, sha256: str | None = None, md5: str | None = None, *, name=None) -> str:
    """Check `path` against the pinned digest(s) and return its sha256; `name` is what messages call it.

    With nothing pinned, log the sha256 so the user can pin it.
    """
    name = name or path
    actual = file_digest(path, "sha256")
    if sha256 and actual != sha256.lower():
        raise DatasetError(
            f"checksum mismatch for {name}: expected sha256 {sha256.lower()}, got {actual}. "
            "The file is corrupt or not the documented release: delete it and fetch it again."
        )
    if md5 and (got := file_digest(path, "md5")) != md5.lower():
        raise DatasetError(f"checksum mismatch for {name}: expected md5 {md5.lower()}, got {got}.")
    if not sha256 and not md5:
        log.warning("no checksum pinned for %s; its sha256 is %s (pin it: `sha256: %s`)", name, actual, actual)
    return actual


# -------------------------------------------------------------------------------------------------- fetch
def _local_path(url: str) -> Path | None:
    """The local file a `url` names (plain path or file:// URL), or None for a remote URL."""
    parsed = urllib.parse.urlparse(str(url))
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https", "ftp"):
        return None
    return Path(url)  # no scheme (or a Windows drive letter): a plain path


def _resolve_host(host: str, timeout: float) -> None:
    """Resolve `host` within `timeout` s: socket timeouts do not cover DNS, which can hang offline."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, None).result(timeout=timeout)
    except concurrent.futures.TimeoutError as e:
        raise OSError(f"DNS lookup of {host} timed out") from e
    finally:
        pool.shutdown(wait=False)  # a hung resolver thread must not block us


def _manual_hint(url: str, dest: Path, sha256: str | None) -> str:
    pin = f" (expected sha256 {sha256})" if sha256 else ""
    return (
        f"Download {url} yourself (a browser also works for Dropbox/Drive links) and place the file at "
        f"{dest}{pin}, or pass its local path / file:// URL instead; then re-run."
    )


def _stream(response, part: Path) -> None:
    """Copy an open HTTP response to `part` with a progress bar."""
    total = int(response.headers.get("Content-Length") or 0) or None
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5], leave=False)
    with open(part, "wb") as f, bar:
        while chunk := response.read(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:  # the server closed the connection early
        raise OSError(f"incomplete download: {part.stat().st_size} of {total} bytes")


def _download(url: str, part: Path, timeout: float, hint: str) -> None:
    """GET `url` into `part`; any network failure becomes one DatasetError carrying `hint`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        _resolve_host(urllib.parse.urlparse(url).hostname or "", timeout)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if "text/html" in response.headers.get("Content-Type", ""):  # a login/confirm page, not data
                raise DatasetError(f"{url} returned an HTML page, not the file. {hint}")
            _stream(response, part)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        raise DatasetError(f"could not download {url}: {getattr(e, 'reason', None) or e}. {hint}") from e


def _seal_text(dest: Path, sha256: str) -> str:
    return f"{sha256.lower()} {_stat_key(dest)}"


def _present(dest: Path, sha256: str | None, md5: str | None) -> bool:
    """Is a good copy already at `dest`? A pinned sha256 verified once is remembered in `dest.verified`,
    keyed by size and mtime, so a 46 GB archive is not re-hashed on every run."""
    seal = dest.with_name(dest.name + ".verified")
    if not dest.is_file():
        return False
    if sha256 and seal.is_file() and seal.read_text() == _seal_text(dest, sha256):
        return True
    try:
        verify_checksum(dest, sha256, md5)
    except DatasetError:
        log.warning("%s exists but fails its checksum; downloading it again", dest)
        return False
    if sha256:
        seal.write_text(_seal_text(dest, sha256))
    return True


def fetch(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    md5: str | None = None,
    *,
    timeout: float = 10.0,
) -> Path:
    """Make a verified copy of `url` at `dest` and return the path to use.

    Remote URLs download to `dest.part`, then rename atomically. A `dest` already present with the right
    checksum is kept (no network). Local paths and file:// URLs are verified in place and returned as is
    (not copied). Any network failure raises one `DatasetError` naming the URL and the manual route.
    """
    dest, local = Path(dest), _local_path(url)
    if local is not None:
        if not local.is_file():
            raise DatasetError(f"local file {local} does not exist (from {url!r}).")
        verify_checksum(local, sha256, md5)
        return local
    if _present(dest, sha256, md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download(url, part, timeout, _manual_hint(url, dest, sha256))
    try:
        verify_checksum(part, sha256, md5, name=f"{url} (saved as {dest})")
    except DatasetError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


# ------------------------------------------------------------------------------------------ safe extract
def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name may not be written, or None if it stays inside the destination."""
    norm = name.replace("\\", "/")  # some Windows tools write backslashes; treat them as separators
    if not norm.strip("/."):
        return "empty_name"
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute_path"
    if ".." in norm.split("/"):
        return "traversal"
    return None


def _inside(root: Path, target: Path) -> bool:
    return os.path.commonpath([root, target.resolve()]) == str(root)


def _write_member(root: Path, name: str, src) -> str | None:
    """Stream one regular member to root/name; return a skip reason if it would land outside root."""
    target = root / name.replace("\\", "/").strip("/")
    if not _inside(root, target):
        return "outside_dest"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    return None


def _zip_members(archive: Path) -> Iterator[tuple[str, str, Callable]]:
    """(name, kind, opener) for each zip member; kind in {file, dir, symlink, special}."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16  # unix mode bits, 0 when the zip came from Windows
            if info.is_dir():
                kind = "dir"
            elif stat.S_ISLNK(mode):
                kind = "symlink"
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # type bits are optional in zips
                kind = "special"
            else:
                kind = "file"
            yield info.filename, kind, lambda info=info: zf.open(info)


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.isfile():
        return "file"
    if m.isdir():
        return "dir"
    return "symlink" if m.issym() else "hardlink" if m.islnk() else "special"


def _tar_members(archive: Path) -> Iterator[tuple[str, str, Callable]]:
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            yield m.name, _tar_kind(m), lambda m=m: tf.extractfile(m)


def safe_extract(archive: str | Path, dest: str | Path, *, strict: bool = False) -> dict:
    """Extract a .zip / .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz into `dest`, never outside it.

    Absolute paths, `..` traversal, symlinks, hardlinks and device/fifo members are skipped and counted
    (or raise `DatasetError` with `strict=True`). No archive permission bits are applied. Returns
    {"extracted": n_files, "skipped": {reason: count}, "skipped_members": [names]}.
    """
    archive, root = Path(archive), Path(dest).resolve()
    if zipfile.is_zipfile(archive):
        members = _zip_members(archive)
    elif tarfile.is_tarfile(archive):
        members = _tar_members(archive)
    else:
        raise DatasetError(f"{archive} is not a zip or tar archive; extract it and use a folder source.")
    root.mkdir(parents=True, exist_ok=True)
    extracted, skipped, names = 0, Counter(), []
    for name, kind, opener in members:
        reason = _unsafe_reason(name) or (None if kind in ("file", "dir") else kind)
        if kind == "dir" and reason in (None, "empty_name"):
            (root / name.replace("\\", "/").strip("/")).mkdir(parents=True, exist_ok=True)
            continue
        if reason is None:
            try:
                with opener() as src:
                    reason = _write_member(root, name, src)
            except OSError as e:  # e.g. a file and a folder of the same name, or a full disk
                raise DatasetError(f"cannot extract {name!r} from {archive} to {root}: {e}") from e
        if reason is None:
            extracted += 1
            continue
        if strict:
            raise DatasetError(f"unsafe member {name!r} ({reason}) in {archive}; refusing to extract it.")
        skipped[reason] += 1
        names.append(name)
    if skipped:
        log.warning("%s: skipped unsafe members %s", archive, dict(skipped))
    return {"extracted": extracted, "skipped": dict(skipped), "skipped_members": names}


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()} {st.st_size} {st.st_mtime_ns}"


def extract_once(archive: Path, dest: Path) -> Path:
    """Extract `archive` to `dest` unless a completed extraction of this archive file is already there."""
    marker, key = dest / ".asyrp-extracted", _stat_key(archive)
    if marker.is_file() and marker.read_text().strip() == key:
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    safe_extract(archive, tmp)
    (tmp / marker.name).write_text(key + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # an interrupted extraction never looks complete
    return dest


# ------------------------------------------------------------------------------------- container readers
class Items:
    """A sized, re-iterable stream of (relative name, read-bytes callable) pairs."""

    def __init__(self, iterate: Callable[[], Iterator[tuple[str, Callable[[], bytes]]]], n: int):
        self._iterate, self._n = iterate, n

    def __iter__(self):
        return self._iterate()

    def __len__(self) -> int:
        return self._n


def lmdb_items(path: str | Path) -> Items:
    """Entries of an LSUN-style LMDB (key -> encoded webp/jpeg bytes), in key order."""
    try:
        import lmdb
    except ImportError as e:
        raise DatasetError(
            f"{path} is an LMDB database; reading it needs the optional `lmdb` package: `pip install lmdb`. "
            "Or export it to a folder of images first (github.com/fyu/lsun: `python data.py export`)."
        ) from e
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=1)
    n = env.stat()["entries"]

    def iterate():
        with env.begin(write=False) as txn:
            for key, value in txn.cursor():
                yield key.decode("ascii", "replace"), lambda v=bytes(value): v

    return Items(iterate, n)


def parquet_items(paths: list[Path], column: str = "image") -> Items:
    """Images stored in parquet shards as HF `Image` structs ({bytes, path}) or raw binary."""
    import pyarrow.parquet as pq

    shards = sorted(Path(p) for p in paths)
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)

    def iterate():
        for shard in shards:
            pf = pq.ParquetFile(shard)
            row = 0
            for batch in pf.iter_batches(columns=[column], batch_size=64):
                for cell in batch.column(0).to_pylist():
                    data = cell.get("bytes") if isinstance(cell, dict) else cell
                    yield f"{shard.stem}/{row:06d}", lambda d=data or b"": d
                    row += 1

    return Items(iterate, n)
