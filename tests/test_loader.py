"""training/loader.py: worker processes, exact resume across them, linear start-up; fast windows.

On the tiny fake store of test_training.py (6 speakers, 18 utterances, 5 shards).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.codecs import decode_jpeg_sequence, encode_jpeg_sequence
from tests.test_training import make_store
from catalog import reader as reader_module
from training.data import ShardBuffer, Utterance, load_utterances, read_catalog, select_rows, shard_list
from training.loader import RankData
from training.sampler import PairSampler
from training.windows import make_batch, raw_window, window

SETTINGS = dict(seed=3, batch_size=8, cross_speaker_ratio=0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    # train on 4 speakers / 4 shards so that two loader streams each hold their own shards
    return make_store(tmp_path_factory.mktemp("store"), shard_size=3, broken=False,
                      split_of={0: "train", 1: "train", 2: "train", 3: "train", 4: "val", 5: "test"})


def draw(data: RankData, start: int, n: int) -> list:
    it = data.batches(start, prefetch=2)
    out = []
    for _ in range(n):
        b = next(it)
        data.consumed(b)
        out.append(b)
    del it
    return out


def same(a, b) -> bool:
    return all(torch.equal(x.visual, y.visual) and torch.equal(x.audio, y.audio)
               and torch.equal(x.label, y.label) for x, y in zip(a, b))


def test_two_workers_hold_their_own_shards_and_resume_exactly(store):
    straight = RankData.from_store(str(store), "mel", "landmarks", 0, 1, workers=2, **SETTINGS)
    batches = draw(straight, 0, 7)
    assert [b.stream for b in batches] == [0, 1, 0, 1, 0, 1, 0]  # step s from stream s mod 2
    assert straight.drawn == 7 * 8
    shards = [set(map(tuple, straight.spec.stream_shards(i, 2))) for i in range(2)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    # the streams differ (own shards, own seed) and are not the single-process stream
    assert not torch.equal(batches[0].visual, batches[1].visual)

    first = RankData.from_store(str(store), "mel", "landmarks", 0, 1, workers=2, **SETTINGS)
    draw(first, 0, 3)  # steps 0..2, then "crash": resume at step 3 (odd: worker 0 serves stream 1)
    resumed = RankData.from_store(str(store), "mel", "landmarks", 0, 1, workers=2, **SETTINGS)
    resumed.restore(first.state())
    rest = draw(resumed, 3, 4)
    assert [b.stream for b in rest] == [1, 0, 1, 0]
    assert same(rest, batches[3:])
    assert resumed.state()["sampler"] == straight.state()["sampler"]


def test_in_process_loader_matches_one_worker(store):
    inline = draw(RankData.from_store(str(store), "mel", "rgb", 0, 1, workers=0, **SETTINGS), 0, 3)
    worker = draw(RankData.from_store(str(store), "mel", "rgb", 0, 1, workers=1, **SETTINGS), 0, 3)
    assert same(inline, worker)
    assert inline[0].visual.dtype == torch.uint8 and inline[0].audio.dtype == torch.float16


def test_shard_plan_is_built_once_whatever_the_shards_loaded(store, monkeypatch):
    calls = []
    real = reader_module.shard_plan  # the store's reader builds the plan (training.data reads through it)
    monkeypatch.setattr(reader_module, "shard_plan", lambda rows: calls.append(1) or real(rows))
    rows = read_catalog(store)
    usable = select_rows(rows, ["mel", "landmarks"], ["train", "val", "test"])
    shards = shard_list(usable)
    buf = ShardBuffer(store, ["mel", "landmarks"], usable, rows, shards, size=1, seed=0)
    for _ in range(3 * len(shards)):
        buf.advance()
    assert len(calls) == 1  # the old loader rebuilt the whole catalog's plan for every shard


def test_device_normalisation_equals_the_numpy_window(store):
    for visual in ("landmarks", "tdmm", "rgb", "parsing"):
        utts = load_utterances(store, ["mel", visual], ["val"])
        pairs = PairSampler(utts, seed=0, cross_speaker_ratio=0.0).sample(6)
        batch = make_batch(pairs, utts, utts, "mel", visual).to("cpu")
        expect = np.stack([window(utts[p.v_utt], visual, p.v_t) for p in pairs])
        assert np.allclose(batch.visual.numpy(), expect, atol=1e-6), visual
        assert np.allclose(batch.audio.numpy(), np.stack([window(utts[p.a_utt], "mel", p.a_t) for p in pairs]))


def test_rgb_half_scale_is_decoded_in_the_dct_domain(store):
    u = load_utterances(store, ["rgb"], ["val"])[0]
    full = raw_window(u, "rgb", 2).astype(np.float32)  # (5, 48, 96, 3)
    u.image_scale = 0.5
    half = raw_window(u, "rgb", 2)
    assert half.shape == (5, 24, 48, 3) and half.dtype == np.uint8
    area = full.reshape(5, 24, 2, 48, 2, 3).mean(axis=(2, 4))  # what averaging would give
    assert np.abs(half - area).mean() < 4.0


def test_lip_windows_are_grayscale_frames_of_the_window():
    rng = np.random.default_rng(0)
    rois = (rng.normal(128, 40, (9, 96, 96))).clip(0, 255).astype(np.uint8)
    data = encode_jpeg_sequence(np.repeat(rois[..., None], 3, axis=3))
    u = Utterance("s/u", "s_u", "d", "s", "val", 9, data={"lip": data})
    x = raw_window(u, "lip", 3)
    assert x.shape == (5, 96, 96) and x.dtype == np.uint8
    colour = decode_jpeg_sequence(data, 3, 8)[..., 0]
    assert np.abs(x.astype(int) - colour).max() <= 1  # luma only = the colour decode's grey
    assert np.abs(x.astype(int) - rois[3:8]).mean() < 6  # q95 JPEG of the stored ROIs


def smooth_frames(n: int, seed: int = 0) -> np.ndarray:
    """Face-like test frames: smooth colour gradients plus noise, 96 x 96."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96] / 96.0
    base = np.stack([120 + 80 * y, 100 + 60 * x, 90 + 40 * (x * y)], axis=-1)
    return np.stack([(base + rng.normal(0, 12, base.shape)).clip(0, 255) for _ in range(n)]).astype(np.uint8)


