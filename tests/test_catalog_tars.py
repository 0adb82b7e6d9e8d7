"""The one tar writer and reader (catalog/tars.py) and the content-sized shard plan (catalog/plan.py)."""
from __future__ import annotations

import hashlib
import tarfile
from collections import Counter

import pytest

from catalog.layout import tar_path
from catalog.plan import extend_plan, shard_keys, shards_of
from catalog.tars import (ShardMismatchError, TarWriter, iter_members, iter_shard, read_member, tar_bytes)

MEMBERS = [("a.mel.npy", b"123"), ("a.mel_id.npy", b"x" * 700), ("b.mel.npy", b"45678" * 300)]


def test_writer_streams_the_same_bytes_as_tarfile_with_fixed_headers(tmp_path):
    path = tmp_path / "s" / "x.tar"
    with TarWriter(path) as tar:
        for name, data in MEMBERS:
            tar.add(name, data)
    data = path.read_bytes()
    assert data == tar_bytes(MEMBERS)  # same members, same bytes: a resumed shard is identical
    assert (tar.n_members, tar.bytes, tar.sha256) == (3, len(data), hashlib.sha256(data).hexdigest())
    with tarfile.open(path) as t:
        assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) for m in t} == {(0, 0o444, 0, 0, "", "")}
    assert list(iter_members(path)) == MEMBERS
    assert read_member(path, "a") == {"mel.npy": b"123", "mel_id.npy": b"x" * 700}
    with pytest.raises(KeyError, match="no member for key 'c'"):
        read_member(path, "c")
    assert [p.name for p in path.parent.iterdir()] == ["x.tar"]  # no temporary left


def test_writer_leaves_nothing_on_error_and_keeps_the_old_tar(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(tar_bytes(MEMBERS[:1]))
    with pytest.raises(RuntimeError):
        with TarWriter(path) as tar:
            tar.add("z.mel.npy", b"1")
            raise RuntimeError("worker died")
    assert path.read_bytes() == tar_bytes(MEMBERS[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar"]


def test_truncated_tar_raises_while_reading(tmp_path):
    path = tmp_path / "x.tar"
    data = tar_bytes(MEMBERS)
    for cut in (1200, 1024, 1536):  # inside a member, at a header, after a header
        path.write_bytes(data[:cut])
        with pytest.raises(tarfile.ReadError, match="truncated tar"):
            list(iter_members(path))


def _store(tmp_path, fields: dict[str, list[str]]):
    for field, keys in fields.items():
        path = tar_path(tmp_path, "ds", field, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tar_bytes([(f"{k}.{field}", k.encode() * 3) for k in keys]))
    return tmp_path


def test_iter_shard_lockstep_counts_bytes_and_checks_the_plan(tmp_path):
    store = _store(tmp_path, {"mel": ["a", "b", "c"], "audio": ["a", "b", "c"]})
    counter = Counter()
    got = list(iter_shard(store, "ds", 0, ["mel", "audio"], keys=["a", "b", "c"], counter=counter))
    assert [s["__key__"] for s in got] == ["a", "b", "c"]
    assert got[1] == {"__key__": "b", "mel": {"mel": b"bbb"}, "audio": {"audio": b"bbb"}}
    assert counter["mel"] == tar_path(store, "ds", "mel", 0).stat().st_size
    with pytest.raises(ShardMismatchError, match="plan has 4"):
        list(iter_shard(store, "ds", 0, ["mel"], keys=["a", "b", "c", "d"]))
    with pytest.raises(ShardMismatchError, match=r"member 1: expected key 'x' \(plan\).*ds-000000.tar \(mel\)"):
        list(iter_shard(store, "ds", 0, ["mel"], keys=["a", "x", "c"]))


def test_iter_shard_names_the_misaligned_field_tar(tmp_path):
    store = _store(tmp_path, {"mel": ["a", "b", "c"], "audio": ["a", "c", "b"]})
    with pytest.raises(ShardMismatchError, match=r"audio/ds-000000.tar \(audio\) has 'c'"):
        list(iter_shard(store, "ds", 0, ["mel", "audio"]))
    with pytest.raises(FileNotFoundError, match="'rgb' tar"):
        list(iter_shard(store, "ds", 0, ["mel", "rgb"]))


def _utts(seconds: list[float]) -> list[dict]:
    return [{"utt_id": f"s{i % 3}/u{i:03d}", "speaker_id": f"s{i % 3}", "video_path": "/nowhere.mp4",
             "duration_s": s} for i, s in enumerate(seconds)]


def test_shards_are_filled_to_the_minutes_target_and_reruns_append():
    plan = extend_plan([], "ds", _utts([20.0] * 10 + [200.0, 5.0]), shard_minutes=1.0)
    sizes = {sid: [r["planned_seconds"] for r in rows] for sid, rows in shards_of(plan).items()}
    assert sizes == {0: [20.0] * 3, 1: [20.0] * 3, 2: [20.0] * 3, 3: [20.0, 200.0], 4: [5.0]}
    assert all(r["index_in_shard"] == i for rows in shards_of(plan).values() for i, r in enumerate(rows))
    capped = extend_plan([], "ds", _utts([1.0] * 5), shard_size=2, shard_minutes=60)
    assert [len(v) for v in shards_of(capped).values()] == [2, 2, 1]
    grown = extend_plan(plan, "ds", _utts([20.0] * 14), shard_minutes=1.0)
    assert grown[:12] == plan and {r["shard_id"] for r in grown[12:]} == {5}
    keys = shard_keys(grown)
    assert keys[("ds", 5)] == [r["key"] for r in grown[12:]] and len(keys) == 6
