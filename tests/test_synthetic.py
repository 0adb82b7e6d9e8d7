"""Tests for pipelines/synthetic.py (tiny corpora, < 60 s in total)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from pipelines import synthetic as syn  # noqa: E402  (after the importorskip)
from tests.conftest import REPO  # noqa: E402

SR = syn.SAMPLE_RATE


# ----------------------------------------------------------------------------- helpers
def decode_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        chunks = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float32)


def decode_video(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    frames, pts = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(float(f.pts * f.time_base))
    return frames, np.array(pts)


def estimate_f0(audio: np.ndarray, syllables: list[dict], sr: int = SR) -> float:
    """Median autocorrelation pitch over 40 ms windows in the middle of the vowels."""
    est = []
    win = int(0.04 * sr)
    lo, hi = sr // 400, sr // 60
    for s in syllables:
        a, b = int(s["vowel_start"] * sr), int(s["end"] * sr)
        mid = (a + b) // 2
        seg = audio[mid - win // 2: mid + win // 2].astype(np.float64)
        if len(seg) < win or np.sqrt((seg ** 2).mean()) < 1e-3:
            continue
        seg = seg - seg.mean()
        ac = np.correlate(seg, seg, "full")[win - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        est.append(sr / lag)
    assert len(est) >= 3, "not enough voiced syllables to estimate f0"
    return float(np.median(est))


def lag_of(x: np.ndarray, ref: np.ndarray, max_lag: int) -> int:
    """Lag (samples) that best aligns ``x`` to ``ref`` (x[n] ~ ref[n - lag])."""
    n = min(len(x), len(ref))
    x, ref = x[:n].astype(np.float64), ref[:n].astype(np.float64)
    lags = np.arange(-max_lag, max_lag + 1)
    scores = [np.dot(x[max(l, 0): n + min(l, 0)], ref[max(-l, 0): n - max(l, 0)]) for l in lags]
    return int(lags[int(np.argmax(scores))])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    paths = syn.generate_corpus(root, n_speakers=2, n_utterances=1, seed=0, min_seconds=2.0,
                                max_seconds=2.0, progress=False)
    return root, paths


# ----------------------------------------------------------------------------- tests
def test_files_and_json(corpus):
    root, paths = corpus
    assert paths == sorted(paths)
    assert [p.relative_to(root).as_posix() for p in paths] == ["spk00/u00.mp4", "spk01/u00.mp4"]
    for p in paths:
        assert p.stat().st_size > 1000
        meta = json.loads(p.with_suffix(".json").read_text())
        spk = p.parent.name
        assert meta["utt_id"] == f"{spk}/u00" and meta["speaker_id"] == spk
        assert meta["seed"] == 0 and meta["fps"] == 25.0 and meta["sample_rate"] == 16000
        assert meta["uneven_timing"] is False and meta["audio_shift_frames"] == 0
        n = len(meta["frame_times"])
        assert n == 50 and meta["duration_s"] == pytest.approx(2.0)
        for k in ("mouth_open", "mouth_width", "loudness"):
            assert len(meta[k]) == n, k
        mo = np.array(meta["mouth_open"])
        assert mo.min() >= 0 and mo.max() <= 1 and mo.max() > 0.3  # really opens
        assert meta["syllables"] and all(s["vowel"] in "aeiou" for s in meta["syllables"])
        assert all(0.11 <= s["end"] - s["start"] <= 0.31 for s in meta["syllables"])
        assert meta["speaker"]["speaker_id"] == spk
        assert 90 <= meta["speaker"]["pitch_hz"] <= 240
        assert 0.85 <= meta["speaker"]["formant_scale"] <= 1.2


def test_same_seed_same_content(corpus, tmp_path):
    root, _ = corpus
    # spk00 of a 1-speaker corpus must equal spk00 of the 2-speaker corpus (look + voice + content)
    other = syn.generate_corpus(tmp_path, n_speakers=1, n_utterances=1, seed=0, min_seconds=2.0,
                                max_seconds=2.0, progress=False)
    a1, a2 = decode_audio(root / "spk00" / "u00.mp4"), decode_audio(other[0])
    assert a1.shape == a2.shape and np.array_equal(a1, a2)
    m1 = json.loads((root / "spk00" / "u00.json").read_text())
    m2 = json.loads(other[0].with_suffix(".json").read_text())
    assert m1 == m2
    # arrays before encoding are identical, and differ for another seed
    sp = syn.make_speaker(0, 1)
    f1, t1, au1, g1 = syn.render_utterance(sp, np.random.default_rng(5), 1.0)
    f2, t2, au2, g2 = syn.render_utterance(sp, np.random.default_rng(5), 1.0)
    f3, _, au3, _ = syn.render_utterance(sp, np.random.default_rng(6), 1.0)
    assert np.array_equal(au1, au2) and np.array_equal(t1, t2) and g1 == g2
    assert all(np.array_equal(x, y) for x, y in zip(f1, f2))
    assert len(au1) == len(au3) and not np.array_equal(au1, au3)
    assert f1[0].shape == (224, 224, 3) and f1[0].dtype == np.uint8
    assert au1.dtype == np.float32 and np.abs(au1).max() == pytest.approx(0.5, abs=1e-3)
    # a speaker's style depends on (seed, index) only
    assert syn.make_speaker(0, 3) == syn.make_speaker(0, 3)
    assert syn.make_speaker(0, 3) != syn.make_speaker(1, 3)


def test_speakers_differ_in_pitch(corpus):
    root, paths = corpus
    f0s, nominal = [], []
    for p in paths:
        meta = json.loads(p.with_suffix(".json").read_text())
        f0 = estimate_f0(decode_audio(p), meta["syllables"])
        pitch = meta["speaker"]["pitch_hz"]
        assert f0 == pytest.approx(pitch, rel=0.12), (p, f0, pitch)
        f0s.append(f0)
        nominal.append(pitch)
    assert abs(np.log(nominal[0] / nominal[1])) > 0.2  # seed 0: clearly different voices
    assert abs(np.log(f0s[0] / f0s[1])) > 0.15
    assert (f0s[0] > f0s[1]) == (nominal[0] > nominal[1])
    # the looks differ too
    s0, s1 = syn.make_speaker(0, 0), syn.make_speaker(0, 1)
    assert s0.skin != s1.skin and s0.background != s1.background


def test_mouth_closed_in_silence(corpus):
    root, paths = corpus
    for p in paths:
        meta = json.loads(p.with_suffix(".json").read_text())
        t = np.array(meta["frame_times"])
        mo = np.array(meta["mouth_open"])
        loud = np.array(meta["loudness"])
        win = 1.0 / meta["fps"]
        syl = meta["syllables"]
        silent = np.array([not any(s["start"] < ti + win and s["end"] > ti for s in syl) for ti in t])
        in_vowel = np.array([any(s["vowel_start"] + 0.02 <= ti and ti + win <= s["end"] - 0.05 for s in syl)
                             for ti in t])
        assert silent.sum() >= 5 and in_vowel.sum() >= 5
        assert np.all(mo[silent] == 0) and np.all(loud[silent] < 1e-4)
        assert mo[0] == 0 and mo[-1] == 0  # leading / trailing silence
        assert np.all(mo[in_vowel] > 0.05) and mo[in_vowel].mean() > 0.3


@pytest.mark.parametrize("fps,uneven", [(25.0, False), (30.0, False), (25.0, True)])
def test_decoded_timing(tmp_path, fps, uneven):
    paths = syn.generate_corpus(tmp_path, n_speakers=1, n_utterances=1, seed=3, min_seconds=2.0,
                                max_seconds=2.0, fps=fps, uneven_timing=uneven, progress=False)
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    frames, pts = decode_video(paths[0])
    times = np.array(meta["frame_times"])
    assert len(frames) == len(times) == len(meta["mouth_open"])
    assert np.allclose(pts, times, atol=1e-4)
    assert frames[0].shape == (224, 224, 3)
    d = np.diff(times)
    if uneven:
        assert np.all(d > 0.55 / fps) and np.all(d < 1.45 / fps)
        assert d.std() > 0.15 / fps  # really irregular
        assert meta["uneven_timing"] is True
    else:
        assert len(times) == round(2.0 * fps)
        assert np.allclose(times, np.arange(len(times)) / fps, atol=1e-6)
    audio = decode_audio(paths[0])
    n_expected = round(meta["duration_s"] * SR)
    assert n_expected <= len(audio) <= n_expected + 1024  # AAC pads the last frame only
    info = syn.probe_mp4(paths[0])
    assert info["audio_s"] == pytest.approx(meta["duration_s"], abs=0.005)
    assert info["sample_rate"] == SR


@pytest.mark.parametrize("k", [3, -2])
def test_audio_shift_arrays(k):
    sp = syn.make_speaker(0, 0)
    f0, t0, a0, g0 = syn.render_utterance(sp, np.random.default_rng(11), 2.0, audio_shift_frames=0)
    fk, tk, ak, gk = syn.render_utterance(sp, np.random.default_rng(11), 2.0, audio_shift_frames=k)
    s = abs(k) * 640
    assert len(ak) == len(a0)
    if k > 0:
        assert np.array_equal(ak[s:], a0[:-s]) and np.all(ak[:s] == 0)
    else:
        assert np.array_equal(ak[:-s], a0[s:]) and np.all(ak[-s:] == 0)
    # the mouth is always driven by the unshifted speech
    assert gk["mouth_open"] == g0["mouth_open"] and gk["audio_shift_frames"] == k
    assert all(np.array_equal(x, y) for x, y in zip(f0, fk))


def test_audio_shift_decoded(corpus, tmp_path):
    root, _ = corpus
    k = 2
    shifted = syn.generate_corpus(tmp_path, n_speakers=1, n_utterances=1, seed=0, min_seconds=2.0,
                                  max_seconds=2.0, audio_shift_frames=k, progress=False)
    ref = decode_audio(root / "spk00" / "u00.mp4")
    x = decode_audio(shifted[0])
    assert lag_of(x, ref, 4 * 640) == k * 640
    assert json.loads(shifted[0].with_suffix(".json").read_text())["audio_shift_frames"] == k


def test_mediapipe_finds_face(corpus):
    mp = pytest.importorskip("mediapipe")
    root, paths = corpus
    found = total = detected = 0
    ratios, truth = [], []
    for p in paths:
        frames, _ = decode_video(p)
        meta = json.loads(p.with_suffix(".json").read_text())
        with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                             min_detection_confidence=0.5) as mesh, \
                mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                          min_detection_confidence=0.5) as det:
            for img, mo in zip(frames, meta["mouth_open"]):
                total += 1
                detected += bool(det.process(img).detections)
                res = mesh.process(img)
                if not res.multi_face_landmarks:
                    continue
                found += 1
                lm = res.multi_face_landmarks[0].landmark
                pt = lambda i: np.array([lm[i].x * img.shape[1], lm[i].y * img.shape[0]])  # noqa: E731
                ratios.append(np.linalg.norm(pt(13) - pt(14)) / np.linalg.norm(pt(10) - pt(152)))
                truth.append(mo)
    assert found / total >= 0.99, f"face mesh found {found}/{total}"
    assert detected / total >= 0.99, f"face detection found {detected}/{total}"
    assert np.corrcoef(ratios, truth)[0, 1] > 0.6


def test_cli(tmp_path):
    with pytest.raises(SystemExit):
        syn.main(["--help"])
    rc = syn.main(["--root", str(tmp_path / "c"), "--speakers", "1", "--utterances", "2", "--min-seconds", "1",
                   "--max-seconds", "1.5", "--fps", "30", "--shift", "1", "--size", "160"])
    assert rc == 0
    mp4s = sorted((tmp_path / "c").glob("*/*.mp4"))
    assert [p.relative_to(tmp_path / "c").as_posix() for p in mp4s] == ["spk00/u00.mp4", "spk00/u01.mp4"]
    meta = json.loads(mp4s[1].with_suffix(".json").read_text())
    assert meta["fps"] == 30.0 and meta["audio_shift_frames"] == 1 and meta["utt_id"] == "spk00/u01"
    assert syn.probe_mp4(mp4s[1])["size"] == (160, 160)
    # runs as a script from the repo root; --help shows the defaults
    out = subprocess.run([sys.executable, "pipelines/synthetic.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "(default: 8)" in out.stdout and "--uneven" in out.stdout