def test_the_lower_half_of_a_restart_marked_frame_decodes_alone():
    import simplejpeg

    from features.codecs import decode_jpeg_into, encode_jpeg, lower_half_jpeg

    for frame in smooth_frames(4):
        marked = encode_jpeg(frame, 95, half_restart=True)
        whole = simplejpeg.decode_jpeg(marked)
        assert np.array_equal(whole, simplejpeg.decode_jpeg(encode_jpeg(frame, 95)))  # markers change no pixel
        half = lower_half_jpeg(marked)
        assert half is not None and simplejpeg.decode_jpeg_header(half)[:2] == (48, 96)
        lower = simplejpeg.decode_jpeg(half)
        assert np.array_equal(lower[1:], whole[49:])  # identical but for the first row's chroma
        assert np.abs(lower[0].astype(int) - whole[48]).max() <= 12
        small = decode_jpeg_into(half, scale=2)
        assert small.shape == (24, 48, 3)
        assert lower_half_jpeg(encode_jpeg(frame, 95)) is None  # unmarked: the caller decodes all


def test_rgb_windows_of_unmarked_frames_decode_whole_with_one_warning():
    from training import windows as windows_module

    frames = smooth_frames(9, seed=1)
    old = Utterance("s/u", "s_u", "old", "s", "val", 9, data={"rgb": encode_jpeg_sequence(frames)})
    new = Utterance("s/u", "s_u", "new", "s", "val", 9, data={"rgb": encode_jpeg_sequence(frames, half_restart=True)})
    windows_module._WARNED.discard("old")
    with pytest.warns(UserWarning, match="jpeg95-1"):
        x_old = raw_window(old, "rgb", 2)
    assert np.array_equal(x_old, decode_jpeg_sequence(old.data["rgb"], 2, 7)[:, 48:])
    x_new = raw_window(new, "rgb", 2)
    assert np.array_equal(x_new[:, 1:], decode_jpeg_sequence(new.data["rgb"], 2, 7)[:, 49:])


@pytest.mark.parametrize("workers", [0, 1])
def test_handed_out_batches_keep_their_memory_while_arenas_are_recycled(store, workers):
    data = RankData.from_store(str(store), "mel", "rgb", 0, 1, workers=workers, handoff_pairs=16, **SETTINGS)
    it = data.batches(0, prefetch=2)
    kept = [next(it) for _ in range(3)]
    copies = [(b.visual.clone(), b.audio.clone(), b.label.clone()) for b in kept]
    for _ in range(60):  # 30 more chunks of 2 batches, each dropped at once
        next(it)
    assert it.slots.held() <= 2 + 2 + 2  # kept chunks + prefetched + the one being cut
    for b, (v, a, y) in zip(kept, copies):
        assert torch.equal(b.visual, v) and torch.equal(b.audio, a) and torch.equal(b.label, y)
    reference = draw(RankData.from_store(str(store), "mel", "rgb", 0, 1, workers=workers, **SETTINGS), 0, 3)
    assert same(kept, reference)  # the hand-off size changes nothing drawn
    del kept, b
    import gc

    gc.collect()
    next(it)
    assert it.slots.held() <= 2 + 2  # the kept batches' arenas came back
    del it
