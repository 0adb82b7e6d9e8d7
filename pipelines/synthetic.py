"""Deterministic synthetic talking-face videos that MediaPipe really detects.

Each speaker (``spk00``, ``spk01`` ...) has its own face geometry, colours and
voice (:class:`SpeakerStyle`, derived from ``(seed, speaker index)`` only).  An
utterance is a speech-like audio track (syllables = consonant noise burst +
formant-filtered glottal pulse train, words separated by silences) and a video
whose mouth is driven, frame by frame, by the loudness and the current vowel
of the *unshifted* speech around each frame's presentation time.

Outputs per utterance (``root/<speaker>/<utt>.mp4`` + ``.json`` + ``.txt``):
H.264 (libx264, yuv420p) + AAC mono in an MP4 container, a ground-truth JSON
(frame times, mouth opening / width / loudness per written frame, syllables,
speaker style, transcript) and the transcript a lip reader can learn from
(``transcript_of``): the vowel of each syllable, the syllables of a word run
together, words separated by spaces (``"ae iou a"``). Vowels are what the
mouth shows (opening and spread); the consonant bursts leave no visible
trace, so they are not written. The folder adapter reads the ``.txt`` into
the catalog's ``transcript`` column.

Variants for sync tests: ``audio_shift_frames=k`` delays the audio track by
``k * 640`` samples (k > 0: the sound comes later than the mouth), ``fps``
changes the frame rate, ``uneven_timing=True`` draws irregular frame durations
(uniform in [0.6, 1.4] / fps) and stores them as explicit pts (time base
1/90000).

CLI::

    python pipelines/synthetic.py --root data/synth --speakers 8 --utterances 6
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from scipy import signal

from features.cli import HelpFormatter

SAMPLE_RATE = 16000
SHIFT_SAMPLES_PER_FRAME = 640  # audio_shift_frames unit (one 25 fps frame at 16 kHz)
PTS_TIME_BASE = 90000  # video time base used for uneven timing
VOWELS = ("a", "e", "i", "o", "u")
# Adult male formants (Hz) and bandwidths; scaled by SpeakerStyle.formant_scale.
FORMANTS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
BANDWIDTHS = (90.0, 110.0, 160.0)
FORMANT_GAINS = (1.0, 0.6, 0.3)
VOWEL_OPENNESS = {"a": 1.0, "e": 0.72, "o": 0.75, "i": 0.5, "u": 0.48}
VOWEL_SPREAD = {"a": 1.0, "e": 1.08, "i": 1.14, "o": 0.8, "u": 0.72}
SILENCE_REL = 0.04  # frames whose RMS is below this fraction of the reference are silent

SPEAKER_IDS_FMT = "spk{:02d}"
UTT_FMT = "u{:02d}"


# --------------------------------------------------------------------------------------
# Speaker style
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeakerStyle:
    """Look and voice of one synthetic speaker (all lengths relative to the frame size)."""

    speaker_id: str
    index: int
    face_h: float        # half face height (hairline..chin) / frame size
    face_ratio: float    # face width / face height
    eye_spacing: float   # eye centre offset from the face midline / face half-width
    eye_size: float      # eye half-width / face half-width
    nose_len: float      # nose tip below eye line / face half-height
    nose_width: float    # nostril half-width / face half-width
    mouth_width: float   # mouth half-width / face half-width
    jaw: float           # jaw taper (0 = elliptic, 0.3 = narrow pointed chin)
    skin: tuple          # RGB
    lips: tuple          # RGB
    hair: tuple          # RGB
    hair_style: int      # 0 short, 1 long, 2 very short / receding
    brow: tuple          # RGB
    iris: tuple          # RGB
    background: tuple    # RGB
    shirt: tuple         # RGB
    pitch_hz: float      # mean f0
    formant_scale: float

    def to_json(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [int(c) for c in v]
            elif isinstance(v, float):
                d[k] = round(v, 5)
        return d


_SKIN_TONES = np.array([
    (255, 224, 196), (241, 194, 160), (224, 172, 135), (198, 140, 100),
    (170, 115, 80), (141, 90, 60), (110, 70, 48), (232, 190, 165),
], dtype=float)
_HAIR_COLOURS = np.array([
    (20, 16, 14), (55, 35, 22), (95, 60, 35), (150, 105, 60),
    (200, 165, 110), (120, 120, 118), (70, 40, 30), (35, 30, 30),
], dtype=float)
_IRIS_COLOURS = np.array([(70, 45, 25), (40, 30, 20), (60, 100, 140), (80, 110, 70), (110, 80, 50)],
                         dtype=float)


def make_speaker(seed: int, index: int) -> SpeakerStyle:
    """Speaker ``index`` of corpus ``seed``; depends on (seed, index) only."""
    rng = np.random.default_rng([int(seed), int(index), 0x5EA4E5])
    # seed-level permutations (independent of n_speakers) keep neighbouring speakers diverse
    perm_rng = np.random.default_rng([int(seed), 0x9E3779])
    skin_perm = perm_rng.permutation(len(_SKIN_TONES))
    hair_perm = perm_rng.permutation(len(_HAIR_COLOURS))
    style_off = int(perm_rng.integers(3))
    pitch_perm = perm_rng.permutation(8)
    skin = _SKIN_TONES[skin_perm[index % len(_SKIN_TONES)]] * rng.uniform(0.95, 1.04, 3)
    skin = np.clip(skin, 40, 255)
    lips = np.clip(skin * np.array([0.78, 0.52, 0.52]) + np.array([25, 0, 5]), 0, 255)
    hair = np.clip(_HAIR_COLOURS[hair_perm[index % len(_HAIR_COLOURS)]] * rng.uniform(0.9, 1.1), 0, 255)
    brow = np.clip(np.minimum(hair, skin * 0.45) * 0.8, 0, 255)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]
    # background: muted colour, contrasting with the skin in brightness or hue
    while True:
        bg = rng.uniform(40, 230, 3)
        bg = bg.mean() + (bg - bg.mean()) * 0.6
        if np.abs(bg - skin).sum() > 150:
            break
    shirt = rng.uniform(20, 220, 3)
    return SpeakerStyle(
        speaker_id=SPEAKER_IDS_FMT.format(index),
        index=int(index),
        face_h=float(rng.uniform(0.29, 0.32)),
        face_ratio=float(rng.uniform(0.74, 0.84)),
        eye_spacing=float(rng.uniform(0.42, 0.48)),
        eye_size=float(rng.uniform(0.2, 0.24)),
        nose_len=float(rng.uniform(0.36, 0.44)),
        nose_width=float(rng.uniform(0.2, 0.26)),
        mouth_width=float(rng.uniform(0.34, 0.42)),
        jaw=float(rng.uniform(0.05, 0.3)),
        skin=tuple(int(round(c)) for c in skin),
        lips=tuple(int(round(c)) for c in lips),
        hair=tuple(int(round(c)) for c in hair),
        hair_style=(int(index) + style_off) % 3,
        brow=tuple(int(round(c)) for c in brow),
        iris=tuple(int(round(c)) for c in iris),
        background=tuple(int(round(c)) for c in bg),
        shirt=tuple(int(round(c)) for c in shirt),
        # log-spaced pitch bins (one per speaker of a block of 8) so speakers differ audibly
        pitch_hz=float(90.0 * (240.0 / 90.0) ** ((pitch_perm[index % 8] + rng.uniform(0.15, 0.85)) / 8)),
        formant_scale=float(rng.uniform(0.85, 1.2)),
    )


# --------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------
def _resonator(fc: float, bw: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    r = math.exp(-math.pi * bw / sr)
    theta = 2 * math.pi * fc / sr
    a = np.array([1.0, -2 * r * math.cos(theta), r * r])
    b = np.array([1.0 - r])  # rough unity-ish gain around fc
    return b, a


def _raised_env(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack = min(attack, n // 2)
    release = min(release, n - attack)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, attack))
    if release > 0:
        env[n - release:] *= 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, release))
    return env


def synthesize_speech(speaker: SpeakerStyle, rng: np.random.Generator, duration_s: float,
                      sr: int = SAMPLE_RATE) -> tuple[np.ndarray, list[dict]]:
    """Speech-like audio of ``duration_s`` seconds (float32, peak 0.5) and its syllables.

    Each syllable dict: start/end (s), vowel_start (s), vowel, word index.
    """
    n = int(round(duration_s * sr))
    out = np.zeros(n)
    # --- syllable plan
    syllables: list[dict] = []
    t = rng.uniform(0.15, 0.4)
    end_limit = duration_s - rng.uniform(0.15, 0.35)
    word = 0
    while True:
        n_syl = int(rng.choice([1, 2, 2, 3, 3, 4]))
        planned = []
        tt = t
        for _ in range(n_syl):
            dur = rng.uniform(0.12, 0.30)
            cons = rng.uniform(0.02, 0.06) if rng.random() < 0.75 else 0.0
            planned.append((tt, tt + dur, tt + cons, VOWELS[rng.integers(len(VOWELS))]))
            tt += dur
        while planned and planned[-1][1] > end_limit:
            planned.pop()
        if not planned:
            break
        for s, e, vs, v in planned:
            syllables.append({"start": s, "end": e, "vowel_start": vs, "vowel": v, "word": word})
        word += 1
        t = planned[-1][1] + rng.uniform(0.1, 0.4)
        if t >= end_limit:
            break
    # --- glottal source with intonation + jitter
    tgrid = np.arange(n) / sr
    phase0 = rng.uniform(0, 2 * np.pi)
    f0 = speaker.pitch_hz * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * tgrid + phase0)
                             - 0.06 * tgrid / max(duration_s, 1e-6))
    src = np.zeros(n)
    pos = 0.0
    while pos < n:
        i = int(pos)
        src[i] += 1.0
        period = sr / f0[i] * (1.0 + 0.012 * rng.standard_normal())
        pos += max(period, 8.0)
    # glottal pulse shape: leaky integration (spectral tilt) then remove DC
    src = signal.lfilter([1.0], [1.0, -0.97], src)
    src = signal.lfilter([1.0, -1.0], [1.0, -0.995], src)
    fs = speaker.formant_scale
    filt_cache: dict[str, list] = {}
    for syl in syllables:
        v = syl["vowel"]
        if v not in filt_cache:
            filt_cache[v] = [_resonator(min(f * fs, sr * 0.45), bw * fs, sr)
                             for f, bw in zip(FORMANTS[v], BANDWIDTHS)]
        i0 = int(round(syl["start"] * sr))
        iv = int(round(syl["vowel_start"] * sr))
        i1 = min(int(round(syl["end"] * sr)), n)
        amp = rng.uniform(0.55, 1.0)
        # voiced vowel part (with a small lead-in margin so the filters settle)
        margin = 200
        j0 = max(iv - margin, 0)
        seg = src[j0:i1]
        voiced = np.zeros(len(seg))
        for (b, a), g in zip(filt_cache[v], FORMANT_GAINS):
            voiced += g * signal.lfilter(b, a, seg)
        voiced = voiced[iv - j0:]
        nv = len(voiced)
        if nv <= 0:
            continue
        env = _raised_env(nv, int(0.025 * sr), int(0.05 * sr))
        env *= np.linspace(1.0, rng.uniform(0.6, 0.9), nv)  # slight decay within the vowel
        voiced /= (np.abs(voiced).max() + 1e-9)
        out[iv:iv + nv] += amp * env * voiced
        # consonant burst
        if iv > i0:
            nc = iv - i0
            noise = rng.standard_normal(nc + 64)
            lo = rng.uniform(1500, 3500)
            sos = signal.butter(2, [lo, min(lo * 2.2, sr * 0.45)], btype="band", fs=sr, output="sos")
            burst = signal.sosfilt(sos, noise)[64:]
            burst /= (np.abs(burst).max() + 1e-9)
            cenv = _raised_env(nc, max(nc // 4, 1), max(nc // 3, 1))
            out[i0:iv] += amp * rng.uniform(0.2, 0.35) * cenv * burst
    peak = np.abs(out).max()
    if peak > 0:
        out *= 0.5 / peak
    for syl in syllables:
        for k in ("start", "end", "vowel_start"):
            syl[k] = round(float(syl[k]), 5)
    return out.astype(np.float32), syllables


def transcript_of(syllables: list[dict]) -> str:
    """The vowels the mouth shows: one letter per syllable, a word's letters together, words
    separated by single spaces."""
    words: dict[int, str] = {}
    for syl in syllables:
        words[syl["word"]] = words.get(syl["word"], "") + syl["vowel"]
    return " ".join(words[w] for w in sorted(words))


def shift_audio(audio: np.ndarray, shift_frames: int) -> np.ndarray:
    """Delay ``audio`` by ``shift_frames * 640`` samples (negative: advance), keeping the length."""
    k = int(shift_frames) * SHIFT_SAMPLES_PER_FRAME
    out = np.zeros_like(audio)
    if k == 0:
        out[:] = audio
    elif k > 0:
        if k < len(audio):
            out[k:] = audio[:-k]
    else:
        k = -k
        if k < len(audio):
            out[:-k] = audio[k:]
    return out


def loudness_reference(audio: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Reference RMS (95th percentile of 40 ms window RMS over non-silent windows)."""
    win = int(0.04 * sr)
    nwin = len(audio) // win
    if nwin == 0:
        return 1.0
    rms = np.sqrt((audio[: nwin * win].astype(np.float64).reshape(nwin, win) ** 2).mean(1))
    rms = rms[rms > 1e-6]
    return float(np.percentile(rms, 95)) if len(rms) else 1.0


