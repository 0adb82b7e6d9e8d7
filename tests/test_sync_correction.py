"""Sync correction restores lag 0 on the synthetic shift-k variants, and counts what it trims."""
from __future__ import annotations

import numpy as np
import pytest

from catalog.sync_correction import (AUDIO_FIELDS, SyncCorrection, apply, correction_for,
                                     field_start, summarize)


class FakeUtt:  # the attributes of catalog.reader.Utterance the correction touches
    def __init__(self, n_frames: int):
        self.n_frames = n_frames


def test_correction_arithmetic():
    c = correction_for(-3, 100)  # audio 3 frames late (syncnet sign -3)
    assert c == SyncCorrection(audio_delay=3, n_frames=100)
    assert (c.visual_start, c.audio_start, c.frames, c.trimmed_frames) == (0, 3, 97, 3)
    assert c.start("mel", 10) == 13 and c.start("landmarks", 10) == 10
    early = correction_for(4, 100)  # audio 4 frames early
    assert (early.start("audio", 0), early.start("rgb", 0), early.frames) == (0, 4, 96)
    assert correction_for(0, 100) is None and correction_for(None, 100) is None
    assert correction_for(15, 100) is None  # the search edge is not a measurement
    assert {"mel", "hubert", "whisper", "fbank", "audio"} == AUDIO_FIELDS
    # the last corrected window stays inside the stored frames of both kinds of field
    last = c.frames - 5
    assert c.start("mel", last) + 5 <= 100 and c.start("rgb", last) + 5 <= 100
    utt = FakeUtt(100)
    apply(utt, -3)
    assert utt.n_frames == 97 and field_start(utt, "mel", 0) == 3 and field_start(utt, "rgb", 0) == 0
    plain = FakeUtt(50)
    apply(plain, None)
    assert plain.n_frames == 50 and field_start(plain, "mel", 7) == 7


def test_summary_counts_what_is_trimmed():
    rows = [{"sync_offset": -3, "n_frames": 100}, {"sync_offset": 2, "n_frames": 6},
            {"sync_offset": 0, "n_frames": 80}, {"sync_offset": 15, "n_frames": 80},
            {"sync_offset": None, "n_frames": 80}]
    assert summarize(rows) == {"scored": 4, "shifted": 2, "frames_trimmed": 5, "offsets_not_applied": 1,
                               "left_without_a_window": 1}


@pytest.mark.parametrize("shift", [3, -4])
def test_correction_restores_lag_zero_on_shift_variants(tmp_path, shift):
    from features.face import FaceTracker
    from features.landmarks import mouth_opening
    from features.media import load_media
    from pipelines.synthetic import generate_corpus
    from tests.test_pipeline_quality import best_lag

    [clip] = generate_corpus(tmp_path / f"shift{shift}", n_speakers=1, n_utterances=1, min_seconds=4.0,
                             max_seconds=4.5, seed=7, audio_shift_frames=shift, progress=False)
    media = load_media(clip)
    landmarks = FaceTracker().track(media.frames).landmarks
    n = len(landmarks)
    loud = np.sqrt((media.audio.reshape(n, 640) ** 2).mean(axis=1))
    assert abs(best_lag(mouth_opening(landmarks), loud) - shift) <= 1  # the variant is off by `shift`

    utt = FakeUtt(n)
    c = apply(utt, -shift)  # what a scorer reports for audio `shift` frames late
    assert utt.n_frames == n - abs(shift) and c.trimmed_frames == abs(shift)
    frames = np.arange(utt.n_frames)
    mouth = mouth_opening(landmarks[[field_start(utt, "landmarks", t) for t in frames]])
    audio_frames = [field_start(utt, "audio", t) for t in frames]
    corrected_loud = loud[audio_frames]
    assert best_lag(mouth, corrected_loud) == 0


def test_loader_applies_the_catalog_offset_when_asked(tmp_path):
    """catalog.reader (via training.data) / windows / loader: rows read with sync_offset re-pair the audio windows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog.layout import table_path
    from tests.test_training import DATASET, make_store
    from training.data import read_catalog, stream_utterances
    from training.loader import RankData
    from training.windows import raw_window

    store = make_store(tmp_path / "store", utts_per_speaker=2, n_frames=40, speakers=3, broken=False,
                       split_of={0: "train", 1: "train", 2: "val"})
    path = table_path(store, "utterances")
    table = pq.read_table(path)
    offsets = [-3 if i % 2 == 0 else None for i in range(table.num_rows)]
    pq.write_table(table.append_column("sync_offset", pa.array(offsets, pa.int32())), path)

    fields = ["mel", "landmarks"]
    plain = {u.utt_id: u for u in stream_utterances(store, fields, read_catalog(store, fields))}
    rows = read_catalog(store, fields, extra=("sync_offset",))
    corrected = {u.utt_id: u for u in stream_utterances(store, fields, rows)}
    for row in rows:
        p, c = plain[row["utt_id"]], corrected[row["utt_id"]]
        if row["sync_offset"] is None:
            assert c.sync is None and c.n_frames == p.n_frames
            continue
        assert c.sync.audio_delay == 3 and c.n_frames == p.n_frames - 3
        for t in (0, c.n_windows - 1):  # audio windows come 3 frames later, visual ones in place
            assert np.array_equal(raw_window(c, "mel", t), raw_window(p, "mel", t + 3))
            assert np.array_equal(raw_window(c, "landmarks", t), raw_window(p, "landmarks", t))
    data = RankData.from_store(str(store), "mel", "landmarks", 0, 1, 0, sync_correct=True,
                               cross_speaker_ratio=0.0)
    summary = data.describe()["sync_correction"]
    assert summary["shifted"] == summary["scored"] and summary["frames_trimmed"] == 3 * summary["shifted"]
    assert "sync_correction" not in RankData.from_store(str(store), "mel", "landmarks", 0, 1, 0,
                                                        cross_speaker_ratio=0.0).describe()
