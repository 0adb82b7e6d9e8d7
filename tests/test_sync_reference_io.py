"""training/sync/reference_io.py (syncnet_python's ffmpeg input path in process) and the score CLI's
`--io reference`, per-track and per-video rows. The comparison with real ffmpeg runs where ffmpeg is
installed (skipped otherwise); the full comparison with the reference's evaluate is
benchmarks/sync_reference.py."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.conftest import noise_frames, tone, write_video
from training.sync.reference_io import cfr_select, reencode_avi, reference_audio, reference_frames, vfr_select


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = noise_frames(40, size=224, seed=4)
    frames = (frames // 4 + np.linspace(0, 180, 224, dtype=np.uint8)[None, None, :, None]).astype(np.uint8)
    return write_video(tmp_path_factory.mktemp("clip") / "c.mp4", frames, audio=tone(1.7))


def test_cfr_selection_repeats_a_late_first_frame_and_drops_stragglers():
    frames = [(0.4 + i / 25, 1 / 25, i) for i in range(5)]  # video starts 0.4 s after the file
    assert list(cfr_select(frames, 25)) == [0] * 11 + [1, 2, 3, 4]
    # a frame more than 1.1 frames behind the output clock is not written where it falls (d); a
    # gap of 3 frames is filled first with the last decoded frame (d: ffmpeg keeps it as last_frame)
    # round(delta0 - 0.6) = 1 time, then the new one
    frames = [(0, 0.04, "a"), (0.001, 0.04, "b"), (0.002, 0.04, "c"), (0.003, 0.04, "d"), (0.2, 0.04, "e")]
    assert list(cfr_select(frames, 25)) == ["a", "b", "c", "d", "e", "e"]


def test_vfr_selection_for_avi_by_hand():
    """ffmpeg's avi rule (vsync vfr at -r 25): frames keep their own times, never repeat, and one
    more than 0.6 frames behind the output clock is dropped."""
    assert list(vfr_select([(i / 25, 0.04, i) for i in range(4)], 25)) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert [p for p, _ in vfr_select([(0.4 + i / 25, 0.04, i) for i in range(3)], 25)] == [10, 11, 12]
    # 30 fps into 25: each frame is clipped to the output clock until it falls 0.6 frames behind
    kept = list(vfr_select([(i / 30, 1 / 30, i) for i in range(12)], 25))
    assert kept == [(i, i) for i in range(10)] + [(10, 11)]


def _repeats(frames) -> list[int]:
    """Indices i where frame i + 1 repeats frame i (the source frames all differ)."""
    return [i for i in range(len(frames) - 1) if np.array_equal(frames[i], frames[i + 1])]


def test_reencoded_avi_repeats_the_first_frame_as_the_reference(clip, tmp_path):
    """run_pipeline's video.avi: the MP3's encoder delay shifts every video packet after the first
    by 2, so its JPEG dump holds 2 more frames: the first and the second twice each (as ffmpeg's
    own on the real clips: 202 JPEGs from 200 frames)."""
    import av

    from training.sync.reference_io import set_frame_quality

    frame = av.VideoFrame(64, 48, "yuv420p")
    frame.pts = 7
    assert set_frame_quality(frame, 236)  # the pinned PyAV's layout: ffmpeg's lambda reaches the encoder
    avi = reencode_avi(clip, tmp_path / "video.avi")
    frames = list(reference_frames(avi, qscale=2))
    assert len(frames) == 42 and _repeats(frames) == [0, 2]
    assert len(reference_audio(avi)) > 1.6 * 16000
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed: the comparison with its own re-encode is skipped")
    import cv2

    ref_avi, dump = tmp_path / "ref.avi", tmp_path / "dump"
    dump.mkdir()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-qscale:v", "2", "-async", "1", "-r",
                    "25", str(ref_avi)], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(ref_avi), "-qscale:v", "2", "-threads", "1",
                    "-f", "image2", str(dump / "%06d.jpg")], check=True)
    ref = [cv2.imread(str(p)) for p in sorted(dump.glob("*.jpg"))]
    assert len(ref) == len(frames) and _repeats(ref) == _repeats(frames)
    # mpeg4 at quantiser 2 with ffmpeg's per-frame lambda, then the qscale 2 JPEGs: bit-identical
    assert all(np.array_equal(a, b) for a, b in zip(ref, frames))


def test_reference_frames_and_audio_shapes(clip):
    frames = list(reference_frames(clip, qscale=2))
    assert len(frames) == 40 and frames[0].shape == (224, 224, 3) and frames[0].dtype == np.uint8
    assert len(list(reference_frames(clip, max_frames=7))) == 7
    audio = reference_audio(clip)
    assert audio.dtype == np.int16 and abs(len(audio) - 1.7 * 16000) < 2048


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_same_as_ffmpeg(clip, tmp_path):
    import cv2
    from scipy.io import wavfile

    for q in (None, 2):
        out = tmp_path / f"q{q}"
        out.mkdir()
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-threads", "1",
                        *([] if q is None else ["-qscale:v", str(q)]), "-f", "image2", str(out / "%06d.jpg")],
                       check=True)
        ref = [cv2.imread(str(p)) for p in sorted(out.glob("*.jpg"))]
        ours = list(reference_frames(clip, qscale=q))
        assert len(ref) == len(ours)
        same = [np.array_equal(a, b) for a, b in zip(ref, ours)]
        # fixed quantiser: bit-identical; ffmpeg's rate control (default) can pick another quantiser
        # for a frame where its libavcodec version differs from PyAV's (coded sizes differ by a byte)
        assert all(same) if q else np.mean(same) >= 0.9
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-async", "1", "-ac", "1", "-vn",
                    "-acodec", "pcm_s16le", "-ar", "16000", str(tmp_path / "a.wav")], check=True)
    _, ref_audio = wavfile.read(tmp_path / "a.wav")
    ours = reference_audio(clip)
    assert len(ours) == len(ref_audio)
    assert np.abs(ours.astype(int) - ref_audio).max() <= 1  # AAC decoder rounding across FFmpeg versions


def test_score_cli_io_reference_rows(clip, tmp_path):
    from training.sync.score import main
    from training.sync.syncnet import save_random_weights

    torch.set_num_threads(1)
    weights = save_random_weights(tmp_path / "w.model", seed=2)
    out = tmp_path / "out"
    assert main([str(clip), "--syncnet-weights", str(weights), "--crop", "none", "--io", "reference",
                 "--max-seconds", "0.6", "--out", str(out), "--plots", str(tmp_path / "p"), "--workers", "1",
                 "--threads", "1"]) == 0
    with open(out / "scores.csv") as f:
        [row] = list(csv.DictReader(f))
    assert (row["io"], row["protocol"], row["track"], row["track_start"]) == ("reference", "none", "0", "0")
    assert int(row["track_frames"]) == int(row["frames_scored"]) + 5
    assert row["at_edge"] == str(abs(int(row["offset"])) >= 15)
    with open(out / "videos.csv") as f:
        [video] = list(csv.DictReader(f))
    assert video["tracks"] == "1" and float(video["mean_lse_d"]) == float(row["lse_d"])
    assert video["latentsync_tracks"] == "0"  # 15 frames: not longer than 50, LatentSync skips it
    report = json.loads((out / "scores.json").read_text())
    assert [(m["protocol"], m["io"]) for m in report["means"]] == [("none", "reference")]
    assert [p.name for p in (tmp_path / "p").glob("*.png")] == ["c.syncnet.none.reference.png"]


def test_video_rows_follow_latentsync():
    from training.sync.plots import edge_note
    from training.sync.score import video_rows

    base = {"video": "v", "scorer": "syncnet", "scorer_version": "x", "protocol": "s3fd", "io": "reference",
            "error": ""}
    rows = [{**base, "track": 0, "track_frames": 120, "offset": 3, "lse_d": 8.0, "lse_c": 2.0},
            {**base, "track": 1, "track_frames": 51, "offset": -2, "lse_d": 9.0, "lse_c": 1.0},
            {**base, "track": 2, "track_frames": 50, "offset": 15, "lse_d": 10.0, "lse_c": 0.1}]
    [v] = video_rows(rows)
    assert (v["tracks"], v["mean_lse_d"], v["latentsync_tracks"], v["latentsync_conf"], v["latentsync_offset"]) \
        == (3, 9.0, 2, 1.5, 0)  # int(mean(3, -2)) = int(0.5) = 0
    assert edge_note({"vshift": 15, "offset": -15}) == "no sync peak in +-15"
    assert edge_note({"vshift": 15, "offset": 14}) == ""