def mouth_states(audio: np.ndarray, syllables: list[dict], times: np.ndarray, fps: float,
                 sr: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """Mouth opening/width/loudness at each frame time ``t`` from the audio in [t, t + 1/fps)."""
    ref = loudness_reference(audio, sr)
    win = max(int(round(sr / fps)), 1)
    n = len(times)
    loud = np.zeros(n)
    opening = np.zeros(n)
    width = np.ones(n)
    starts = np.array([s["start"] for s in syllables]) if syllables else np.zeros(0)
    ends = np.array([s["end"] for s in syllables]) if syllables else np.zeros(0)
    for i, t in enumerate(times):
        i0 = int(round(t * sr))
        seg = audio[i0:i0 + win].astype(np.float64)
        rms = float(np.sqrt((seg ** 2).mean())) if len(seg) else 0.0
        loud[i] = rms
        if rms < SILENCE_REL * ref or len(starts) == 0:
            continue
        t1 = t + win / sr
        overlap = np.minimum(ends, t1) - np.maximum(starts, t)
        j = int(np.argmax(overlap))
        if overlap[j] <= 0:
            continue
        v = syllables[j]["vowel"]
        level = min(rms / ref, 1.0) ** 0.6
        opening[i] = level * VOWEL_OPENNESS[v]
        width[i] = 1.0 + (VOWEL_SPREAD[v] - 1.0) * min(1.0, 2.0 * level)
    return {"mouth_open": opening, "mouth_width": width, "loudness": loud}


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
_SHIFT = 4  # fixed-point bits for sub-pixel cv2 drawing
_SCALE = 1 << _SHIFT


def _pts(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * _SCALE).astype(np.int32).reshape(-1, 1, 2)


def _poly(img, p, colour):
    cv2.fillPoly(img, [_pts(p)], colour, cv2.LINE_AA, _SHIFT)


def _ellipse_pts(cx, cy, ax, ay, angle_deg=0.0, n=48, a0=0.0, a1=360.0):
    th = np.deg2rad(np.linspace(a0, a1, n, endpoint=(a1 - a0) < 360))
    x = ax * np.cos(th)
    y = ay * np.sin(th)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _line(img, p, colour, thickness):
    cv2.polylines(img, [_pts(p)], False, colour, max(int(round(thickness)), 1), cv2.LINE_AA, _SHIFT)


def _mix(c1, c2, w):
    return tuple(float(a * (1 - w) + b * w) for a, b in zip(c1, c2))


def _scale(c, f):
    return tuple(float(min(max(v * f, 0), 255)) for v in c)


class FaceRenderer:
    """Draws one speaker at a given mouth state / blink / head pose (RGB uint8 frames)."""

    def __init__(self, speaker: SpeakerStyle, size: int = 224):
        self.sp = speaker
        self.size = size
        S = float(size)
        self.b = speaker.face_h * S                 # face half-height
        self.a = self.b * speaker.face_ratio        # face half-width
        self.cx = S * 0.5
        self.cy = S * 0.47
        self.eye_y = self.cy - 0.12 * self.b
        self.max_jaw_drop = 0.85 * speaker.mouth_width * self.a * 1.2 * 0.95
        self._base = self._render_static()
        self._shade = self._shading_map()
        skin = np.empty((size, size, 3), np.float32)
        skin[:] = np.array(speaker.skin, np.float32)
        self._skin_shaded = np.clip(skin * self._shade, 0, 255).astype(np.uint8)
        self._lid_img = np.clip(skin * self._shade, 0, 255)
        self._render_face_static()

    # -- geometry -------------------------------------------------------------------
    def face_outline(self, jaw_drop: float = 0.0, n: int = 72) -> np.ndarray:
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        s = np.sin(th)
        c = np.cos(th)
        low = np.clip(s, 0, None)
        k = 1.0 - self.sp.jaw * low ** 2
        x = self.cx + self.a * c * k
        y = self.cy + self.b * s + jaw_drop * low ** 3
        # slightly squarer forehead
        up = np.clip(-s, 0, None)
        x = x + self.a * 0.06 * c * up
        return np.stack([x, y], 1)

    # -- static layer ---------------------------------------------------------------
    def _render_static(self) -> np.ndarray:
        sp, S = self.sp, self.size
        a, b, cx, cy = self.a, self.b, self.cx, self.cy
        img = np.empty((S, S, 3), np.uint8)
        # background: vertical gradient
        g = np.linspace(1.08, 0.85, S)[:, None]
        img[:] = np.clip(np.array(sp.background)[None, None, :] * g[:, :, None], 0, 255).astype(np.uint8)
        skin = sp.skin
        # shoulders
        _poly(img, _ellipse_pts(cx, cy + b * 2.25, a * 2.3, b * 0.95, n=64), sp.shirt)
        # neck (darker skin) with shadow under the jaw
        neck_w = a * 0.55
        neck = np.array([[cx - neck_w, cy + 0.3 * b], [cx + neck_w, cy + 0.3 * b],
                         [cx + neck_w * 1.1, cy + 1.55 * b], [cx - neck_w * 1.1, cy + 1.55 * b]])
        _poly(img, neck, _scale(skin, 0.82))
        _poly(img, _ellipse_pts(cx, cy + 1.5 * b, neck_w * 1.6, 0.18 * b, a0=0, a1=180, n=24),
              _scale(sp.shirt, 0.8))
        # hair behind the head
        if sp.hair_style == 1:  # long
            back = np.concatenate([
                _ellipse_pts(cx, cy - 0.1 * b, a * 1.28, b * 1.08, a0=180, a1=360, n=32),
                _ellipse_pts(cx + a * 1.0, cy + 0.85 * b, a * 0.28, b * 0.3, a0=0, a1=90, n=8),
                _ellipse_pts(cx - a * 1.0, cy + 0.85 * b, a * 0.28, b * 0.3, a0=90, a1=180, n=8)])
            _poly(img, back, sp.hair)
            _poly(img, _ellipse_pts(cx, cy + 0.1 * b, a * 1.05, b * 0.95, n=40), _scale(sp.hair, 0.7))
        # ears
        for sgn in (-1, 1):
            ex = cx + sgn * a * 0.98
            _poly(img, _ellipse_pts(ex, cy + 0.02 * b, a * 0.15, b * 0.2, n=24), _scale(skin, 0.9))
            _poly(img, _ellipse_pts(ex + sgn * a * 0.02, cy + 0.02 * b, a * 0.07, b * 0.12, n=16),
                  _scale(skin, 0.72))
        return img

    def _shading_map(self) -> np.ndarray:
        """Multiplicative shading (float32 HxWx1): darker towards the face border, eye sockets,
        under the nose and cheeks; applied to the whole canonical frame."""
        S = self.size
        a, b, cx, cy = self.a, self.b, self.cx, self.cy
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        u = (xx - cx) / a
        v = (yy - cy) / b
        r = np.sqrt(u ** 2 + v ** 2)
        shade = np.ones((S, S), np.float32)
        face = np.zeros((S, S), np.uint8)
        cv2.fillPoly(face, [_pts(self.face_outline(self.max_jaw_drop))], 255, cv2.LINE_AA, _SHIFT)
        facef = face.astype(np.float32) / 255.0
        # lateral fall-off (cylindrical head) + light from upper-left
        side = 1.0 - 0.32 * np.clip(np.abs(u), 0, 1.2) ** 2.5 - 0.06 * u + 0.04 * -v
        shade = shade * (1 - facef) + side * facef
        # eye sockets
        for sgn in (-1, 1):
            ex = cx + sgn * self.sp.eye_spacing * a
            d = ((xx - ex) / (a * 0.33)) ** 2 + ((yy - (self.eye_y - 0.02 * b)) / (b * 0.16)) ** 2
            shade -= 0.13 * np.exp(-d) * facef
        # nose side shading (bridge shadow on the shadowed side)
        ny0, ny1 = self.eye_y, self.eye_y + self.sp.nose_len * b
        inside = np.clip((yy - ny0) / (0.15 * b), 0, 1) * np.clip((ny1 - yy) / (0.05 * b), 0, 1)
        for sgn, k in ((-1, 0.06), (1, 0.12)):
            d = ((xx - (cx + sgn * a * 0.14)) / (a * 0.06)) ** 2
            shade -= k * np.exp(-d) * inside * facef
        # shadow under the nose
        d = ((xx - cx) / (a * 0.25)) ** 2 + ((yy - (ny1 + 0.06 * b)) / (b * 0.04)) ** 2
        shade -= 0.15 * np.exp(-d) * facef
        # cheeks slightly brighter
        for sgn in (-1, 1):
            d = ((xx - (cx + sgn * a * 0.5)) / (a * 0.28)) ** 2 + ((yy - (cy + 0.22 * b)) / (b * 0.16)) ** 2
            shade += 0.05 * np.exp(-d) * facef
        # vignette
        shade *= 1.0 - 0.15 * np.clip(r - 1.2, 0, 2) / 2
        return np.clip(shade, 0.3, 1.2)[:, :, None]

    # -- dynamic parts ----------------------------------------------------------------
    def _eye_contours(self, sgn):
        sp = self.sp
        a = self.a
        ew = sp.eye_size * a
        eh = ew * 0.42
        ex = self.cx + sgn * sp.eye_spacing * a
        ey = self.eye_y
        xs = np.linspace(-ew, ew, 17)
        u2 = (xs / ew) ** 2
        upper = np.stack([ex + xs, ey - eh * (1 - u2) ** 0.8], 1)
        lower = np.stack([ex + xs, ey + eh * 0.8 * (1 - u2)], 1)
        # slight tilt: outer corner a bit higher
        upper[:, 1] -= 0.08 * sgn * (upper[:, 0] - ex)
        lower[:, 1] -= 0.08 * sgn * (lower[:, 0] - ex)
        return ex, ey, ew, eh, xs, upper, lower

    def _draw_eyes(self, img):
        """Open eyes, eyelid creases and eyebrows (static)."""
        sp = self.sp
        for sgn in (-1, 1):
            ex, ey, ew, eh, xs, upper, lower = self._eye_contours(sgn)
            _poly(img, np.concatenate([upper, lower[::-1]]), (238, 234, 228))
            ir = eh * 1.0
            _poly(img, _ellipse_pts(ex, ey + 0.05 * eh, ir, ir, n=24), sp.iris)
            _poly(img, _ellipse_pts(ex, ey + 0.05 * eh, ir * 0.45, ir * 0.45, n=16), (12, 10, 10))
            _poly(img, _ellipse_pts(ex - 0.3 * ir, ey - 0.3 * ir, ir * 0.18, ir * 0.18, n=8), (245, 245, 245))
            # re-cover the iris where it sticks out of the almond (skin above / below)
            above = np.concatenate([upper, (upper + [0, -eh])[::-1]])
            below = np.concatenate([lower, (lower + [0, eh])[::-1]])
            self._paint_lid(img, above)
            self._paint_lid(img, below)
            # lash line / upper lid, lower lid
            _line(img, upper, (25, 18, 15), max(1.0, eh * 0.35))
            _line(img, lower[2:-2], _scale(sp.skin, 0.6), 1)
            # crease
            crease = np.stack([ex + xs[2:-2] * 1.05,
                               ey - eh * 1.6 * (1 - (xs[2:-2] / ew) ** 2) ** 0.6 - eh * 0.2], 1)
            _line(img, crease, _scale(sp.skin, 0.66), 1)
            # eyebrow
            bx = np.linspace(-ew * 1.25, ew * 1.3, 12)
            by = ey - eh * 2.6 - eh * 0.9 * (1 - ((bx - ew * 0.15) / (ew * 1.3)) ** 2)
            brow_top = np.stack([ex + sgn * bx, by], 1)
            thick = eh * np.linspace(0.9, 0.45, 12)
            brow_bot = np.stack([ex + sgn * bx, by + thick], 1)[::-1]
            _poly(img, np.concatenate([brow_top, brow_bot]), sp.brow)

    def _paint_lid(self, img, poly, gain=1.0):
        """Fill ``poly`` with the (shaded) eyelid skin."""
        p = _pts(poly)
        x, y, w, h = cv2.boundingRect((p >> _SHIFT).reshape(-1, 2))
        x0, y0 = max(x - 2, 0), max(y - 2, 0)
        x1, y1 = min(x + w + 3, self.size), min(y + h + 3, self.size)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [p - np.array([x0 * _SCALE, y0 * _SCALE], np.int32)], 255, cv2.LINE_AA, _SHIFT)
        m = mask[:, :, None].astype(np.float32) / 255.0
        roi = img[y0:y1, x0:x1]
        roi[:] = (roi * (1 - m) + self._lid_img[y0:y1, x0:x1] * (m * gain) + 0.5).astype(np.uint8)

    def _draw_blink(self, img, blink):
        """Upper eyelid lowered by ``blink`` (0 open .. 1 closed)."""
        for sgn in (-1, 1):
            ex, ey, ew, eh, xs, upper, lower = self._eye_contours(sgn)
            edge = upper + blink * (lower - upper)
            lid = np.concatenate([upper + [0, -0.3 * eh], edge[::-1]])
            self._paint_lid(img, lid, 0.93)
            _line(img, edge, (30, 22, 18), max(1.0, eh * 0.35))

    def _draw_nose(self, img):
        sp = self.sp
        a, b = self.a, self.b
        cx = self.cx
        ny = self.eye_y + sp.nose_len * b
        nw = sp.nose_width * a
        dark = _scale(sp.skin, 0.55)
        mid = _scale(sp.skin, 0.78)
        # nose tip highlight + alae
        _poly(img, _ellipse_pts(cx, ny - 0.02 * b, nw * 0.55, nw * 0.42, n=20), _scale(sp.skin, 1.06))
        for sgn in (-1, 1):
            ala = _ellipse_pts(cx + sgn * nw * 0.75, ny + 0.0 * b, nw * 0.35, nw * 0.32, n=16, a0=-90, a1=90)
            if sgn < 0:
                ala = _ellipse_pts(cx + sgn * nw * 0.75, ny + 0.0 * b, nw * 0.35, nw * 0.32, n=16, a0=90, a1=270)
            _line(img, ala, mid, max(1.0, nw * 0.12))
            _poly(img, _ellipse_pts(cx + sgn * nw * 0.38, ny + nw * 0.2, nw * 0.2, nw * 0.1,
                                    angle_deg=sgn * 20, n=12), dark)
        # bridge lines
        for sgn in (-1, 1):
            bridge = np.array([[cx + sgn * a * 0.1, self.eye_y + 0.05 * b],
                               [cx + sgn * a * 0.12, ny - 0.12 * b],
                               [cx + sgn * nw * 0.9, ny - 0.03 * b]])
            _line(img, bridge, _mix(sp.skin, mid, 0.5), 1)

    def _draw_mouth(self, img, opening, width, mouth_y):
        sp = self.sp
        a, b = self.a, self.b
        cx = self.cx
        w = sp.mouth_width * a * width
        h = opening * w * 0.95            # inner-lip gap
        xs = np.linspace(-w, w, 25)
        u = xs / w
        prof = np.sqrt(np.clip(1 - u ** 2, 0, 1))
        up_inner = mouth_y - 0.2 * h * prof
        lo_inner = mouth_y + 0.8 * h * prof
        tu = 0.2 * w * 1.0
        tl = 0.27 * w
        bow = 1 - 0.35 * np.exp(-(u / 0.12) ** 2)  # cupid's bow dip at the centre
        up_outer = mouth_y - 0.2 * h * prof - tu * prof ** 0.6 * bow - 0.04 * w
        lo_outer = lo_inner + tl * prof ** 0.7 + 0.02 * w
        lips_col = sp.lips
        # inner mouth
        if h > 0.6:
            inner = np.concatenate([np.stack([cx + xs, up_inner], 1), np.stack([cx + xs[::-1], lo_inner[::-1]], 1)])
            _poly(img, inner, (45, 12, 18))
            # upper teeth and tongue hint
            th = min(0.35 * h, 0.12 * w)
            teeth = np.concatenate([np.stack([cx + xs * 0.7, up_inner * 1.0 - 1], 1),
                                    np.stack([cx + xs[::-1] * 0.7, up_inner[::-1] + th * prof[::-1]], 1)])
            _poly(img, teeth, (232, 228, 215))
            if h > 4:
                tongue = _ellipse_pts(cx, mouth_y + 0.8 * h, w * 0.5, h * 0.28, a0=180, a1=360, n=16)
                _poly(img, tongue, (165, 60, 70))
        # lips
        upper = np.concatenate([np.stack([cx + xs, up_outer], 1), np.stack([cx + xs[::-1], up_inner[::-1]], 1)])
        lower = np.concatenate([np.stack([cx + xs, lo_inner], 1), np.stack([cx + xs[::-1], lo_outer[::-1]], 1)])
        _poly(img, upper, _scale(lips_col, 0.88))
        _poly(img, lower, lips_col)
        # lower lip highlight
        hl = _ellipse_pts(cx, (lo_inner[12] + lo_outer[12]) / 2 - 0.02 * w, w * 0.35, tl * 0.22, n=16)
        _poly(img, hl, _scale(lips_col, 1.12))
        # lip seam / corners
        seam = np.stack([cx + xs, np.where(h > 0.6, up_inner, mouth_y)], 1)
        _line(img, seam, _scale(lips_col, 0.45) if h <= 0.6 else _scale(lips_col, 0.6), 1)
        for sgn in (-1, 1):
            _poly(img, _ellipse_pts(cx + sgn * w, mouth_y + 0.1 * h, 1.2, 1.2, n=8), _scale(sp.skin, 0.5))

    def _draw_hair_front(self, img):
        sp = self.sp
        a, b, cx, cy = self.a, self.b, self.cx, self.cy
        hair = sp.hair
        hairline = cy - 0.62 * b
        if sp.hair_style == 2:
            top = _ellipse_pts(cx, cy - 0.05 * b, a * 1.04, b * 1.04, a0=195, a1=345, n=32)
            inner = _ellipse_pts(cx, hairline + 0.22 * b, a * 0.86, b * 0.55, a0=345, a1=195, n=32)
            _poly(img, np.concatenate([top, inner]), _mix(hair, sp.skin, 0.35))
            return
        top = _ellipse_pts(cx, cy - 0.04 * b, a * 1.1, b * 1.1, a0=180, a1=360, n=40)
        side_l = np.array([[cx + a * 1.1, cy + 0.0 * b], [cx + a * 0.98, cy - 0.05 * b]])
        fringe_x = np.linspace(a * 0.98, -a * 0.98, 24)
        fringe_y = hairline + 0.18 * b * (np.abs(fringe_x) / a) ** 3 - 0.04 * b * np.cos(fringe_x / a * 7)
        fringe = np.stack([cx + fringe_x, fringe_y], 1)
        side_r = np.array([[cx - a * 0.98, cy - 0.05 * b], [cx - a * 1.1, cy + 0.0 * b]])
        _poly(img, np.concatenate([top, side_l, fringe, side_r]), hair)
        if sp.hair_style == 1:
            for sgn in (-1, 1):
                strand = np.array([[cx + sgn * a * 0.96, cy - 0.1 * b], [cx + sgn * a * 1.3, cy - 0.1 * b],
                                   [cx + sgn * a * 1.28, cy + 0.9 * b], [cx + sgn * a * 1.2, cy + 1.05 * b],
                                   [cx + sgn * a * 1.08, cy + 1.0 * b], [cx + sgn * a * 1.0, cy + 0.75 * b],
                                   [cx + sgn * a * 0.93, cy + 0.3 * b]])
                _poly(img, strand, hair)

    # -- frame ------------------------------------------------------------------------
    def _render_face_static(self) -> None:
        """Pre-render everything but the mouth, the dropped jaw and the blinking lids."""
        img = self._base.copy()
        _poly(img, self.face_outline(0.0), self.sp.skin)
        img = np.clip(img.astype(np.float32) * self._shade, 0, 255).astype(np.uint8)
        self._draw_hair_front(img)
        self._draw_eyes(img)
        self._draw_nose(img)
        self._static = img
        self._chin_y = self.cy + 0.5 * self.b

    def mouth_geometry(self, opening: float, width: float) -> tuple[float, float, float]:
        """(inner-lip gap px, jaw drop px, mouth line y px) in the canonical (unposed) frame."""
        h = opening * self.sp.mouth_width * self.a * width * 0.95
        mouth_y = self.eye_y + self.sp.nose_len * self.b + 0.2 * self.b + 0.1 * h
        return h, 0.85 * h, mouth_y

    def render(self, opening: float, width: float, blink: float,
               pose: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)) -> np.ndarray:
        """RGB uint8 frame.  opening 0..1, width factor ~0.7..1.2, blink 0..1,
        pose = (dx px, dy px, rotation deg, scale)."""
        img = self._static.copy()
        h, jaw_drop, mouth_y = self.mouth_geometry(opening, width)
        if jaw_drop > 0.2:
            outline = self.face_outline(jaw_drop)
            lower = outline[outline[:, 1] > self._chin_y]
            mask = np.zeros(img.shape[:2], np.uint8)
            cv2.fillPoly(mask, [_pts(lower)], 255, cv2.LINE_8, _SHIFT)
            cv2.copyTo(self._skin_shaded, mask, img)
        if blink > 0.02:
            self._draw_blink(img, blink)
        self._draw_mouth(img, opening, width, mouth_y)
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
        dx, dy, rot, sc = pose
        if abs(dx) + abs(dy) + abs(rot) + abs(sc - 1) > 1e-6:
            M = cv2.getRotationMatrix2D((self.cx, self.cy + 0.3 * self.b), rot, sc)
            M[0, 2] += dx
            M[1, 2] += dy
            img = cv2.warpAffine(img, M, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        return img


# --------------------------------------------------------------------------------------
# Utterance
# --------------------------------------------------------------------------------------
def frame_times(rng: np.random.Generator, seconds: float, fps: float, uneven: bool) -> tuple[np.ndarray, float]:
    """Presentation times (s) of the frames and the clip duration (s)."""
    if not uneven:
        n = max(int(round(seconds * fps)), 1)
        return np.arange(n) / fps, n / fps
    times = []
    t = 0.0
    while True:
        q = round(t * PTS_TIME_BASE) / PTS_TIME_BASE
        times.append(q)
        t += rng.uniform(0.6, 1.4) / fps
        if t >= seconds - 1e-9:
            break
    duration = round(t * PTS_TIME_BASE) / PTS_TIME_BASE
    return np.array(times), duration


def _smooth_noise(rng, times, amp, freqs=(0.15, 0.4, 0.9)):
    out = np.zeros(len(times))
    for f in freqs:
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * rng.uniform(0.7, 1.3) * times + rng.uniform(0, 2 * np.pi))
    return amp * out / len(freqs) * 1.6


