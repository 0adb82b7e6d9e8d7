"""Media decoding onto the 25 fps / 16 kHz timebase, and its clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from features.media import MediaError, grid_indices, load_media
from tests.conftest import noise_frames, tone, write_video


def test_grid_of_25fps_source_is_identity():
    pts = np.arange(100) / 25
    assert np.array_equal(grid_indices(pts), np.arange(100))


def test_grid_of_30fps_source_follows_timestamps():
    pts = np.arange(199) / 30  # spk04's shape: 199 frames at 30 fps
    idx = grid_indices(pts)
    assert len(idx) == round(199 / 30 * 25) == 166
    # each grid time t/25 takes the source frame nearest in time
    assert np.all(np.abs(pts[idx] - np.arange(166) / 25) <= 1 / 60 + 1e-9)


def test_grid_of_uneven_timing_uses_pts_not_order():
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.uniform(0.02, 0.06, 80))
    pts -= pts[0]
    idx = grid_indices(pts)
    for t, i in enumerate(idx):
        assert abs(pts[i] - t / 25) == pytest.approx(np.min(np.abs(pts - t / 25)))


def test_load_media_lengths_and_audio_samples(tmp_path):
    path = write_video(tmp_path / "v.mp4", noise_frames(50), audio=tone(2.0))
    media = load_media(path)
    assert media.frames.shape == (50, 64, 64, 3)
    assert media.audio.shape == (50 * 640,) and media.audio.dtype == np.float32
    # the tone survives: RMS of a 0.3 sine is about 0.21
    assert 0.15 < np.sqrt(np.mean(media.audio[16000:24000] ** 2)) < 0.26


def test_separate_audio_file(tmp_path):
    video = write_video(tmp_path / "v.mp4", noise_frames(25))
    audio = write_video(tmp_path / "a.m4a", noise_frames(1), audio=tone(1.0, 220), video=False)
    media = load_media(video, audio)
    assert media.n_frames == 25 and len(media.audio) == 25 * 640
    assert np.abs(media.audio).max() > 0.2


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty"), ("text", "unreadable"), ("truncated", ""), ("no_audio", "no audio stream"),
    ("no_video", "no video stream"),
])
def test_bad_files_raise_media_error_naming_the_file(bad_inputs, kind, reason):
    path = bad_inputs[kind]
    with pytest.raises(MediaError) as err:
        load_media(path)
    assert str(path) in str(err.value)
    assert reason in err.value.reason


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        load_media(tmp_path / "nope.mp4")


def test_real_clip_frame_counts_follow_the_rule(real_corpus):
    expected = {"spk01/a": 152, "spk02/a": 125, "spk03/a": 125, "spk03/b": 200, "spk04/a": 166,
                "spk05/a": 122, "spk06/a": 200}
    for utt, n in expected.items():
        media = load_media(real_corpus / f"{utt}.mp4")
        assert media.n_frames == n, utt
        assert len(media.audio) == 640 * n
