"""asyrp.data.latents: round trip, resumability (exception, real SIGKILL, torn file), metadata, memory,
reuse keyed on item content, full verification of kept shards, read errors that name the file."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from asyrp.data import latents
from asyrp.data.latents import (
    INDEX_NAME,
    LatentStore,
    MetadataMismatchError,
    ShardReadError,
    run_sharded,
    verify_shard,
    write_shard,
)

N, SHARD, BATCH = 23, 5, 2  # 5 shards (the last of 3 rows); batches do not divide shards
META = {"model": "tiny", "steps": 40, "grid": [0, 333, 666, 999]}


def make_items(n=N):
    return [(f"img-{i:03d}", i) for i in range(n)]


def compute(batch):
    """Every value is a pure function of the item (the SIGKILL subprocess imports this too)."""
    seeds = [payload for _, payload in batch]
    lat = np.stack([np.random.default_rng(s).standard_normal((4, 8, 8), dtype=np.float32) for s in seeds])
    return {
        "x_T": torch.from_numpy(lat),  # (B, 4, 8, 8) float32
        "h": torch.from_numpy(lat[:, :2, :3, 0]).to(torch.float16),  # (B, 2, 3) float16
        "eps": torch.from_numpy(lat[:, 0, 0]).to(torch.bfloat16),  # (B, 8) bfloat16
        "loss": np.asarray(seeds, dtype=np.float64) / 7,  # (B,) float64
    }


REPO = Path(latents.__file__).resolve().parents[1]


class Counter:
    """process_batch wrapper counting calls (and the ids it saw); raises once at call `fail_at`."""

    def __init__(self, fail_at=None):
        self.calls, self.seen, self.fail_at = 0, [], fail_at

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        self.seen += [i for i, _ in batch]
        return compute(batch)


def run(out, items=None, fn=None, meta=META, **kw):
    return run_sharded(
        make_items() if items is None else items,
        out,
        fn or Counter(),
        shard_size=SHARD,
        batch_size=BATCH,
        metadata=meta,
        scalars_fn=lambda b: {"path": [f"/data/{i}.png" for i, _ in b]},
        progress=False,
        **kw,
    )


def n_batches(sizes):
    return sum(-(-s // BATCH) for s in sizes)


def read_all(out):
    store = LatentStore(out)
    return store.ids, store.get(store.ids, ["x_T", "h", "eps", "loss", "path"])


def assert_same(a, b):
    ids_a, cols_a = a
    ids_b, cols_b = b
    assert ids_a == ids_b
    for c in cols_a:
        if isinstance(cols_a[c], torch.Tensor):
            assert cols_a[c].dtype == cols_b[c].dtype and torch.equal(cols_a[c], cols_b[c]), c
        else:
            assert cols_a[c] == cols_b[c], c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run(out)
    return read_all(out)


def test_round_trip(tmp_path):
    items = make_items()
    random.Random(0).shuffle(items)  # listing order must not matter: shards follow sorted ids
    fn = Counter()
    paths = run(tmp_path, items=items, fn=fn)
    assert [p.name for p in paths] == [f"shard-{k:05d}.parquet" for k in range(5)]
    assert fn.calls == n_batches([5, 5, 5, 5, 3])

    store = LatentStore(tmp_path)
    ids = [i for i, _ in make_items()]
    assert store.ids == ids and len(store) == N
    assert store.metadata == META
    assert {c: (s.shape, s.dtype) for c, s in store.columns.items()} == {
        "x_T": ((4, 8, 8), "float32"),
        "h": ((2, 3), "float16"),
        "eps": ((8,), "bfloat16"),
        "loss": ((), "float64"),
    }
    assert store.scalar_columns == ["path"]

    want = compute(make_items())
    got = store.get(ids[::-1], ["x_T", "h", "eps", "loss", "path"])  # get follows the order asked for
    for c in ["x_T", "h", "eps"]:
        assert got[c].dtype == want[c].dtype and torch.equal(got[c], want[c].flip(0)), c
    assert torch.equal(got["loss"], torch.from_numpy(want["loss"][::-1].copy()))
    assert got["path"] == [f"/data/{i}.png" for i in ids[::-1]]

    # Batches of exactly 4 across shard boundaries, only the requested columns.
    batches = list(store.iter_batches(["x_T", "path"], batch_size=4))
    assert [len(b) for b, _ in batches] == [4, 4, 4, 4, 4, 3] and set(batches[0][1]) == {"x_T", "path"}
    assert [i for b, _ in batches for i in b] == ids
    assert torch.equal(torch.cat([d["x_T"] for _, d in batches]), want["x_T"])
    batches[0][1]["x_T"].add_(1)  # returned tensors own writable memory

    subset = ["img-021", "img-002", "img-009"]
    ((sub_ids, sub),) = store.iter_batches(["h"], batch_size=8, ids=subset)
    assert sub_ids == sorted(subset) and torch.equal(sub["h"], want["h"][[2, 9, 21]])

    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["num_rows"] == N and index["metadata"] == META
    assert [s["num_rows"] for s in index["shards"]] == [5, 5, 5, 5, 3]
    with pytest.raises(KeyError, match="img-999"):
        store.get(["img-001", "img-999"], ["x_T"])
    with pytest.raises(KeyError, match="unknown columns"):
        next(store.iter_batches(["nope"], 2))


def test_write_shard_format(tmp_path):
    path = tmp_path / "s.parquet"
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    header = write_shard(
        path,
        ["a", "b"],
        {"x": x, "y": torch.ones(2, 5, dtype=torch.bfloat16)},
        {"seed": [1, 2]},
        {"model": "m", "steps": (1, 2)},
    )
    assert os.listdir(tmp_path) == ["s.parquet"]  # no temp file left
    schema = pq.read_schema(path)
    assert schema.names == ["id", "x", "y", "seed"]
    assert isinstance(schema.field("x").type, pa.FixedShapeTensorType) and schema.field("x").type.shape == [
        3,
        4,
    ]
    assert schema.field("y").type.value_type == pa.uint16()  # bf16 bit pattern
    stored = json.loads(pq.read_metadata(path).metadata[b"asyrp"])
    assert stored == header and stored["metadata"] == {"model": "m", "steps": [1, 2]}
    assert stored["columns"][0] == {"name": "x", "shape": [3, 4], "dtype": "float32"}
    assert stored["num_rows"] == 2 and stored["scalars"] == ["seed"]
    with pytest.raises(ValueError, match="leading dim"):
        write_shard(path, ["a"], {"x": x})
    with pytest.raises(ValueError, match="unique"):
        write_shard(path, ["a", "b"], {"id": x})


def test_resume_after_exception(tmp_path, reference):
    # Batches per shard: 3, 3, 3, 3, 2 -> call 8 is the middle batch of shard 2.
    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, fn=Counter(fail_at=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.parquet", "shard-00001.parquet"]
    fn = Counter()
    run(tmp_path, fn=fn)
    assert fn.calls == n_batches([5, 5, 3]) and fn.seen == [i for i, _ in make_items()[10:]]
    assert_same(read_all(tmp_path), reference)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from asyrp.data import latents
    from test_latents import BATCH, META, SHARD, compute, make_items

    if sys.argv[2] == "commit":  # stall shard 1 between fsync and rename: the kill lands mid-commit
        real_replace = os.replace
        def slow_replace(src, dst):
            if Path(dst).name == "shard-00001.parquet":
                time.sleep(120)
            real_replace(src, dst)
        latents.os.replace = slow_replace

    def slow(batch):
        time.sleep(0.2)
        return compute(batch)

    latents.run_sharded(make_items(), Path(sys.argv[1]), slow, shard_size=SHARD, batch_size=BATCH,
                        metadata=META, scalars_fn=lambda b: {"path": [f"/data/{i}.png" for i, _ in b]},
                        progress=False)
    """
)