def render_utterance(speaker: SpeakerStyle, rng: np.random.Generator, seconds: float, fps: float = 25.0,
                     audio_shift_frames: int = 0, uneven_timing: bool = False, size: int = 224,
                     renderer: FaceRenderer | None = None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict]:
    """Render one utterance.

    Returns ``(frames, times, audio, truth)``:

    * ``frames``: list of RGB uint8 arrays (size x size x 3), one per video frame;
    * ``times``: float64 array, presentation time (s) of each frame;
    * ``audio``: float32 16 kHz mono, the track that goes into the file, i.e. the speech
      delayed by ``audio_shift_frames * 640`` samples (same length as the unshifted speech;
      rendering again with the same rng state and ``audio_shift_frames=0`` gives the
      unshifted speech that drives the mouth);
    * ``truth``: JSON-serialisable ground-truth dict (the JSON fields except
      utt_id / speaker_id / seed).

    Consumes ``rng`` in a fixed order (frame times, speech, head motion, blinks), so the
    same rng state gives identical frames and audio.
    """
    times, duration = frame_times(rng, seconds, fps, uneven_timing)
    speech, syllables = synthesize_speech(speaker, rng, duration)
    states = mouth_states(speech, syllables, times, fps)
    # head motion and blinks
    dx = _smooth_noise(rng, times, 3.0)
    dy = _smooth_noise(rng, times, 2.0)
    rot = _smooth_noise(rng, times, 2.5)
    sc = 1.0 + _smooth_noise(rng, times, 0.02)
    blink = np.zeros(len(times))
    tb = rng.uniform(0.5, 2.5)
    blink_times = []
    while tb < duration:
        blink_times.append(tb)
        bd = rng.uniform(0.12, 0.2)
        x = (times - tb) / bd
        blink = np.maximum(blink, np.clip(1 - np.abs(2 * x - 1), 0, 1) * ((x >= 0) & (x <= 1)))
        tb += rng.uniform(2.0, 5.0)
    blink = np.clip(blink * 1.6, 0, 1)
    renderer = renderer or FaceRenderer(speaker, size)
    frames = [renderer.render(float(o), float(w), float(bl), (float(a), float(b_), float(r), float(s)))
              for o, w, bl, a, b_, r, s in zip(states["mouth_open"], states["mouth_width"], blink, dx, dy, rot, sc)]
    audio = shift_audio(speech, audio_shift_frames)
    truth = {
        "fps": float(fps),
        "uneven_timing": bool(uneven_timing),
        "audio_shift_frames": int(audio_shift_frames),
        "sample_rate": SAMPLE_RATE,
        "duration_s": float(duration),
        "frame_times": [float(t) for t in times],
        "mouth_open": [round(float(v), 5) for v in states["mouth_open"]],
        "mouth_width": [round(float(v), 5) for v in states["mouth_width"]],
        "loudness": [round(float(v), 6) for v in states["loudness"]],
        "blink": [round(float(v), 4) for v in blink],
        "syllables": syllables,
        "transcript": transcript_of(syllables),
        "speaker": speaker.to_json(),
    }
    return frames, times, audio, truth


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def write_mp4(path: Path, frames: list[np.ndarray], times: np.ndarray, audio: np.ndarray, fps: float,
              uneven_timing: bool, sr: int = SAMPLE_RATE, crf: int = 20) -> None:
    """H.264 (libx264 yuv420p) + AAC mono MP4 with explicit pts."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        if uneven_timing:
            tb = Fraction(1, PTS_TIME_BASE)
            pts = np.round(np.asarray(times) * PTS_TIME_BASE).astype(np.int64)
        else:
            fr = Fraction(fps).limit_denominator(1001)
            tb = 1 / fr
            pts = np.arange(len(frames), dtype=np.int64)
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        vs.options = {"crf": str(crf), "preset": "fast"}
        as_ = out.add_stream("aac", rate=sr)
        as_.layout = "mono"
        as_.time_base = Fraction(1, sr)
        for img, p in zip(frames, pts):
            fr_ = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            fr_.pts = int(p)
            fr_.time_base = tb
            for pkt in vs.encode(fr_):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        chunk = 1024
        a = np.asarray(audio, np.float32)
        for i in range(0, len(a), chunk):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(a[None, i:i + chunk]), format="fltp", layout="mono")
            af.sample_rate = sr
            af.pts = i
            af.time_base = Fraction(1, sr)
            for pkt in as_.encode(af):
                out.mux(pkt)
        for pkt in as_.encode():
            out.mux(pkt)


def probe_mp4(path: Path) -> dict:
    """Demux (no decoding) an mp4: video pts (s, sorted), video frame count, audio duration (s)."""
    import av

    vpts = []
    with av.open(str(path)) as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        for pkt in c.demux(vs):
            if pkt.pts is not None:
                vpts.append(float(pkt.pts * pkt.time_base))
        audio_s = float(as_.duration * as_.time_base) if as_.duration is not None else float("nan")
        return {"video_pts": sorted(vpts), "n_frames": len(vpts), "audio_s": audio_s,
                "sample_rate": as_.rate, "video_time_base": vs.time_base, "size": (vs.width, vs.height)}


def verify_mp4(path: Path, times: np.ndarray, n_audio_samples: int, sr: int = SAMPLE_RATE) -> None:
    """Raise RuntimeError unless the container holds exactly the written frames/pts and audio length."""
    info = probe_mp4(path)
    times = np.asarray(times, float)
    if info["n_frames"] != len(times):
        raise RuntimeError(f"{path}: {info['n_frames']} video frames in the container, wrote {len(times)}")
    err = np.abs(np.asarray(info["video_pts"]) - times).max()
    if err > 1e-4:
        raise RuntimeError(f"{path}: video pts differ from the written ones by up to {err:.6f} s")
    if not abs(info["audio_s"] - n_audio_samples / sr) < 0.005:
        raise RuntimeError(f"{path}: audio lasts {info['audio_s']:.4f} s, wrote {n_audio_samples / sr:.4f} s")


def utterance_seed_rng(seed: int, speaker_index: int, utt_index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(speaker_index), int(utt_index), 0xA0D10])


def generate_corpus(root: Path, n_speakers: int = 8, n_utterances: int = 6, seed: int = 0,
                    min_seconds: float = 3.0, max_seconds: float = 6.0, fps: float = 25.0,
                    audio_shift_frames: int = 0, uneven_timing: bool = False,
                    size: int = 224, progress: bool = True) -> list[Path]:
    """Writes root/<speaker_id>/<utt>.mp4, .json and .txt (transcript); returns the mp4 paths (sorted)."""
    root = Path(root)
    jobs = [(s, u) for s in range(n_speakers) for u in range(n_utterances)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="synthetic", unit="utt")
    paths = []
    renderers: dict[int, FaceRenderer] = {}
    for s, u in jobs:
        speaker = make_speaker(seed, s)
        if s not in renderers:
            renderers = {s: FaceRenderer(speaker, size)}
        rng = utterance_seed_rng(seed, s, u)
        seconds = float(rng.uniform(min_seconds, max_seconds))
        frames, times, audio, truth = render_utterance(speaker, rng, seconds, fps, audio_shift_frames,
                                                       uneven_timing, size, renderer=renderers[s])
        spk, utt = speaker.speaker_id, UTT_FMT.format(u)
        mp4 = root / spk / f"{utt}.mp4"
        write_mp4(mp4, frames, times, audio, fps, uneven_timing)
        verify_mp4(mp4, times, len(audio))
        meta = {"utt_id": f"{spk}/{utt}", "speaker_id": spk, "seed": int(seed), **truth}
        mp4.with_suffix(".json").write_text(json.dumps(meta))
        mp4.with_suffix(".txt").write_text(truth["transcript"] + "\n")  # the folder adapter's transcript
        paths.append(mp4)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return sorted(paths)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Generate a synthetic talking-face corpus (mp4 + ground-truth json).",
                                formatter_class=HelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="output directory")
    p.add_argument("--speakers", type=int, default=8, help="number of speakers")
    p.add_argument("--utterances", type=int, default=6, help="utterances per speaker")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--min-seconds", type=float, default=3.0, help="minimum utterance length")
    p.add_argument("--max-seconds", type=float, default=6.0, help="maximum utterance length")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate")
    p.add_argument("--shift", type=int, default=0, help="delay the audio by SHIFT*640 samples (negative: earlier)")
    p.add_argument("--uneven", action="store_true", help="irregular frame durations (explicit pts)")
    p.add_argument("--size", type=int, default=224, help="frame width/height in pixels")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate_corpus(args.root, args.speakers, args.utterances, args.seed, args.min_seconds,
                            args.max_seconds, args.fps, args.shift, args.uneven, args.size,
                            progress=not args.no_progress)
    print(f"wrote {len(paths)} utterances to {args.root} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
