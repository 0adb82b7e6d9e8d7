"""The one tar writer and the one tar reader of the store (DESIGN.md, Store layout).

Writer: `TarWriter` streams members straight to a temporary file beside the target, with fixed
USTAR headers (mtime 0, mode 0o444, uid/gid 0, empty owner names), so the same members always
give the same bytes (a resumed run rewrites a shard byte for byte) and memory holds one member at
a time. The SHA-256, byte count and member count are taken on the fly; the file is fsynced and
renamed into place only when the `with` block ends normally, so readers never see half a tar.

Reader: WebDataset's tar iterator (the same code path the trainer streams with). `iter_members`
walks one tar front to back; `read_member` fetches one key's sample; `iter_shard` reads several
field tars of one shard in lockstep and checks that every field holds the same keys in the plan's
order, naming the tar that departs from it.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from catalog.layout import tar_path


BLOCK = tarfile.BLOCKSIZE


class ShardMismatchError(ValueError):
    """A field tar's members are not the keys the other fields or the plan say they are."""


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_parts(parts: Iterable[bytes | Any]) -> str:
    """SHA-256 of the parts one after another, each bytes or a member that streams its bytes
    (`chunks()`, e.g. features.codecs.SpilledMember): one field's members, never joined in memory."""
    h = hashlib.sha256()
    for part in parts:
        for chunk in _chunks_of(part):
            h.update(chunk)
    return h.hexdigest()


def _chunks_of(data: bytes | Any) -> Iterable[bytes]:
    return (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data.chunks()


class _ChunkReader(io.RawIOBase):
    """A member that streams its bytes (`chunks()`) as the file object tarfile copies from."""

    def __init__(self, data: Any):
        self.chunks, self.left = iter(data.chunks()), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.left:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.left = memoryview(chunk)
        n = min(len(buffer), len(self.left))
        buffer[:n] = self.left[:n]
        self.left = self.left[n:]
        return n


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (tars can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def temporary_path(path: Path) -> Path:
    """Where a file is written before its rename; the pattern `.{name}.tmp-*` marks leftovers."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file (a sidecar) under a temporary name, fsync, rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _HashingFile:
    """The file object tarfile writes through: counts and hashes every byte on its way to disk."""

    def __init__(self, f: BinaryIO):
        self.f, self.hash, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.bytes


def _header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class TarWriter:
    """A deterministic tar written member by member to a temporary file, renamed when complete.

        with TarWriter(path) as tar:
            tar.add("key.mel.npy", data)
        tar.sha256, tar.bytes, tar.n_members   # valid after the block

    On an exception inside the block the temporary file is removed and `path` is left as it was.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.tmp = temporary_path(self.path)
        self.n_members = 0
        self.bytes = 0
        self.sha256 = ""
        self._file: BinaryIO | None = None
        self._out: _HashingFile | None = None
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> "TarWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")
        self._out = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        return self

    def add(self, name: str, data: bytes | Any) -> None:
        """Append one member; its bytes go to disk now (only this member is held). `data` is
        bytes, or a member of known `len()` that streams its bytes (`chunks()`, e.g. a
        features.codecs.SpilledMember), copied block by block from its spill file."""
        if self._tar is None:
            raise RuntimeError(f"{self.path}: TarWriter.add outside its `with` block")
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else \
            io.BufferedReader(_ChunkReader(data), 1 << 20)
        self._tar.addfile(_header(name, len(data)), source)
        self.n_members += 1  # bytes and sha256 are set when the block ends (a digest per member is waste)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._tar.close()  # end-of-archive blocks and record padding, as tarfile writes them
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self.bytes, self.sha256 = self._out.bytes, self._out.hash.hexdigest()
                os.replace(self.tmp, self.path)
        finally:
            if not self._file.closed:
                self._file.close()
            if exc_type is not None or self.tmp.exists():
                self.tmp.unlink(missing_ok=True)
            self._tar = None


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """The exact bytes TarWriter writes for `members`, in memory (tests and small fixtures)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_header(name, len(data)), io.BytesIO(data))
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class CountingFile:
    """A read-only file whose bytes read are added to `counter[name]` (loader benchmarks)."""

    def __init__(self, path: Path, counter: Counter, name: str):
        self.f, self.counter, self.name = open(path, "rb"), counter, name

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.counter[self.name] += len(data)
        return data

    def close(self) -> None:
        self.f.close()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.f, attr)


def key_of(name: str) -> str:
    """WebDataset's key of a member: the name up to the first dot of its basename."""
    return name.split(".", 1)[0]


def ext_of(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else ""


def check_complete(path: Path) -> None:
    """Raise tarfile.ReadError unless the tar is whole 512-byte blocks ending in the end-of-archive
    zero blocks. (A tar cut at a header boundary otherwise reads as a shorter valid tar.)"""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 2 * BLOCK))
        tail = f.read()
    if size % BLOCK or size < 2 * BLOCK or tail.count(0) != len(tail):
        raise tarfile.ReadError(f"{path}: truncated tar ({size} bytes{', not whole 512-byte blocks' if size % BLOCK else ''}"
                                f"; no end-of-archive blocks)")


