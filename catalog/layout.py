"""Where everything lives in a store (DESIGN.md, Store layout); the one place that builds paths.

    <store>/store.json
    <store>/store.lock                  the running writer, if any (catalog/lock.py)
    <store>/plan.parquet                the shard plan (PLAN_SCHEMA), written before extraction
    <store>/catalog/<table>.parquet     the five tables, swapped in together when a build ends
    <store>/.catalog/gNNNNNN/           catalog generations; `catalog` is a symlink to the current one
    <store>/shards/<dataset>/<field>/<dataset>-<NNNNNN>.tar   (+ .json sidecar: per-member status)
    <store>/models/

Catalog generations: a build writes all its tables into a new directory, then switches the
`<store>/catalog` symlink to it with one atomic rename, so a reader sees either the previous
catalog or the new one, never a mix or half a table, for the whole run (the previous generation
is kept until the next switch, for readers that opened it). A store whose `catalog` is a real
directory (older stores, a copy made without symlinks) is converted at its next build; on a
filesystem without symlinks each table is replaced on its own (per-table atomic).

Temporary files are named `.{name}.tmp-{pid}` (TEMP_GLOB) beside their target and renamed when
complete; `leftovers` finds those an interrupted run left.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STORE_VERSION = 1
TABLES = ("utterances", "speakers", "shards", "fields", "errors")


def utt_key(utt_id: str) -> str:
    """WebDataset key of an utterance: no dots (keys end at the first dot) and no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", utt_id.replace("/", "__"))


def shard_name(dataset: str, shard_id: int) -> str:
    return f"{dataset}-{shard_id:06d}"


def field_dir(store: Path, dataset: str, field: str) -> Path:
    return Path(store) / "shards" / dataset / field


def tar_path(store: Path, dataset: str, field: str, shard_id: int) -> Path:
    return field_dir(store, dataset, field) / f"{shard_name(dataset, shard_id)}.tar"


def sidecar_path(store: Path, dataset: str, field: str, shard_id: int) -> Path:
    """Per-(shard, field) record of each member's status; written after the tar is in place."""
    return tar_path(store, dataset, field, shard_id).with_suffix(".json")


def table_path(store: Path, table: str) -> Path:
    return catalog_dir(store) / f"{table}.parquet"


def catalog_dir(store: Path) -> Path:
    """What readers open: the current catalog generation (a symlink) or a plain directory."""
    return Path(store) / "catalog"


def plan_path(store: Path) -> Path:
    return Path(store) / "plan.parquet"


def models_dir(store: Path) -> Path:
    return Path(store) / "models"


def read_store_json(store: Path) -> dict:
    path = Path(store) / "store.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_store_json(store: Path, info: dict) -> None:
    path = Path(store) / "store.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    with writing(path, tmp):
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
        tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# temporary files
# ---------------------------------------------------------------------------------------------
TEMP_GLOB = ".*.tmp-*"


def temporary_name(path: Path) -> Path:
    """Where `path` is written before its rename (the same pattern as catalog.tars.temporary_path)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Remove `tmp` if the block fails, and name `path` in an OSError that names no file
    (pyarrow's do not), so the job can say in one line what could not be written and why."""
    try:
        yield
    except BaseException as exc:
        if tmp is not None:
            try:
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError) and not exc.filename:
            code = exc.errno or (errno.ENOSPC if "No space left" in str(exc) else None)
            raise OSError(code, os.strerror(code) if code else str(exc), str(path)) from exc
        raise


def leftovers(store: Path) -> list[Path]:
    """Temporary files and directories an interrupted run left anywhere a writer puts them."""
    store = Path(store)
    globs = [TEMP_GLOB, "*.tmp", f"catalog/{TEMP_GLOB}", "catalog/*.tmp", f"{GENERATIONS}/{TEMP_GLOB}",
             f"shards/*/*/{TEMP_GLOB}", f"probe/*/{TEMP_GLOB}", f"models/{TEMP_GLOB}"]
    return sorted({p for g in globs for p in store.glob(g)})


# ---------------------------------------------------------------------------------------------
# catalog generations
# ---------------------------------------------------------------------------------------------
GENERATIONS = ".catalog"
_GEN = re.compile(r"^g(\d{6,})$")


def new_generation(store: Path) -> Path:
    """An empty temporary directory to write the next catalog generation's tables into."""
    root = Path(store) / GENERATIONS
    root.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(root / "g")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _generation_numbers(root: Path) -> list[int]:
    return sorted(int(m.group(1)) for m in map(_GEN.match, os.listdir(root)) if m) if root.is_dir() else []


def publish_generation(store: Path, tmp: Path) -> Path:
    """Make the tables in `tmp` the catalog in one atomic switch; returns the new generation.

    Files of the current catalog that `tmp` lacks are carried over (hard links where the
    filesystem allows), so writing some tables keeps the others. Generations before the
    previous one are removed.
    """
    store = Path(store)
    root, current = store / GENERATIONS, catalog_dir(store)
    if current.is_dir():
        for name in os.listdir(current):
            if not name.startswith(".") and not (tmp / name).exists() and (current / name).is_file():
                _link_or_copy(current / name, tmp / name)
    _fsync_dir(tmp)
    n = (_generation_numbers(root) or [0])[-1] + 1
    migrate = current.is_dir() and not current.is_symlink()
    final = root / f"g{n + 1 if migrate else n:06d}"
    os.rename(tmp, final)
    link = temporary_name(current)
    link.unlink(missing_ok=True)
    try:
        os.symlink(os.path.join(GENERATIONS, final.name), link, target_is_directory=True)
    except (OSError, NotImplementedError):  # no symlinks here: per-table replace into the directory
        return _replace_tables(current, final)
    previous = os.readlink(current) if current.is_symlink() else None
    if migrate:  # a real directory (an older store or a copy): it becomes the previous generation
        os.rename(current, root / f"g{n:06d}")
        previous = os.path.join(GENERATIONS, f"g{n:06d}")
    os.replace(link, current)
    _fsync_dir(store)
    keep = {final.name, Path(previous).name if previous else None}
    for k in _generation_numbers(root):
        if f"g{k:06d}" not in keep:
            shutil.rmtree(root / f"g{k:06d}", ignore_errors=True)
    return final


def _replace_tables(current: Path, final: Path) -> Path:
    current.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(final)):
        os.replace(final / name, current / name)
    shutil.rmtree(final, ignore_errors=True)
    return current


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries durable (renames into it), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
