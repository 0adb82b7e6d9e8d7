"""The public data API (catalog.open_store) and plain webdataset reading with catalog's handler.

On the tiny fake store of test_training.py (6 speakers, 18 utterances, 5 shards; one rgb and
one landmarks failure placeholder), made once for the module.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from catalog import StoreError, decode_jpgs, open_store, webdataset_handler
from catalog.layout import tar_path
from catalog.tars import tar_bytes
from features.fields import FIELDS as REGISTRY
from features.timebase import window_slice
from tests.test_training import DATASET, make_store

FIELDS = ["rgb", "mel", "landmarks"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


def whole_by_id(store: Path, fields: list[str], **kw) -> dict[str, dict]:
    return {u["utt_id"]: u for u in open_store(store).utterances(fields, **kw)}


def test_a_toy_model_trains_through_a_plain_dataloader_with_two_workers(store):
    s = open_store(store)
    whole = whole_by_id(store, FIELDS, split="train")
    assert set(whole) == {"0/0", "0/2", "1/0", "1/1"}  # status 'ok' only: 0/1 and 1/2 failed a field
    expected = sorted((uid, t) for uid, u in whole.items() for t in range(u["n_frames"] - 4))
    loader = DataLoader(s.dataset(split="train", fields=FIELDS, window=5), batch_size=16, num_workers=2,
                        persistent_workers=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(80 * 16, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    epoch_loss = []
    for epoch in range(3):
        seen, losses = [], []
        for batch in loader:
            assert batch["rgb"].dtype == torch.uint8 and batch["rgb"].shape[1:] == (5, 96, 96, 3)
            assert batch["mel"].dtype == torch.float16 and batch["mel"].shape[1:] == (80, 16)
            assert batch["landmarks"].dtype == torch.float16 and batch["landmarks"].shape[1:] == (5, 478, 3)
            seen += list(zip(batch["utt_id"], batch["t"].tolist()))
            if epoch == 0:  # every field of a window covers the same frames of the same utterance
                for j, (uid, t) in enumerate(zip(batch["utt_id"], batch["t"].tolist())):
                    u = whole[uid]
                    assert np.array_equal(batch["mel"][j].numpy(), u["mel"][:, window_slice(80, t)])
                    assert np.array_equal(batch["landmarks"][j].numpy(), u["landmarks"][t:t + 5])
                    assert np.array_equal(batch["rgb"][j].numpy(), u["rgb"][t:t + 5])
            # the speaker's mean face position from its voice (mel base level): learnable
            target = (batch["landmarks"].float().mean(dim=(1, 2)) - 48) / 48
            loss = torch.nn.functional.mse_loss(model(batch["mel"].float().flatten(1)), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert sorted(seen) == expected  # each window once per epoch across the two workers
        epoch_loss.append(float(np.mean(losses)))
    assert epoch_loss[-1] < 0.5 * epoch_loss[0], epoch_loss


def test_shards_are_split_across_ranks_and_workers_once_each(store):
    s = open_store(store)
    everything = {r["utt_id"] for r in s.select(fields=["mel"])}
    per_rank = []
    for rank in range(2):  # 2 ranks x 2 workers = 4 consumers of 5 shards
        ds = s.dataset(split=None, fields=["mel"], window=None, rank=rank, world=2)
        per_rank.append([u["utt_id"] for u in DataLoader(ds, batch_size=None, num_workers=2)])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)  # whole utterances, once each


def test_shuffle_is_a_seeded_permutation_per_epoch(store):
    ds = open_store(store).dataset(split="train", fields=["mel"], shuffle=True, seed=1)
    order = {}
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        order.setdefault(epoch, []).append([(w["utt_id"], w["t"]) for w in ds])
    assert order[0][0] == order[0][1] and order[0][0] != order[1][0]
    assert sorted(order[0][0]) == sorted(order[1][0])


def test_select_by_split_sql_and_status(store):
    s = open_store(store)
    assert len(s.select(status=None)) == 18 and len(s.select()) == 16
    val = s.select(split="val", where="n_frames >= 50")
    assert val and all(r["split"] == "val" and r["n_frames"] >= 50 for r in val)
    assert [r["utt_id"] for r in s.select(split=["train"], status=None, fields=["rgb"])] == \
        ["0/0", "0/2", "1/0", "1/1", "1/2"]  # per-field status: 1/2 failed landmarks, not rgb
    with pytest.raises(StoreError, match="fbank"):
        s.select(fields=["fbank"])
    with pytest.raises(ValueError, match="SQL"):
        s.select(where="no_such_column = 1")


def test_whole_utterances_carry_every_member_and_the_row(store):
    u = next(iter(open_store(store).utterances(["tdmm", "parsing", "hubert"], split="test")))
    n = u["n_frames"]
    assert u["tdmm"].shape == (n, 71) and u["tdmm_id"].shape == (32,)
    assert u["parsing"].shape == (n, 96, 96) and u["parsing"].dtype == np.uint8
    assert u["hubert"].shape == (2 * n, 1024) and u["row"]["utt_id"] == u["utt_id"]
    assert u["hubert"].flags.writeable  # a copy, not a read-only view on tar bytes


def test_sync_corrected_windows_and_clips(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.layout import table_path

    with pytest.raises(StoreError, match="sync_offset"):
        open_store(store).windows(["mel"], sync_correct=True)
    copy = shutil.copytree(store, tmp_path / "store")
    path = table_path(copy, "utterances")
    table = pq.read_table(path)
    pq.write_table(table.append_column("sync_offset", pa.array([-3] * table.num_rows, pa.int32())), path)
    s = open_store(copy)
    plain = whole_by_id(copy, ["mel", "landmarks"], split="val")
    fixed = {(w["utt_id"], w["t"]): w for w in s.windows(["mel", "landmarks"], split="val", sync_correct=True)}
    for (uid, t), w in fixed.items():  # audio 3 frames late: the mel window comes 3 frames later
        assert np.array_equal(w["mel"], plain[uid]["mel"][:, window_slice(80, t + 3)])
        assert np.array_equal(w["landmarks"], plain[uid]["landmarks"][t:t + 5])
    clips = whole_by_id(copy, ["mel", "landmarks"], split="val", sync_correct=True)
    for uid, c in clips.items():
        assert c["n_frames"] == plain[uid]["n_frames"] - 3 == len(c["landmarks"])
        assert np.array_equal(c["mel"], plain[uid]["mel"][:, 16 * 3 // 5: 16 * 3 // 5 + 16 * c["n_frames"] // 5])


def parse_jpgs(data: bytes) -> list[bytes]:
    """The container as catalog/wds.py documents it: count, lengths, then the JPEGs."""
    (n,) = struct.unpack_from("<I", data, 0)
    lengths = struct.unpack_from(f"<{n}I", data, 4)
    offset, out = 4 + 4 * n, []
    for length in lengths:
        out.append(data[offset:offset + length])
        offset += length
    assert offset == len(data)
    return out


@pytest.mark.parametrize("field", ["rgb", "mel", "parsing", "tdmm", "landmarks"])
def test_plain_webdataset_reads_a_field_with_the_handler(store, field):
    import cv2
    import webdataset as wds

    url = str(tar_path(store, DATASET, field, 0))
    samples = list(wds.WebDataset(url, shardshuffle=False)
                   .select(lambda s: "error.json" not in s).decode(webdataset_handler))
    ours = {u["key"]: u for u in open_store(store).utterances([field], status=None, where="shard_id = 0")}
    assert [s["__key__"] for s in samples] == list(ours)  # placeholders dropped on both sides
    assert len(samples) == (3 if field == "rgb" else 4)  # shard 0 holds the rgb placeholder (0/1)
    ext = REGISTRY[field].ext  # parsing.npy.gz: webdataset gunzips, then decodes the npy
    for s in samples:
        assert np.array_equal(s[ext], ours[s["__key__"]][field])
        if field == "tdmm":
            assert np.array_equal(s["tdmm_id.npy"], ours[s["__key__"]]["tdmm_id"])
    if field == "rgb":  # the documented layout, decoded by another decoder, gives the same pixels
        raw = next(iter(wds.WebDataset(url, shardshuffle=False)))["rgb.jpgs"]
        frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for j in parse_jpgs(raw)]
        assert np.array_equal(np.stack(frames), samples[0]["rgb.jpgs"])
        assert np.array_equal(decode_jpgs(raw, 2, 4), samples[0]["rgb.jpgs"][2:4])


def test_the_handler_decodes_lip_rois_as_grey_frames(tmp_path):
    import webdataset as wds

    from features import lip

    rois = np.random.default_rng(0).normal(128, 30, (6, 96, 96)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "lip.tar"
    path.write_bytes(tar_bytes([("a.lip.jpgs", lip.encode(rois))]))
    [sample] = list(wds.WebDataset(str(path), shardshuffle=False).decode(webdataset_handler))
    assert sample["lip.jpgs"].shape == (6, 96, 96) and sample["lip.jpgs"].dtype == np.uint8
    assert np.abs(sample["lip.jpgs"].astype(int) - rois).mean() < 8  # q95 JPEG of the ROIs


def test_one_utterance_by_id(store):
    s = open_store(store)
    u = s.utterance("1/1", ["rgb", "mel"])
    assert np.array_equal(u["rgb"], whole_by_id(store, ["rgb", "mel"], split="train")["1/1"]["rgb"])
    with pytest.raises(KeyError, match="no utterance"):
        s.utterance("9/9", ["mel"])
    with pytest.raises(StoreError, match="rgb"):
        s.utterance("0/1", ["rgb"])  # its rgb failed: a placeholder, never served
