"""The probe cuts a long video where the face's identity changes (dlib's descriptor), also where
neither the shot detector nor the face-box jump rule sees a change: a dissolve between two real
speakers framed alike."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.shots import IDENTITY_THRESHOLD, Probe, cut_points, identity_changes
from tests.conftest import write_video

# framed alike (MediaPipe box centre and side within 0.03 and x1.2 of each other: no box jump),
# different people (their identity means lie 0.99 apart); 5 s each
FIRST, SECOND = "spk02/a.mp4", "spk03/a.mp4"
FADE = 25  # a 1 s dissolve: ContentDetector sees no cut
TOLERANCE_S = 0.5  # the cut lies within this of the dissolve's middle (descriptors come every 0.4 s)
MAX_S = 8.0  # the joined video is 9 s: probed (longer than this), and each speaker's part fits whole


# ---------------------------------------------------------------- the rule (no media)
def test_a_change_needs_a_confirming_sample_and_restarts_after_a_reset():
    d = [(0.0, None), (0.4, 0.2), (0.8, 0.9), (1.2, 0.2),  # one odd frame: no change
         (1.6, 0.3), (2.0, 0.8), (2.4, 0.7), (2.8, 0.6), (3.2, 0.2),  # another person from 2.0 s
         (3.6, None), (4.0, 0.7), (4.4, 0.7)]  # a reset (face lost), then another change
    assert identity_changes(d) == [2.0, 4.0]
    assert identity_changes(d, threshold=0.75) == [] and identity_changes(d, threshold=0.65) == [2.0, 4.0]


def test_cut_points_break_the_face_run_at_an_identity_change_only_when_asked():
    times = [round(0.2 * i, 4) for i in range(50)]  # 10 s, one face, one box
    probe = Probe(duration_s=10.0, source_frames=250, faces=[(t, [0.5, 0.5, 0.3]) for t in times],
                  identity=[(t, 0.9 if 6.0 <= t < 7.0 else 0.2) for t in times[::2]])
    assert cut_points(probe, 30.0) == [(0.0, 6.0, "face+identity"), (6.0, 10.0, "face+identity")]
    assert cut_points(probe, 30.0, identity_threshold=None) == [(0.0, 10.0, "whole")]
    assert Probe.from_dict(probe.as_dict()) == probe
    old = {k: v for k, v in probe.as_dict().items() if k != "identity"}  # a cached probe from before
    assert Probe.from_dict(old).identity == []


# ---------------------------------------------------------------- two real speakers, one dissolve
def _dissolve(first: Path, second: Path, out: Path, size: int = 320) -> float:
    """first, then second, joined by a FADE-frame dissolve; returns the dissolve's middle (s)."""
    import cv2

    from features.media import load_media

    a, b = ([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in load_media(p).frames]
            for p in (first, second))
    w = ((np.arange(FADE) + 0.5) / FADE)[:, None, None, None]
    fade = ((1 - w) * np.stack(a[-FADE:]) + w * np.stack(b[:FADE])).round().astype(np.uint8)
    write_video(out, np.concatenate([np.stack(a[:-FADE]), fade, np.stack(b[FADE:])]))
    return (len(a) - FADE / 2) / 25


def test_a_dissolve_between_two_speakers_is_cut_by_identity_alone(real_corpus, tmp_path):
    pytest.importorskip("dlib", reason="dlib-bin is not installed")
    from pipelines.adapters import Utterance
    from pipelines.probe import _cached, probe_sources, segments_of

    video = tmp_path / "two_speakers.mp4"
    switch = _dissolve(real_corpus / FIRST, real_corpus / SECOND, video)
    store = tmp_path / "store"
    [entry] = probe_sources(str(store), "folder", [str(video)], max_seconds=MAX_S, identity=True)
    probe = Probe.from_dict(entry["probe"])
    assert probe.cuts_s == [], "the shot detector must not cut at the dissolve (else this proves nothing)"
    assert cut_points(probe, 30.0, identity_threshold=None) == [(0.0, probe.duration_s, "whole")], \
        "without identity no face-run break either"
    inside = [d for t, d in probe.identity if d is not None and abs(t - switch) > 1.5]
    assert inside and max(inside) < IDENTITY_THRESHOLD, f"one person's own distances: {inside}"

    utt = Utterance(utt_id="mix/two", speaker_id="mix", video_path=str(video))
    pieces = segments_of(utt, entry, MAX_S)  # the pipeline's cut, default threshold
    assert [p.utt_id for p in pieces] == ["mix/two_seg00", "mix/two_seg01"], pieces
    assert pieces[0].start_s == 0.0 and pieces[1].end_s == probe.duration_s
    assert abs(pieces[0].end_s - switch) <= TOLERANCE_S and abs(pieces[1].start_s - switch) <= TOLERANCE_S, \
        (pieces, switch)
    assert [why for _, _, why in cut_points(probe, MAX_S)] == ["face+identity"] * 2  # not "max"

    cached = _cached(store, "folder", str(video), MAX_S, identity=True)  # a re-run probes nothing
    assert cached is not None and Probe.from_dict(cached["probe"]) == probe
    assert _cached(store, "folder", str(video), MAX_S, identity=False) is None  # a plain probe is another one
