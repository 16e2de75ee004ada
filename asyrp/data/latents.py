"""Resumable Parquet shard store for per-item tensors (inverted latents, edited images, ...).

Generic on purpose: it maps string ids to fixed-shape tensors and knows nothing about diffusion.

On-disk format (one directory per store):
    shard-00000.parquet, ...   shard k holds items[k*shard_size:(k+1)*shard_size] of the id-sorted items
    _index.json                written last, only when every shard is complete

Shard schema (one Parquet file, one row per item):
    id        string                                   row key, unique across the store
    <tensor>  arrow.fixed_shape_tensor<value_type>[shape]   row shape () -> plain primitive column
    <scalar>  whatever pyarrow infers from a Python list (str, int, float, ...)
File-level key-value metadata under b"asyrp" is a JSON object:
    {"format": "asyrp.latents/2", "metadata": {caller's dict}, "columns": [{"name", "shape", "dtype"}],
     "scalars": [names], "num_rows": n, "ids_sha256": sha256 of json.dumps(ids),
     "key": what the shard was computed from (see shard_key; null for a bare write_shard),
     "file_sha256": sha256 of the whole file with these 64 hex digits read as "0" * 64 (see _file_digest)}
_index.json holds the same "format", "metadata", "columns", "scalars", the total "num_rows" and
"shards": [{"file", "num_rows", "ids_sha256", "key", "file_sha256"}].

file_sha256 covers every byte of the file (data pages, page headers, footer, this header) except its own
digits: the file is written with "0" * 64 there, hashed, and the digits patched in place (same length, so
the footer stays valid). verify_shard hashes the file the same way: one sequential read, no decoding.

Reuse (run_sharded): an existing shard is kept only if (1) its footer reads, (2) its metadata equals the
caller's, (3) it holds exactly its chunk's ids, (4) its "key" equals shard_key(metadata, the chunk's
(id, item_key(item)) pairs), so a change in what an item *contains* (same id, other file content) is seen,
and (5) it passes verify_shard, so a flipped block anywhere in the file is seen. Otherwise it is recomputed,
with one warning naming the shard and the reason. Verification reads every kept shard once per run: the
cost of reading the file and hashing it (about 0.5 s for a 64-image 256-px training shard of 770 MB).

Reads: every Parquet read of a shard raises ShardReadError (a ValueError) naming the file and what to do
(rerun the stage that wrote it, e.g. `dvc repro invert`, or delete the file), never a bare pyarrow error.

dtypes: float32, float16, float64, int64, int32, uint8, bfloat16. Arrow and Parquet have no bfloat16,
so bfloat16 is stored as its uint16 bit pattern (exact round trip); "dtype" in the column spec says to
view the bits as bfloat16 again. Tensors come back as torch tensors of the stored dtype.

Writes are atomic: `<name>.tmp-<pid>` in the same directory, fsync, os.replace, fsync of the directory,
so a killed run never leaves a torn file under a final name. One writer per directory at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

FORMAT = "asyrp.latents/2"  # /2: "key" and "file_sha256" in the header
META_KEY = b"asyrp"
ID_COLUMN = "id"
INDEX_NAME = "_index.json"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.parquet$")

# dtype name -> (numpy storage dtype, torch dtype); bfloat16 has no numpy/arrow type: its bits go as uint16.
_DTYPES: dict[str, tuple[type, torch.dtype]] = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "float64": (np.float64, torch.float64),
    "bfloat16": (np.uint16, torch.bfloat16),
    "int64": (np.int64, torch.int64),
    "int32": (np.int32, torch.int32),
    "uint8": (np.uint8, torch.uint8),
}
_TORCH_NAMES = {torch_dtype: name for name, (_, torch_dtype) in _DTYPES.items()}

Array = np.ndarray | torch.Tensor


class MetadataMismatchError(ValueError):
    """Existing shards were written with other metadata (model, steps, ...): never mix them silently."""


class ShardReadError(ValueError):
    """A shard cannot be read (torn, truncated, corrupt, missing): the message names the file and the fix.

    A ValueError, so the pipeline's stages print it as their one-line error (pipeline.common.run_cli).
    """

    def __init__(self, path: Path, problem: str | BaseException):
        if isinstance(problem, BaseException):
            problem = f"{type(problem).__name__}: {problem}"
        self.path, self.problem = Path(path), " ".join(str(problem).split())  # one line, whatever pyarrow says
        super().__init__(
            f"cannot read {self.path}: {self.problem}; rerun the stage that wrote it "
            f"(`dvc repro invert` for outputs/latents), which recomputes it, or delete the file"
        )


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn any pyarrow / OS error raised while reading `path` into a ShardReadError that names it."""
    try:
        yield
    except ShardReadError:
        raise
    except (pa.ArrowException, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardReadError(path, e) from e


@dataclass(frozen=True)
class TensorColumn:
    """A tensor column: every row is a tensor of `shape` (the batch dim excluded) and `dtype`."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> TensorColumn:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


def ids_fingerprint(ids: Sequence[str]) -> str:
    """sha256 of the JSON list of ids (JSON so that no id can fake a separator)."""
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def shard_key(metadata: dict, items: Sequence[tuple[str, str | None]]) -> str:
    """sha256 of what a shard is computed from: the caller's metadata and its (id, item fingerprint) pairs.

    The metadata says *how* (model, its weights' hash, settings, code version: the caller puts there
    everything that changes the output); the fingerprints say *from what* (e.g. each image file's sha256),
    so that an item whose id stayed but whose content changed makes the shard stale. JSON with sorted keys:
    the same inputs give the same key on every machine and run.
    """
    blob = json.dumps({"metadata": metadata, "items": [[i, fp] for i, fp in items]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


_DIGEST_FIELD = b'"file_sha256": "'  # json.dumps spelling; the header's last key, so rfind finds it
_DIGEST_PLACEHOLDER = "0" * 64


def _file_digest(path: Path) -> tuple[str, int, str]:
    """(sha256 of the file with its file_sha256 digits read as zeros, their offset, the digits stored)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 12:
            raise ShardReadError(path, f"{size} bytes: not a Parquet file")
        f.seek(size - 8)
        footer_len, magic = int.from_bytes(f.read(4), "little"), f.read(4)
        if magic != b"PAR1" or footer_len > size - 12:
            raise ShardReadError(path, "no Parquet footer (truncated?)")
        f.seek(size - 8 - footer_len)
        footer = f.read(footer_len)
        at = footer.rfind(_DIGEST_FIELD)
        if at < 0 or at + len(_DIGEST_FIELD) + 64 > footer_len:
            raise ShardReadError(path, "no file_sha256 in its footer")
        offset = size - 8 - footer_len + at + len(_DIGEST_FIELD)
        h, f_pos = hashlib.sha256(), f.seek(0)
        while f_pos < offset:
            block = f.read(min(1 << 22, offset - f_pos))
            h.update(block)
            f_pos += len(block)
        stored = f.read(64).decode("ascii", "replace")
        h.update(_DIGEST_PLACEHOLDER.encode())
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest(), offset, stored


def _to_storage(value: Array) -> tuple[np.ndarray, str]:
    """(B, *shape) tensor or array -> (numpy array in its storage dtype, dtype name)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype not in _TORCH_NAMES:
            raise TypeError(f"unsupported tensor dtype {value.dtype}; supported: {sorted(_DTYPES)}")
        name = _TORCH_NAMES[value.dtype]
        if value.dtype == torch.bfloat16:
            value = value.view(torch.uint16)
        return value.numpy(), name
    arr = np.asarray(value)
    if arr.dtype.name not in _DTYPES or arr.dtype.name == "bfloat16":
        raise TypeError(f"unsupported array dtype {arr.dtype}; supported: {sorted(_DTYPES)}")
    return arr, arr.dtype.name


def _from_storage(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """Storage array (writable, e.g. a fresh copy) -> torch tensor of `dtype`, sharing memory."""
    tensor = torch.from_numpy(arr)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _column_numpy(chunked: pa.ChunkedArray, spec: TensorColumn) -> np.ndarray:
    """Arrow tensor column -> (N, *shape) numpy array in storage dtype (read-only, zero-copy if possible)."""
    arr = chunked.combine_chunks()
    if isinstance(arr.type, pa.BaseExtensionType):
        arr = arr.storage  # fixed_size_list<value_type>[prod(shape)], row-major
    flat = arr.flatten() if pa.types.is_fixed_size_list(arr.type) else arr
    return flat.to_numpy(zero_copy_only=False).reshape(len(arr), *spec.shape)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # works for files and directories alike
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on `<path>.tmp-<pid>`, fsync it, rename it over `path`: all or nothing."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)  # by path, so pyarrow writes with native I/O rather than through a Python file object
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent)  # make the rename itself durable


def write_shard(
    path: Path,
    ids: Sequence[str],
    columns: dict[str, Array],
    scalars: dict[str, list] | None = None,
    metadata: dict | None = None,
    *,
    compression: str = "none",
    key: str | None = None,
) -> dict:
    """Atomically write one shard; columns[name] is (len(ids), *shape). Returns the header it stored.

    compression defaults to "none": float latents are close to incompressible noise. ``key`` (see
    shard_key) records what the shard was computed from; the header also gets the file's own sha256
    (file_sha256, see the module docstring), which verify_shard checks.
    """
    n, scalars = len(ids), scalars or {}
    names = [ID_COLUMN, *columns, *scalars]
    if len(set(names)) != len(names):
        raise ValueError(f"column names must be unique and not {ID_COLUMN!r}: {names}")
    arrays: dict[str, pa.Array] = {ID_COLUMN: pa.array(list(ids), pa.string())}
    specs = []
    for name, value in columns.items():
        arr, dtype = _to_storage(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ValueError(f"column {name!r}: leading dim {arr.shape[:1]} != {n} ids")
        specs.append(TensorColumn(name, tuple(arr.shape[1:]), dtype))
        arr = np.ascontiguousarray(arr)
        arrays[name] = pa.array(arr) if arr.ndim == 1 else pa.FixedShapeTensorArray.from_numpy_ndarray(arr)
    for name, values in scalars.items():
        if len(values) != n:
            raise ValueError(f"scalar column {name!r}: {len(values)} values != {n} ids")
        arrays[name] = pa.array(list(values))
    header = {
        "format": FORMAT,
        "metadata": _normalise(metadata or {}),
        "columns": [s.to_json() for s in specs],
        "scalars": list(scalars),
        "num_rows": n,
        "ids_sha256": ids_fingerprint(ids),
        "key": key,
        "file_sha256": _DIGEST_PLACEHOLDER,  # last: patched in once the file is written (_file_digest)
    }
    table = pa.table(arrays)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, table.schema, compression=compression, write_page_checksum=True) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata({META_KEY: json.dumps(header)})
        digest, offset, _ = _file_digest(tmp)  # re-read from the page cache
        with open(tmp, "r+b") as f:
            f.seek(offset)
            f.write(digest.encode())
        header["file_sha256"] = digest

    _atomic_write(Path(path), write)
    return header


def read_shard_header(path: Path) -> dict:
    """Read and check a shard's footer (only the footer); raises ShardReadError, naming the file, if it is
    torn, truncated, missing, foreign or of another format."""
    with _reading(path):
        md = pq.read_metadata(path)
        raw = (md.metadata or {}).get(META_KEY)
        if raw is None:
            raise ShardReadError(path, f"not an asyrp shard (no {META_KEY!r} metadata)")
        header = json.loads(raw)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ShardReadError(path, f"format {found!r}, expected {FORMAT!r} (written by other code?)")
    if md.num_rows != header.get("num_rows"):
        raise ShardReadError(path, f"{md.num_rows} rows, header says {header.get('num_rows')}")
    return header


def verify_shard(path: Path, header: dict | None = None) -> dict:
    """Check that the shard is, byte for byte, the file that was written; returns its header.

    Hashes the whole file (one sequential read, no decoding: ~0.5 s for 770 MB) and compares with the
    file_sha256 in its footer, so a flipped block anywhere (data, page headers, footer) is found. Raises
    ShardReadError saying what is wrong.
    """
    header = header or read_shard_header(path)
    with _reading(path):
        digest, _, stored = _file_digest(path)
    if stored != header.get("file_sha256") or digest != stored:
        raise ShardReadError(path, f"its sha256 is {digest[:16]}..., its footer says {stored[:16]}... (damaged)")
    return header


def _normalise(metadata: dict) -> dict:
    """JSON round trip, so tuples == lists and a non-serialisable value fails early."""
    return json.loads(json.dumps(metadata))


def _scan_existing(out_dir: Path, metadata: dict, overwrite: bool) -> dict[int, dict]:
    """Headers of readable shards with `metadata`, by shard number; deletes torn ones (with a warning).

    Raises MetadataMismatchError, before touching anything, if a shard has other metadata and not overwrite;
    with overwrite, deletes those (one warning for the store, with the differing keys).
    """
    found, foreign, torn = {}, [], []
    for path in sorted(out_dir.glob("shard-*.parquet")):
        match = _SHARD_RE.match(path.name)
        if match is None:
            continue
        try:
            header = read_shard_header(path)
        except Exception as e:  # torn, truncated or not ours: recompute it
            torn.append((path, e))
            continue
        if header["metadata"] != metadata:
            foreign.append((path, header["metadata"]))
        else:
            found[int(match.group(1))] = header
    if foreign:
        path, old = foreign[0]
        diff = {k: (old.get(k), metadata.get(k)) for k in sorted(old.keys() | metadata.keys())}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        what = f"{len(foreign)} shard(s) in {out_dir} (e.g. {path.name}) were written with other metadata"
        if not overwrite:
            raise MetadataMismatchError(
                f"{what} (key: (existing, requested)) {diff}; use another directory or pass overwrite=True"
            )
        warnings.warn(f"{what} (key: (existing, requested)) {_short(diff)}; they will be recomputed", stacklevel=3)
    for path, error in torn:
        warnings.warn(f"{path} is unreadable ({error}); it will be recomputed", stacklevel=3)
        path.unlink()
    for path, _ in foreign:
        path.unlink()
    return found


def _short(diff: dict, limit: int = 300) -> str:
    text = repr(diff)
    return text if len(text) <= limit else text[:limit] + "...}"


def _compute_shard(
    path: Path,
    chunk: list[tuple[str, Any]],
    process_batch: Callable,
    scalars_fn: Callable | None,
    batch_size: int,
    metadata: dict,
    bar: tqdm,
    key: str,
) -> dict:
    """Run process_batch over one shard's items into shard-sized buffers, then write the shard."""
    n = len(chunk)
    buffers: dict[str, np.ndarray] = {}  # name -> (n, *shape) storage array, filled batch by batch
    dtypes: dict[str, str] = {}
    scalars: dict[str, list] = {}
    for start in range(0, n, batch_size):
        batch = chunk[start : start + batch_size]
        out = process_batch(batch)
        if buffers and out.keys() != buffers.keys():
            raise ValueError(f"process_batch returned columns {sorted(out)}, earlier {sorted(buffers)}")
        for name, value in out.items():
            arr, dtype = _to_storage(value)
            if arr.ndim == 0 or arr.shape[0] != len(batch):
                raise ValueError(f"column {name!r}: leading dim {arr.shape[:1]} != batch of {len(batch)}")
            if name not in buffers:
                buffers[name], dtypes[name] = np.empty((n, *arr.shape[1:]), arr.dtype), dtype
            elif (buffers[name].shape[1:], dtypes[name]) != (arr.shape[1:], dtype):
                raise ValueError(f"column {name!r}: {arr.shape[1:]} {dtype} differs from earlier batches")
            buffers[name][start : start + len(batch)] = arr
        for name, values in (scalars_fn(batch) if scalars_fn else {}).items():
            scalars.setdefault(name, []).extend(values)
        bar.update(len(batch))
    columns = {name: _from_storage(buf, dtypes[name]) for name, buf in buffers.items()}
    return write_shard(path, [i for i, _ in chunk], columns, scalars, metadata, key=key)


ItemKey = Callable[[tuple[str, Any]], str]


def _chunk_key(metadata: dict, chunk: list[tuple[str, Any]], item_key: ItemKey | None) -> str:
    return shard_key(metadata, [(item[0], item_key(item) if item_key else None) for item in chunk])


def _stale(path: Path, header: dict, chunk: list[tuple[str, Any]], key: str) -> str | None:
    """Why the shard at `path` (with this header and the caller's metadata) cannot be reused, or None.

    Cheap checks first (ids, key); only a shard that passes them is read in full and hashed (verify_shard).
    """
    if header["ids_sha256"] != ids_fingerprint([i for i, _ in chunk]):
        return "holds other ids (items or shard_size changed)"
    if header.get("key") != key:
        return "was computed from other inputs: same ids and metadata, other item content (e.g. a replaced image)"
    try:
        verify_shard(path, header)
    except ShardReadError as e:
        return f"failed its integrity check ({e.problem})"
    return None


def _keep_valid(
    existing: dict[int, dict], chunks: list, paths: list[Path], out_dir: Path, metadata: dict, item_key
) -> tuple[dict[int, dict], dict[int, str]]:
    """(headers of the shards that can be reused, key of every chunk); removes shards past the end.

    A shard is reused only if it holds exactly its chunk's ids, its key matches and its file verifies.
    """
    keys = {k: _chunk_key(metadata, chunk, item_key) for k, chunk in enumerate(chunks)}
    keep = {}
    for k, header in sorted(existing.items()):
        if k >= len(chunks):
            warnings.warn(f"removing shard-{k:05d}.parquet: beyond the {len(chunks)} shards", stacklevel=3)
            (out_dir / f"shard-{k:05d}.parquet").unlink()
            continue
        reason = _stale(paths[k], header, chunks[k], keys[k])
        if reason is None:
            keep[k] = header
        else:
            warnings.warn(f"{paths[k].name} {reason}: it will be recomputed (in {out_dir})", stacklevel=3)
    return keep, keys


def _lock(out_dir: Path, shard: int | None = None) -> int:
    """Exclusive lock on the directory (or on one shard), one writer at a time (freed even on kill -9)."""
    if shard is None:
        fd = os.open(out_dir, os.O_RDONLY)
    else:  # shard workers (Dask/Prefect) share the directory: lock the shard only
        fd = os.open(out_dir / f".lock-shard-{shard:05d}", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        what = out_dir if shard is None else f"shard {shard} of {out_dir}"
        raise RuntimeError(f"another process is writing {what}") from None
    return fd


def run_sharded(
    items: Sequence[tuple[str, Any]],
    out_dir: Path,
    process_batch: Callable[[list[tuple[str, Any]]], dict[str, Array]],
    *,
    shard_size: int,
    batch_size: int,
    metadata: dict,
    scalars_fn: Callable[[list[tuple[str, Any]]], dict[str, list]] | None = None,
    item_key: ItemKey | None = None,
    overwrite: bool = False,
    progress: bool = True,
    only_shards: Sequence[int] | None = None,
) -> list[Path]:
    """Compute process_batch over (id, payload) items into resumable shards; returns the shard paths.

    Items are sorted by id; shard k holds items[k*shard_size:(k+1)*shard_size]. process_batch gets a
    list of at most batch_size items of one shard and returns {column: (len(batch), *shape)};
    scalars_fn (optional) returns {column: list of len(batch) str/int/float}. Memory holds one shard.

    ``metadata`` must name everything besides the items that decides the output (model and a hash of its
    weights, settings, a code version); ``item_key(item)`` (optional) returns a fingerprint of what an item
    contains (e.g. its file's sha256) when the payload is a reference such as a path. Each shard's header
    stores shard_key(metadata, its (id, item_key) pairs). An existing shard is kept only if its metadata,
    ids and key match and it passes verify_shard (the whole file hashed against the sha256 in its footer);
    torn, stale or corrupt shards, and those whose ids changed (items or shard_size differ), are recomputed, each with
    one warning naming it and why. Shards with other metadata raise MetadataMismatchError unless
    overwrite=True, which deletes and recomputes them (one warning).

    ``only_shards``: compute just these shard indices (for workers that share the directory, e.g. tasks
    mapped over shards on a Dask cluster); no index is written. A final call without it validates every
    shard, computes any still missing, and writes the index.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    items = sorted(items, key=lambda item: item[0])  # deterministic shards, whatever the listing order
    if len({i for i, _ in items}) != len(items):
        raise ValueError("item ids must be unique")
    out_dir, metadata = Path(out_dir), _normalise(metadata)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = [items[k : k + shard_size] for k in range(0, len(items), shard_size)]
    paths = [out_dir / f"shard-{k:05d}.parquet" for k in range(len(chunks))]
    compute = lambda k, bar, key: _compute_shard(  # noqa: E731
        paths[k], chunks[k], process_batch, scalars_fn, batch_size, metadata, bar, key
    )
    if only_shards is not None:
        return _run_some(chunks, paths, out_dir, compute, metadata, item_key, overwrite, sorted(set(only_shards)))
    lock = _lock(out_dir)
    try:
        existing = _scan_existing(out_dir, metadata, overwrite)
        for stale in [*out_dir.glob("*.tmp-*"), out_dir / INDEX_NAME]:  # leftovers of a killed run
            stale.unlink(missing_ok=True)  # the index comes back only once every shard is complete
        headers, keys = _keep_valid(existing, chunks, paths, out_dir, metadata, item_key)
        done = sum(h["num_rows"] for h in headers.values())
        with tqdm(total=len(items), initial=done, disable=not progress, unit="item", desc=out_dir.name) as bar:
            for k in range(len(chunks)):
                if k not in headers:
                    headers[k] = compute(k, bar, keys[k])
                if _layout(headers[k]) != _layout(headers[0]):  # never mix column layouts in one store
                    raise ValueError(
                        f"{paths[k].name} has columns {_layout(headers[k])}, shard 0 {_layout(headers[0])}: "
                        "process_batch output changed without a metadata change? delete the directory"
                    )
        _write_index(out_dir, paths, [headers[k] for k in range(len(chunks))], metadata)
    finally:
        os.close(lock)
    return paths


def _run_some(chunks, paths, out_dir, compute, metadata, item_key, overwrite, ks):
    """Compute shards ``ks`` only, each under its own lock; a shard already there is kept if reusable."""
    bad = [k for k in ks if not 0 <= k < len(chunks)]
    if bad:
        n_items = sum(len(c) for c in chunks)
        raise ValueError(f"shards {bad} out of range: {n_items} items make {len(chunks)} shards")
    for k in ks:
        lock = _lock(out_dir, k)
        try:
            for stale in out_dir.glob(f"{paths[k].name}.tmp-*"):
                stale.unlink(missing_ok=True)
            key, reason = _chunk_key(metadata, chunks[k], item_key), None
            try:
                header = read_shard_header(paths[k]) if paths[k].exists() else None
            except ShardReadError as e:  # torn or foreign: recompute
                header, reason = None, f"is unreadable ({e.problem})"
            if header is not None and header["metadata"] != metadata:
                if not overwrite:
                    raise MetadataMismatchError(f"{paths[k]} was written with other metadata")
                header, reason = None, "was written with other metadata"
            if header is not None:
                reason = _stale(paths[k], header, chunks[k], key)
            if header is None or reason is not None:
                if reason is not None:
                    warnings.warn(f"{paths[k].name} {reason}: it will be recomputed (in {out_dir})", stacklevel=3)
                with tqdm(total=len(chunks[k]), disable=True) as bar:
                    compute(k, bar, key)
        finally:
            os.close(lock)
    return [paths[k] for k in ks]


def _layout(header: dict) -> tuple[list, list]:
    return header["columns"], header["scalars"]


def _write_index(out_dir: Path, paths: list[Path], headers: list[dict], metadata: dict) -> None:
    columns, scalars = _layout(headers[0]) if headers else ([], [])
    shards = [
        {"file": p.name, "num_rows": h["num_rows"], "ids_sha256": h["ids_sha256"], "key": h["key"],
         "file_sha256": h["file_sha256"]}
        for p, h in zip(paths, headers, strict=True)
    ]  # fmt: skip
    index = {"format": FORMAT, "metadata": metadata, "columns": columns, "scalars": scalars,
             "num_rows": sum(h["num_rows"] for h in headers), "shards": shards}  # fmt: skip
    _atomic_write(out_dir / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))


class LatentStore:
    """Read side of a directory written by run_sharded: ids -> tensors, streamed shard by shard."""

    def __init__(self, out_dir: Path, *, allow_incomplete: bool = False):
        """Open every shard listed in _index.json (or, with allow_incomplete, every shard present)."""
        self.out_dir = Path(out_dir)
        index_path = self.out_dir / INDEX_NAME
        with _reading(index_path):
            index = json.loads(index_path.read_text()) if index_path.exists() else None
        if index is not None:
            files = [self.out_dir / s["file"] for s in index["shards"]]
        elif allow_incomplete:
            files = sorted(p for p in self.out_dir.glob("shard-*.parquet") if _SHARD_RE.match(p.name))
        else:
            raise FileNotFoundError(f"no {INDEX_NAME} in {self.out_dir}: incomplete run? (allow_incomplete)")
        headers = [read_shard_header(p) for p in files]
        first = headers[0] if headers else index or {"metadata": {}, "columns": [], "scalars": []}
        self.metadata: dict = first["metadata"]
        self.columns = {c["name"]: TensorColumn.from_json(c) for c in first["columns"]}
        self.scalar_columns: list[str] = list(first["scalars"])
        self._shards: list[tuple[Path, list[str]]] = []  # (file, its ids in row order)
        for path, header in zip(files, headers, strict=True):
            if header["metadata"] != self.metadata or _layout(header) != _layout(first):
                raise MetadataMismatchError(f"{path} disagrees with {files[0].name} on metadata or columns")
            with _reading(path):
                shard_ids = pq.read_table(path, columns=[ID_COLUMN]).column(ID_COLUMN).to_pylist()
            if ids_fingerprint(shard_ids) != header["ids_sha256"]:
                raise ShardReadError(path, "its ids do not match the fingerprint in its header")
            self._shards.append((path, shard_ids))
        self.ids: list[str] = [i for _, shard_ids in self._shards for i in shard_ids]
        self._where = {i: (s, r) for s, (_, ids) in enumerate(self._shards) for r, i in enumerate(ids)}
        if len(self._where) != len(self.ids):
            raise ValueError(f"duplicate ids across shards in {self.out_dir}")

    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, columns: list[str], ids: Sequence[str] | None) -> None:
        unknown = [c for c in columns if c not in self.columns and c not in self.scalar_columns]
        if unknown:
            raise KeyError(f"unknown columns {unknown}; have {[*self.columns, *self.scalar_columns]}")
        missing = [i for i in ids or [] if i not in self._where]
        if missing:
            raise KeyError(f"{len(missing)} ids not in {self.out_dir}: {missing[:10]}")

    def _read(self, shard: int, columns: list[str]) -> dict[str, np.ndarray]:
        """One shard's columns as (N, *shape) arrays: tensors read-only in storage dtype, scalars object."""
        path = self._shards[shard][0]
        with _reading(path):  # a page whose CRC fails raises here: name the file, say what to do
            table = pq.read_table(path, columns=columns, page_checksum_verification=True)
        if table.num_rows != len(self._shards[shard][1]):
            raise ShardReadError(path, f"{table.num_rows} rows read, {len(self._shards[shard][1])} expected")
        out = {}
        for c in columns:
            if c in self.columns:
                with _reading(path):
                    out[c] = _column_numpy(table.column(c), self.columns[c])
            else:  # object array, filled element-wise so that a list value stays one object
                out[c] = np.empty(table.num_rows, dtype=object)
                for r, value in enumerate(table.column(c).to_pylist()):
                    out[c][r] = value
        return out

    def _empty(self, column: str, n: int) -> np.ndarray:
        if column not in self.columns:
            return np.empty(n, dtype=object)
        spec = self.columns[column]
        return np.empty((n, *spec.shape), _DTYPES[spec.dtype][0])

    def _finish(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor | list]:
        """Owned (writable) storage arrays -> torch tensors of the stored dtype; scalar columns -> lists."""
        return {
            c: _from_storage(v, self.columns[c].dtype) if c in self.columns else v.tolist() for c, v in arrays.items()
        }

    def iter_batches(
        self, columns: list[str], batch_size: int, ids: Sequence[str] | None = None
    ) -> Iterator[tuple[list[str], dict[str, torch.Tensor | list]]]:
        """Yield (ids, {column: (B, *shape) tensor, or list for scalar columns}) in store (id-sorted) order.

        Batches have exactly batch_size rows (the last may be shorter) and may span shards; only one
        shard's requested columns are in memory at a time. `ids` restricts the rows (in store order).
        """
        self._check(columns, ids)
        wanted = None if ids is None else set(ids)
        batch_ids: list[str] = []
        pieces: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for s, (_, shard_ids) in enumerate(self._shards):
            rows = [r for r, i in enumerate(shard_ids) if wanted is None or i in wanted]
            if not rows:
                continue
            data = self._read(s, columns)
            if wanted is not None:
                data = {c: v[rows] for c, v in data.items()}
            piece_ids, pos = [shard_ids[r] for r in rows], 0
            while pos < len(piece_ids):  # fill the current batch, which may have started in an earlier shard
                take = min(batch_size - len(batch_ids), len(piece_ids) - pos)
                batch_ids += piece_ids[pos : pos + take]
                for c in columns:
                    pieces[c].append(data[c][pos : pos + take])
                pos += take
                if len(batch_ids) == batch_size:
                    yield batch_ids, self._finish({c: np.concatenate(p) for c, p in pieces.items()})
                    batch_ids, pieces = [], {c: [] for c in columns}
        if batch_ids:
            yield batch_ids, self._finish({c: np.concatenate(p) for c, p in pieces.items()})

    def get(self, ids: Sequence[str], columns: list[str]) -> dict[str, torch.Tensor | list]:
        """{column: (len(ids), *shape) tensor, or list for scalars}, rows in the order of `ids`."""
        self._check(columns, ids)
        by_shard: dict[int, list[tuple[int, int]]] = {}  # shard -> [(position in ids, row in shard)]
        for pos, i in enumerate(ids):
            s, r = self._where[i]
            by_shard.setdefault(s, []).append((pos, r))
        out = {c: self._empty(c, len(ids)) for c in columns}
        for s, pairs in by_shard.items():
            positions, rows = [p for p, _ in pairs], [r for _, r in pairs]
            for c, v in self._read(s, columns).items():
                out[c][positions] = v[rows]
        return self._finish(out)
