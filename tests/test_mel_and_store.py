"""Mel recipe, deterministic tars, the shard plan and speaker-disjoint splits."""
from __future__ import annotations

import numpy as np
import pytest

from catalog.plan import extend_plan, shards_of
from catalog.splits import speaker_disjoint_splits
from catalog.tars import iter_members, tar_bytes
from features.codecs import decode_jpeg_sequence, encode_jpeg_sequence
from features.mel import wav2lip_mel
from features.timebase import window_slice
from pipelines.adapters import Utterance
from tests.conftest import tone


def test_mel_shape_range_and_tone_band():
    n_frames = 50
    audio = np.zeros(640 * n_frames, np.float32)
    audio[:16000] = tone(1.0, 1000.0)
    mel = wav2lip_mel(audio)
    assert mel.shape == (80, 1 + 640 * n_frames // 200)
    assert mel.min() >= -4 and mel.max() <= 4
    assert np.allclose(mel[:, -20:], -4.0)  # digital silence sits at the floor
    import librosa
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    assert abs(int(np.argmax(mel[:, 40])) - int(np.argmin(np.abs(centres - 1000)))) <= 1
    # the last window of the utterance still has its 16 rows
    last = window_slice(80, n_frames - 5)
    assert mel[:, last].shape == (80, 16)


def test_mel_uses_reflect_padding():
    """Wav2Lip's librosa padded the STFT with reflect; constant padding changes the first frame."""
    import librosa
    audio = tone(0.5, 300.0)
    ours = wav2lip_mel(audio)
    const = np.abs(librosa.stft(y=audio.astype(np.float64), n_fft=800, hop_length=200, win_length=800,
                                pad_mode="constant"))
    refl = np.abs(librosa.stft(y=audio.astype(np.float64), n_fft=800, hop_length=200, win_length=800,
                               pad_mode="reflect"))
    assert not np.allclose(const[:, 0], refl[:, 0])
    assert ours.shape[1] == refl.shape[1]


def test_window_slices_match_design_table():
    assert window_slice(25, 7) == slice(7, 12)
    assert window_slice(80, 7) == slice(22, 38)  # int(80 * 7 / 25) = 22
    assert window_slice(50, 7) == slice(14, 24)
    assert window_slice(100, 7) == slice(28, 48)


def test_tar_bytes_are_reproducible(tmp_path):
    members = [("a.mel.npy", b"123"), ("b.mel.npy", b"45678")]
    one, two = tar_bytes(members), tar_bytes(list(members))
    assert one == two
    path = tmp_path / "x.tar"
    path.write_bytes(one)
    assert list(iter_members(path)) == members


def test_jpeg_sequence_decodes_only_requested_frames():
    frames = np.random.default_rng(0).integers(0, 255, (12, 96, 96, 3), dtype=np.uint8)
    frames[:] = frames[:, :1, :1]  # flat colours survive JPEG well
    data = encode_jpeg_sequence(frames, 95)
    part = decode_jpeg_sequence(data, 4, 9)
    assert part.shape == (5, 96, 96, 3)
    assert np.abs(part.astype(int) - frames[4:9].astype(int)).mean() < 3


def _utts(n: int, speakers: int = 3) -> list[Utterance]:
    return [Utterance(f"s{i % speakers}/u{i:02d}", f"s{i % speakers}", f"/v/{i}.mp4") for i in range(n)]


def test_plan_is_kept_and_extended_in_new_shards():
    first = extend_plan([], "folder", _utts(10), shard_size=4)
    assert [len(v) for v in shards_of(first).values()] == [4, 4, 2]
    again = extend_plan(first, "folder", _utts(10), shard_size=4)
    assert again == first
    grown = extend_plan(first, "folder", _utts(13), shard_size=4)
    assert grown[:10] == first
    assert {r["shard_id"] for r in grown[10:]} == {3}


def test_plan_makes_the_later_of_two_ids_sharing_a_key_an_error_row():
    utts = [Utterance("a/b", "a", "/x.mp4"), Utterance("a__b", "a", "/y.mp4")]  # both key a__b
    plan = extend_plan([], "folder", utts, 4)
    assert [(r["utt_id"], r["key"], r["shard_id"]) for r in plan] == [("a/b", "a__b", 0), ("a__b", "a__b-dup1", 1)]
    assert plan[0]["plan_error"] is None and "'a/b'" in plan[1]["plan_error"]  # names the other
    assert extend_plan(plan, "folder", utts, 4) == plan  # a re-run keeps both rows as they are


@pytest.mark.parametrize("n", [3, 4, 8, 20, 101])
def test_speaker_splits_disjoint_nonempty_deterministic(n):
    speakers = [f"id{i:05d}" for i in range(n)]
    splits = speaker_disjoint_splits(speakers, seed=3)
    assert set(splits.values()) == {"train", "val", "test"}
    assert splits == speaker_disjoint_splits(list(reversed(speakers)), seed=3)
    assert sum(v == "train" for v in splits.values()) >= n - 2 * max(1, round(0.1 * n))