def iter_members(path: Path | str, counter: Counter | None = None, name: str = "",
                 strict: bool = True) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular member, streaming front to back (one member in memory).

    A truncated tar raises tarfile.ReadError: before the first member when `strict` (see
    check_complete), else after the members before the damage (verify reports those). A corrupt
    one raises tarfile.ReadError or EOFError. `counter[name]` accumulates the bytes read.
    """
    from webdataset.tariterators import tar_file_iterator

    path = Path(path)
    if strict:
        check_complete(path)
    stream = CountingFile(path, counter, name) if counter is not None else open(path, "rb")
    try:
        for sample in tar_file_iterator(stream, skip_meta=None):
            yield sample["fname"], sample["data"]
    finally:
        stream.close()


def iter_samples(path: Path | str, counter: Counter | None = None, name: str = "") -> Iterator[dict]:
    """WebDataset samples of one tar: consecutive members sharing a key, {"__key__", ext: bytes}."""
    current: dict | None = None
    for member, data in iter_members(path, counter, name):
        key, ext = key_of(member), ext_of(member)
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        if ext in current:
            raise ShardMismatchError(f"{path}: member {member} appears twice in one sample")
        current[ext] = data
    if current is not None:
        yield current


def read_member(path: Path | str, key: str) -> dict[str, bytes]:
    """{ext: bytes} of the members of `key` in one tar (a field with two members gives both).

    Reads up to the key's sample, not the rest of the tar. KeyError when the tar lacks the key.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tar")
    for sample in iter_samples(path):
        if sample["__key__"] == key:
            return {k: v for k, v in sample.items() if k != "__key__"}
    raise KeyError(f"{path}: no member for key {key!r}")


def iter_shard(store: Path | str, dataset: str, shard_id: int, fields: list[str],
               keys: list[str] | None = None, counter: Counter | None = None) -> Iterator[dict]:
    """One shard's utterances with several fields read in lockstep, one utterance at a time.

    Yields {"__key__": key, field: {ext: bytes}, ...} per utterance, in tar order. Every field's
    key at each position must agree with the others and, when `keys` (the plan's member order) is
    given, with the plan; at the end every tar must be exhausted and, with `keys`, hold exactly
    len(keys) utterances. Any departure raises ShardMismatchError naming the tar(s).
    `counter[field]` accumulates the bytes read from each field's tar.
    """
    store = Path(store)
    paths = [tar_path(store, dataset, f, shard_id) for f in fields]
    for field, path in zip(fields, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: the {field!r} tar of {dataset} shard {shard_id} is missing")
    series = [iter_samples(p, counter, f) for f, p in zip(fields, paths)]
    position = 0
    try:
        while True:
            samples = [next(it, None) for it in series]
            if all(s is None for s in samples):
                break
            got = [s["__key__"] if s is not None else None for s in samples]
            expected = keys[position] if keys is not None and position < len(keys) else (
                None if keys is not None else got[0])
            bad = [(f, p, k) for f, p, k in zip(fields, paths, got) if k != expected]
            if bad:
                where = "; ".join(f"{p} ({f}) has {k!r}" for f, p, k in bad)
                raise ShardMismatchError(f"{dataset} shard {shard_id}, member {position}: expected key "
                                         f"{expected!r} ({'plan' if keys is not None else fields[0]}), "
                                         f"but {where}")
            out: dict[str, Any] = {"__key__": expected}
            for field, sample in zip(fields, samples):
                out[field] = {k: v for k, v in sample.items() if k != "__key__"}
            position += 1
            yield out
    finally:
        for it in series:
            it.close()
    if keys is not None and position != len(keys):
        raise ShardMismatchError(f"{dataset} shard {shard_id}: the tars of {fields} hold {position} "
                                 f"utterances, the plan has {len(keys)} ({paths[0].parent.parent})")
