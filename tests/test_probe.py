"""Long raw videos become utterances: shot cuts, face-track breaks and --max-seconds, decided by a
probe pass before the plan is fixed; re-runs neither re-probe nor re-plan; sync survives the cut."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.layout import table_path
from features.shots import MIN_SEGMENT_S, Probe, cut_points
from tests.conftest import REPO

CLIPS = ["spk05/a.mp4", "spk03/a.mp4", "spk02/a.mp4"]  # 4.88, 5.0, 5.0 s: three people, three shots
E2E_CLIPS = CLIPS[:2]  # the end-to-end test tracks faces: two shots keep it short


# ---------------------------------------------------------------- cut points (no media)
def _probe(seconds: float, cuts=(), faces=None) -> Probe:
    times = np.arange(0, seconds, 0.2)
    faces = faces or (lambda t: [0.5, 0.5, 0.3])
    return Probe(duration_s=seconds, source_frames=int(seconds * 25), cuts_s=list(cuts),
                 faces=[(round(float(t), 4), faces(t)) for t in times])


def test_segments_stay_within_max_seconds_and_inside_shots():
    probe = _probe(20.0, cuts=[5.0, 12.0])
    for max_s in (10.0, 3.0, 2.5, 1.3):
        segs = cut_points(probe, max_s)
        assert all(MIN_SEGMENT_S <= e - s <= max_s + 1e-9 for s, e, _ in segs), (max_s, segs)
        assert all(not (s < c < e) for s, e, _ in segs for c in probe.cuts_s), "no segment spans a cut"
        assert all(e1 <= s2 for (_, e1, _), (s2, _, _) in zip(segs, segs[1:])), "in order, no overlap"
        assert all(round(s * 25, 6).is_integer() and round(e * 25, 6).is_integer() for s, e, _ in segs)
    assert [(s, e) for s, e, _ in cut_points(probe, 10.0)] == [(0.0, 4.96), (5.04, 11.96), (12.04, 20.0)]


def test_face_runs_break_where_the_face_is_lost_or_jumps():
    def face(t):
        if 4.0 <= t < 5.0:
            return None  # a second without a face: a break
        return [0.25, 0.5, 0.2] if t < 8.0 else [0.75, 0.5, 0.2]  # another person from 8 s on
    segs = cut_points(_probe(12.0, faces=face), max_seconds=30.0)
    assert [(s, e) for s, e, _ in segs] == [(0.0, 4.0), (5.0, 8.0), (8.0, 12.0)]
    assert all("face" in why for _, _, why in segs)
    no_face = cut_points(_probe(12.0, faces=lambda t: None), max_seconds=5.0)
    assert no_face == []


# ---------------------------------------------------------------- the probe on real clips
@pytest.fixture(scope="module")
def long_video(real_corpus, tmp_path_factory) -> tuple[Path, list]:
    from pipelines.corpora.fixtures import concat_clips

    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return path, concat_clips([real_corpus / c for c in CLIPS], path, size=320)


def test_probe_finds_the_shot_cuts_as_pyscenedetect_does(long_video):
    from scenedetect import ContentDetector, detect

    from features.shots import probe_video

    path, spans = long_video
    probe = probe_video(path)
    truth = [start for start, _, _ in spans[1:]]
    assert len(probe.cuts_s) == len(truth) and np.allclose(probe.cuts_s, truth, atol=0.041), (probe.cuts_s, truth)
    reference = [s[0].seconds for s in detect(str(path), ContentDetector())[1:]]
    assert np.allclose(probe.cuts_s, reference, atol=0.041), (probe.cuts_s, reference)
    assert sum(b is None for _, b in probe.faces) <= 1, "the main face is found in the probe's samples"
    segs = cut_points(probe, max_seconds=2.0)
    assert len(segs) == 3 * 3 and all(e - s <= 2.0 for s, e, _ in segs)
    assert [s for s, _, _ in segs[::3]] == [0.0] + [round(c + 0.04, 4) for c in truth]


# ---------------------------------------------------------------- end to end
def run_extract(root: Path, store: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(REPO / "pipelines" / "extract.py"), "--dataset", "folder", "--root", str(root),
           "--store", str(store), "--workers", "2", "--fields", "audio", "landmarks", "meta", *extra]
    proc = subprocess.run(cmd, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((store / "extract_report.json").read_text())


@pytest.mark.slow
def test_long_video_becomes_one_utterance_per_shot_in_sync(real_corpus, tmp_path):
    """The long video (two real clips back to back) beside the clips themselves (symlinked
    speaker folders) in one folder corpus: the long one becomes one utterance per shot, each
    within --max-seconds, each as in sync as its source clip extracted whole; the short ones
    stay whole. A re-run probes and plans nothing again, and the store verifies."""
    from catalog.verify import verify
    from features.landmarks import mouth_opening
    from tests.test_pipeline_quality import best_lag, stored

    from pipelines.corpora.fixtures import concat_clips

    path = tmp_path / "long.mp4"
    spans = concat_clips([real_corpus / c for c in E2E_CLIPS], path, size=320)
    root = tmp_path / "corpus"
    (root / "mix").mkdir(parents=True)
    os.symlink(path, root / "mix" / "long.mp4")
    for clip in E2E_CLIPS:
        (root / clip.split("/")[0]).mkdir(exist_ok=True)
        os.symlink(real_corpus / clip, root / clip)
    store = tmp_path / "store"
    report = run_extract(root, store, "--max-seconds", "5.5")
    assert report["errors"] == 0 and report["ok"] == report["utterances"] == 2 + 2, report
    assert report["probe"]["videos_probed"] == 3 and report["probe"]["videos_cut"] == 1
    assert report["probe"]["segments"] == 2
    rows = {r["utt_id"]: r for r in pq.read_table(table_path(store, "utterances")).to_pylist()}
    segs = sorted((r for r in rows.values() if r["utt_id"].startswith("mix/long_seg")), key=lambda r: r["start_s"])
    assert [r["utt_id"] for r in segs] == ["mix/long_seg00", "mix/long_seg01"]
    for row, (start, end, source) in zip(segs, spans):
        assert row["video_path"] == str(path.resolve()) and start <= row["start_s"] < row["end_s"] <= end
        assert row["end_s"] - row["start_s"] <= 5.5 and row["n_frames"] >= round((end - start) * 25) - 2

    def lag(row: dict) -> int:
        data = stored(store, row, ["audio", "landmarks"])
        n = row["n_frames"]
        loudness = np.sqrt((data["audio"].reshape(n, 640) ** 2).mean(axis=1))
        return best_lag(mouth_opening(data["landmarks"]), loudness)

    for row, clip in zip(segs, E2E_CLIPS):
        whole = rows[clip.removesuffix(".mp4")]
        assert whole["start_s"] is None  # short clips are not cut
        assert abs(lag(row) - lag(whole)) <= 1, (row["utt_id"], lag(row), clip, lag(whole))

    probe_files = {p: p.stat().st_mtime_ns for p in store.glob("probe/**/*.json")}
    assert len(probe_files) == 3  # the short clips were judged by their headers alone
    again = run_extract(root, store, "--max-seconds", "5.5")
    assert again["frames_extracted"] == 0 and again["probe"]["videos_probed"] == 0
    assert {p: p.stat().st_mtime_ns for p in store.glob("probe/**/*.json")} == probe_files
    assert verify(store)["ok"]


def test_unreadable_long_videos_are_planned_whole_so_extraction_names_the_cause(bad_inputs, tmp_path):
    from pipelines.adapters import Utterance
    from pipelines.probe import probe_path, probe_sources, segments_of

    videos = [str(bad_inputs[k]) for k in ("empty", "text", "truncated")]
    entries = probe_sources(str(tmp_path), "folder", videos, max_seconds=0.5)
    assert [bool(e.get("error")) for e in entries] == [True, True, True], entries
    assert not any(probe_path(tmp_path, "folder", v).exists() for v in videos), "errors are not cached"
    utt = Utterance(utt_id="bad/empty", speaker_id="bad", video_path=videos[0])
    assert segments_of(utt, entries[0], 0.5) == [utt]
