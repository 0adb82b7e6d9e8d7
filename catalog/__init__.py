"""The store's catalog and its one reader; the public data API (catalog/store.py):

    from catalog import open_store
    store = open_store("store")
    ds = store.dataset(split="train", fields=["rgb", "mel"], window=5)   # a torch IterableDataset

`webdataset_handler` / `decode_jpgs` (catalog/wds.py) let plain webdataset code read any field's
tars. The names load on first use, so `import catalog.layout` stays light (no DuckDB, no torch).
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {"open_store": "catalog.store", "Store": "catalog.store", "StoreError": "catalog.reader",
            "webdataset_handler": "catalog.wds", "decode_jpgs": "catalog.wds"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'catalog' has no attribute {name!r}")
