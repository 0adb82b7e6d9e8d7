"""Fitted artefacts a field needs before it can be extracted (stored under <store>/models/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from catalog.layout import models_dir, tar_path
from catalog.plan import shards_of
from catalog.sidecar import read_sidecar
from catalog.tars import iter_members
from features import tdmm
from features.fields import FIELDS


def tdmm_model_path(store: Path) -> Path:
    return models_dir(store) / f"tdmm-{tdmm.VERSION}.npz"


def stored_landmarks(store: Path, dataset: str, plan: list[dict], limit: int) -> list[np.ndarray]:
    """Landmarks of up to `limit` utterances, read from the store's landmark tars (not videos)."""
    out: list[np.ndarray] = []
    ext = FIELDS["landmarks"].ext
    for shard_id in shards_of(plan):
        side = read_sidecar(store, dataset, "landmarks", shard_id)  # None: absent or broken
        if side is None or not any(m.get("status") == "ok" for m in side["members"]):
            continue
        for name, data in iter_members(tar_path(store, dataset, "landmarks", shard_id)):
            if name.split(".", 1)[1] == ext:
                out.append(FIELDS["landmarks"].decode(data).astype(np.float32))
                if len(out) >= limit:
                    return out
    return out


def ensure_tdmm_model(store: Path, dataset: str, plan: list[dict], refit: bool = False,
                      max_utterances: int = 2000) -> Path:
    """Fit the morphable model on the stored landmarks unless a fitted one is already there."""
    path = tdmm_model_path(store)
    if path.exists() and not refit:
        return path
    meshes = stored_landmarks(store, dataset, plan, max_utterances)
    if len(meshes) < 2:
        raise RuntimeError(f"{store}: fitting the morphable model needs the landmarks of at least "
                           f"2 utterances; found {len(meshes)}")
    model, report = tdmm.fit(meshes)
    model.save(path, report)
    print(f"fitted morphable model on {report['frames_fit']} frames: held-out error "
          f"{100 * report['heldout_mean_error_share_of_iod']:.3f}% of the inter-ocular distance -> {path}")
    return path