@pytest.mark.parametrize("when", ["compute", "commit"])
def test_resume_after_sigkill(tmp_path, reference, when):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), when], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while not (out / "shard-00000.parquet").exists() or (when == "commit" and not list(out.glob("*.tmp-*"))):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "subprocess never wrote its first shard"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / INDEX_NAME).exists()
    if when == "commit":  # fully written and fsynced, but never renamed: must not count as done
        assert list(out.glob("shard-00001.parquet.tmp-*")) and not (out / "shard-00001.parquet").exists()

    done = len(list(out.glob("shard-*.parquet")))
    fn = Counter()
    run(out, fn=fn)
    assert fn.calls == n_batches([5] * (4 - done) + [3])
    assert sorted(p.name for p in out.iterdir()) == [INDEX_NAME] + [f"shard-{k:05d}.parquet" for k in range(5)]
    ids, cols = read_all(out)
    assert len(ids) == len(set(ids)) == N
    assert_same((ids, cols), reference)


def test_torn_shard_and_stale_tmp(tmp_path, reference):
    run(tmp_path)
    shard = tmp_path / "shard-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a torn file under the final name
    (tmp_path / "shard-00003.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "shard-00002.parquet.tmp-99999").write_bytes(data[:100])
    fn = Counter()
    with pytest.warns(UserWarning, match="unreadable"):
        run(tmp_path, fn=fn)
    assert fn.seen == [f"img-{i:03d}" for i in [*range(5, 10), *range(15, 20)]]
    assert not list(tmp_path.glob("*.tmp-*"))
    assert_same(read_all(tmp_path), reference)


def test_metadata_mismatch(tmp_path):
    run(tmp_path)
    other = {**META, "steps": 50}
    with pytest.raises(MetadataMismatchError, match=r"'steps': \(40, 50\)"):
        run(tmp_path, meta=other)
    assert LatentStore(tmp_path).metadata == META  # nothing was touched
    fn = Counter()
    with pytest.warns(UserWarning, match=r"5 shard\(s\) .* other metadata .*'steps': \(40, 50\)"):
        run(tmp_path, meta=other, fn=fn, overwrite=True)
    assert fn.calls == n_batches([5, 5, 5, 5, 3])
    assert LatentStore(tmp_path).metadata == other


def test_items_changed_recomputes_only_affected_shards(tmp_path):
    run(tmp_path, items=make_items(21))  # shards 5, 5, 5, 5, 1
    fn = Counter()
    with pytest.warns(UserWarning, match="other ids"):
        run(tmp_path, fn=fn)  # two more ids at the end: only the last shard changes
    assert fn.seen == ["img-020", "img-021", "img-022"]
    fn = Counter()
    with pytest.warns(UserWarning) as record:
        run(tmp_path, items=make_items(12), fn=fn)  # fewer items: shard 2 shrinks, shards 3, 4 go
    messages = sorted(str(w.message) for w in record)
    assert "beyond" in messages[0] and "shard-00004" in messages[1] and "other ids" in messages[2]
    assert fn.seen == ["img-010", "img-011"] and len(LatentStore(tmp_path)) == 12


def test_memory_holds_one_shard(tmp_path, monkeypatch):
    events = []
    real_write = latents.write_shard

    def spy_write(path, ids, columns, *args, **kw):
        events.append(("write", list(ids), {c: v.shape[0] for c, v in columns.items()}))
        return real_write(path, ids, columns, *args, **kw)

    def process(batch):
        events.append(("batch", [i for i, _ in batch]))
        return compute(batch)

    monkeypatch.setattr(latents, "write_shard", spy_write)
    run(tmp_path, fn=process)
    # Every write holds exactly the rows of the batches since the previous write, never more than a shard,
    # and no batch of shard k+1 runs before shard k is written.
    pending = []
    for event in events:
        if event[0] == "batch":
            pending += event[1]
        else:
            _, ids, rows = event
            assert ids == pending and len(ids) <= SHARD and set(rows.values()) == {len(ids)}
            pending = []
    assert pending == [] and sum(e[0] == "write" for e in events) == 5


def test_incomplete_store_and_bad_outputs(tmp_path):
    with pytest.raises(RuntimeError):
        run(tmp_path, fn=Counter(fail_at=4))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        LatentStore(tmp_path)
    assert LatentStore(tmp_path, allow_incomplete=True).ids == [f"img-{i:03d}" for i in range(5)]

    def changing(batch):
        out = compute(batch)
        if batch[0][1] >= 2:
            out["x_T"] = out["x_T"][:, :2]
        return out

    with pytest.raises(ValueError, match="differs from earlier batches"):
        run(tmp_path / "b", fn=changing)


def test_single_writer_and_empty(tmp_path):
    fd = latents._lock(tmp_path)  # as if another run_sharded were writing here
    try:
        with pytest.raises(RuntimeError, match="another process"):
            run(tmp_path)
    finally:
        os.close(fd)
    assert run(tmp_path / "empty", items=[]) == []
    empty = LatentStore(tmp_path / "empty")
    assert len(empty) == 0 and empty.metadata == META and list(empty.iter_batches([], 4)) == []


def test_only_shards_then_finalise_equals_one_run(tmp_path):
    """Workers computing disjoint shards into one folder, then a final call: same store as one run."""
    items, meta = make_items(), {"model": "m"}
    latents.run_sharded(items, tmp_path / "one", compute, shard_size=4, batch_size=3, metadata=meta, progress=False)
    n_shards = len(list((tmp_path / "one").glob("shard-*.parquet")))
    part = tmp_path / "parts"
    for ks in ([1, 3], [0], [2], list(range(4, n_shards))):  # in any order, as workers finish
        latents.run_sharded(
            items, part, compute, shard_size=4, batch_size=3, metadata=meta, progress=False, only_shards=ks
        )
    assert not (part / "_index.json").exists()
    counter = Counter()
    latents.run_sharded(items, part, counter, shard_size=4, batch_size=3, metadata=meta, progress=False)
    assert counter.calls == 0  # the final call only validates and indexes
    a, b = latents.LatentStore(tmp_path / "one"), latents.LatentStore(part)
    assert a.ids == b.ids
    ga, gb = a.get(a.ids, ["x_T", "h"]), b.get(b.ids, ["x_T", "h"])
    assert all(torch.equal(ga[c], gb[c]) for c in ga)
    with pytest.raises(ValueError, match="out of range"):
        latents.run_sharded(items, part, compute, shard_size=4, batch_size=3, metadata=meta, only_shards=[99])


def flip_block(path: Path, at: float = 0.5, n: int = 16) -> None:
    """Invert n bytes at relative position `at` of the file (a bad sector, a bit-rotted block)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i : i + n] = bytes(b ^ 0xFF for b in data[i : i + n])
    path.write_bytes(bytes(data))


def test_flipped_block_in_a_shard_is_recomputed(tmp_path, reference):
    run(tmp_path / "clean")
    out = tmp_path / "out"
    run(out)
    flip_block(out / "shard-00002.parquet")
    with pytest.raises(ShardReadError, match="shard-00002.parquet"):
        verify_shard(out / "shard-00002.parquet")
    fn = Counter()
    with pytest.warns(UserWarning, match=r"shard-00002\.parquet failed its integrity check") as record:
        run(out, fn=fn)
    assert len(record) == 1  # one line, for that shard only
    assert fn.seen == [f"img-{i:03d}" for i in range(10, 15)]
    assert_same(read_all(out), reference)
    for f in sorted((tmp_path / "clean").iterdir()):  # byte-identical to a run that never saw the damage
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_flipped_block_anywhere_is_caught(tmp_path):
    """Wherever 16 bytes flip (data pages, page headers, footer, its magic), the shard is never kept as is."""
    run(tmp_path / "clean")
    clean = (tmp_path / "clean" / "shard-00000.parquet").read_bytes()
    out = tmp_path / "out"
    for at in [k / 20 for k in range(20)] + [1 - 16 / len(clean)]:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tmp_path / "clean", out)
        flip_block(out / "shard-00000.parquet", at)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(out)
        assert (out / "shard-00000.parquet").read_bytes() == clean, at


def test_item_content_change_recomputes_its_shard(tmp_path):
    """Same ids, other content behind one of them (a replaced image file): only its shard is recomputed."""
    content = {i: p for i, p in make_items()}
    key = lambda item: str(content[item[0]])  # noqa: E731 - the item's content fingerprint
    items = lambda: [(i, content[i]) for i, _ in make_items()]  # noqa: E731
    run(tmp_path, items=items(), item_key=key)
    content["img-007"] = 1000  # same id, other content
    fn = Counter()
    with pytest.warns(UserWarning, match=r"shard-00001\.parquet was computed from other inputs"):
        run(tmp_path, items=items(), item_key=key, fn=fn)
    assert fn.seen == [f"img-{i:03d}" for i in range(5, 10)]
    got = LatentStore(tmp_path).get(["img-007"], ["x_T"])["x_T"]
    assert torch.equal(got, compute([("img-007", 1000)])["x_T"])
    fn = Counter()
    run(tmp_path, items=items(), item_key=key, fn=fn)  # nothing changed since: everything kept
    assert fn.calls == 0


def test_only_shards_checks_content_and_integrity(tmp_path):
    """The per-shard path (Prefect / Dask workers) applies the same key and full check."""
    content = {i: p for i, p in make_items()}
    kw = dict(shard_size=SHARD, batch_size=BATCH, metadata=META, progress=False)
    items = lambda: [(i, content[i]) for i, _ in make_items()]  # noqa: E731
    key = lambda item: str(content[item[0]])  # noqa: E731
    run_sharded(items(), tmp_path, compute, item_key=key, **kw)
    content["img-001"] = 99
    flip_block(tmp_path / "shard-00003.parquet")
    fn = Counter()
    with pytest.warns(UserWarning) as record:
        run_sharded(items(), tmp_path, fn, item_key=key, only_shards=[0, 1, 2, 3], **kw)
    assert sorted(str(w.message).split()[0] for w in record) == ["shard-00000.parquet", "shard-00003.parquet"]
    assert fn.seen == [f"img-{i:03d}" for i in [*range(0, 5), *range(15, 20)]]


def test_unreadable_shard_errors_name_the_file(tmp_path):
    run(tmp_path)
    shard = tmp_path / "shard-00001.parquet"
    clean = shard.read_bytes()
    shard.write_bytes(clean[: len(clean) // 2])  # truncated
    with pytest.raises(ShardReadError) as err:
        LatentStore(tmp_path)
    message = str(err.value)
    assert str(shard) in message and "dvc repro invert" in message and "\n" not in message
    assert isinstance(err.value, ValueError)  # the stages print ValueErrors as one line (run_cli)

    # A block flipped inside a column's data: the store opens (footer and ids are fine), the read names it.
    shard.write_bytes(clean)
    md = pq.ParquetFile(shard).metadata.row_group(0)
    col = next(md.column(c) for c in range(md.num_columns) if md.column(c).path_in_schema.startswith("x_T"))
    data = bytearray(clean)
    end = (col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size
    at = (col.data_page_offset + end) // 2  # the middle of its data page (after its dictionary page)
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    shard.write_bytes(bytes(data))
    store = LatentStore(tmp_path)
    with pytest.raises(ShardReadError, match=r"shard-00001\.parquet: OSError: could not verify page integrity"):
        store.get(["img-006"], ["x_T"])
    with pytest.raises(ShardReadError, match=r"shard-00001\.parquet"):
        list(store.iter_batches(["x_T"], 4))
    assert store.get(["img-001"], ["x_T"])["x_T"].shape == (1, 4, 8, 8)  # other shards still read
    shard.unlink()
    with pytest.raises(ShardReadError, match=r"cannot read .*shard-00001\.parquet: FileNotFoundError"):
        LatentStore(tmp_path)
