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


@pytest.mark.parametrize("kind", ["25fps", "30fps", "60fps", "10fps", "uneven", "duplicates"])
def test_streaming_grid_matches_the_whole_clip_rule(kind):
    """GridMapper settles slots one source frame at a time and gives exactly grid_indices."""
    from features.media import GridMapper

    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 50, 199):
        pts = {"25fps": np.arange(n) / 25, "30fps": np.arange(n) / 30, "60fps": np.arange(n) / 60,
               "10fps": np.arange(n) / 10, "uneven": np.cumsum(rng.uniform(0.01, 0.08, n)),
               "duplicates": np.sort(rng.integers(0, 40, n)) / 25}[kind]
        pts = pts - pts[0]
        expected = grid_indices(pts)
        mapper, got = GridMapper(), []
        for p in pts:
            got += mapper.push(float(p))
        assert all(slot < len(expected) for slot, _ in got)  # never a slot the final count drops
        got += mapper.finish()
        assert [s for s, _ in got] == list(range(len(got)))
        assert np.array_equal(np.array([i for _, i in got], dtype=np.int64), expected), (kind, n)


def test_stream_holds_few_frames_and_matches_load_media(tmp_path):
    from features.media import VideoStream

    path = write_video(tmp_path / "v.mp4", noise_frames(40), fps=30, audio=tone(1.4))
    stream = VideoStream(path)
    frames = [f.copy() for f in stream]
    assert len(frames) == stream.timeline.n_frames == round(40 / 30 * 25)
    assert np.array_equal(np.stack(frames), load_media(path).frames)
    facts = stream.timeline.facts
    assert facts["decoded_frames"] == facts["expected_frames"] == len(frames)
    seg = VideoStream(path, start_s=0.4, end_s=1.0)
    assert np.array_equal(np.stack(list(seg)), np.stack(frames[10:25]))
    assert seg.timeline.n_frames == 15 and seg.timeline.first == 10


def test_jpeg_sequence_built_per_frame_equals_the_codec():
    from features.codecs import encode_jpeg_sequence
    from features.rgb import JpegSequence

    frames = noise_frames(6, 96)
    seq = JpegSequence(95)
    for t in [3, 0, 5, 1, 2, 4]:  # any order: the second pass fills early frames last
        seq.add(t, frames[t])
    assert seq.getvalue() == encode_jpeg_sequence(frames, 95)


def test_short_audio_is_measured_not_hidden(tmp_path):
    from features.media import quality_warnings

    path = write_video(tmp_path / "v.mp4", noise_frames(120), audio=tone(1.0))
    media = load_media(path)
    assert media.n_frames == 120 and len(media.audio) == 120 * 640
    assert media.facts["audio_coverage"] == pytest.approx(1.0 / 4.8, abs=0.02)
    assert any(w.startswith("audio covers 21%") for w in quality_warnings(media.facts))


def test_segment_deep_in_a_long_source_seeks_and_gives_the_same_frames(tmp_path, monkeypatch):
    from features import media
    from features.media import VideoStream

    path = write_video(tmp_path / "long.mp4", noise_frames(300, 32), audio=tone(12.0))  # keyframes 0, 250
    seeked = VideoStream(path, start_s=11.0, end_s=11.8)
    frames = [f.copy() for f in seeked]
    assert seeked.timeline.facts["source_frames"] < 100  # it did not decode the first 10 s
    monkeypatch.setattr(media, "SEEK_FROM_FRAMES", 10 ** 9)
    whole = VideoStream(path, start_s=11.0, end_s=11.8)
    assert np.array_equal(np.stack(frames), np.stack([f.copy() for f in whole]))
    assert seeked.timeline.n_frames == whole.timeline.n_frames == 20
    assert load_media(path, None, 11.0, 11.8).audio.shape == (20 * 640,)
