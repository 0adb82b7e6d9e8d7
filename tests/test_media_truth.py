"""Every input read as a player shows it, through features/media.py: display matrix and legacy
rotate tag applied, non-square pixels made square, every PCM sample format converted to the
source's sound; what cannot be shown so is a MediaError, never a quiet `ok`.

The expected pictures are made here with numpy (np.rot90 / flips / slicing), independently of
the decoder's own turn code, and each check also measures the wrong picture, so a turn the
wrong way, a missing stretch or a misread sample format fails."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from features.media import MediaError, VideoStream, decode_audio, load_media, samples_as_float
from tests.conftest import write_pcm, write_video

CODEC_ERROR = 6.0  # mean abs difference (0..255) an H.264 round trip of these frames stays under
WRONG = 25.0  # ... and the wrong orientation is at least this far from the right one


def upright_image(h: int = 96, w: int = 64) -> np.ndarray:
    """A smooth portrait picture with no symmetry: red grows rightwards, green downwards, a blue
    blob sits in the top-left quarter. Smooth, so scaling it costs little."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0], img[..., 1] = 255 * x / (w - 1), 255 * y / (h - 1)
    img[..., 2] = 255 * np.exp(-((x - w / 4) ** 2 + (y - h / 4) ** 2) / (2 * (w / 8) ** 2))
    return img.round().astype(np.uint8)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def decode(path) -> tuple[np.ndarray, dict]:
    stream = VideoStream(path)
    frames = np.stack(list(stream))
    return frames, stream.timeline.facts


def stored_for(upright: np.ndarray, rotation: int, hflip: bool) -> np.ndarray:
    """The frame a camera stores so that turning it `rotation` degrees counter-clockwise, then
    mirroring it if `hflip`, shows `upright` (the display transform undone, with numpy)."""
    unmirrored = upright[:, ::-1] if hflip else upright
    return np.ascontiguousarray(np.rot90(unmirrored, k=-rotation // 90))


@pytest.mark.parametrize("rotation", [90, -90, 180, 0])
@pytest.mark.parametrize("hflip", [False, True])
def test_display_matrix_shows_frames_upright(tmp_path, rotation, hflip):
    import av

    up = upright_image()
    stored = stored_for(up, rotation, hflip)
    path = write_video(tmp_path / "phone.mp4", np.stack([stored] * 4), rotation=rotation, hflip=hflip)
    with av.open(str(path)) as c:  # the matrix is really in the file, as ffprobe would show it
        first = next(c.decode(video=0))
        sides = {d.type.name: bytes(d) for d in first.side_data}
        identity = np.array([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30], np.int32).tobytes()
        matrix = np.frombuffer(sides.get("DISPLAYMATRIX", identity), np.int32)  # none: identity
        # PyAV's frame.rotation reads the angle alone: right for a pure turn, but a mirror reads
        # as a half turn more (and 180 as -180), so flips need the matrix itself
        assert (np.linalg.det(matrix.reshape(3, 3)[:2, :2].astype(float)) < 0) == hflip
        if not hflip:
            assert first.rotation % 360 == rotation % 360
    frames, facts = decode(path)
    assert frames.shape == (4, *up.shape)
    assert mad(frames[0], up) < CODEC_ERROR
    for wrong in (np.rot90(up, 2), up[:, ::-1], up[::-1]):  # a turn or mirror too many or too few
        assert mad(frames[0], wrong) > WRONG
    assert (facts["width"], facts["height"]) == (up.shape[1], up.shape[0])
    assert (facts["stored_width"], facts["stored_height"]) == (stored.shape[1], stored.shape[0])
    assert facts["rotation"] == rotation and facts.get("hflip", False) == hflip


@pytest.mark.parametrize("suffix,key", [(".mkv", "rotate"), (".nut", "rotate")])
def test_legacy_rotate_tag_is_clockwise_and_applied(tmp_path, suffix, key):
    """Before display matrices FFmpeg wrote a `rotate` tag in clockwise degrees (an iPhone
    portrait clip: rotate=90); containers that keep tags still carry it."""
    up = upright_image()
    stored = stored_for(up, 90, False)  # a counter-clockwise quarter turn is rotate=270 clockwise
    path = write_video(tmp_path / f"old{suffix}", np.stack([stored] * 3), tags={key: "270"})
    frames, facts = decode(path)
    assert frames.shape[1:] == up.shape and mad(frames[0], up) < CODEC_ERROR
    assert facts["rotation"] == 90 and facts["rotation_source"] == "rotate_tag"


def test_sample_aspect_ratio_2_1_is_stretched_to_square_pixels(tmp_path):
    up = upright_image()
    anamorphic = np.ascontiguousarray(up[:, ::2])  # half the columns, each pixel twice as wide
    path = write_video(tmp_path / "anamorphic.mp4", np.stack([anamorphic] * 3), sar=Fraction(2, 1))
    frames, facts = decode(path)
    assert frames.shape == (3, *up.shape)
    assert mad(frames[0], up) < CODEC_ERROR
    assert facts["sample_aspect_ratio"] == "2:1"
    assert (facts["width"], facts["height"], facts["stored_width"]) == (64, 96, 32)


def test_sample_aspect_ratio_then_turn(tmp_path):
    """FFmpeg's order: square pixels first, then the display matrix turns the frame."""
    up = upright_image()
    square = stored_for(up, -90, False)  # 64 x 96 stored landscape
    path = write_video(tmp_path / "both.mp4", np.stack([np.ascontiguousarray(square[:, ::2])] * 3),
                       rotation=-90, sar=Fraction(2, 1))
    frames, facts = decode(path)
    assert frames.shape[1:] == up.shape and mad(frames[0], up) < CODEC_ERROR
    assert (facts["width"], facts["height"]) == (64, 96)


@pytest.mark.parametrize("how,reason", [
    ("matrix45", "not a multiple of 90"), ("tag45", "not a multiple of 90"),
    ("sar10", "sample aspect ratio 10:1"),
])
def test_transform_that_cannot_be_shown_is_a_media_error(tmp_path, how, reason):
    kwargs = {"matrix45": {"rotation": 45}, "tag45": {"tags": {"rotate": "45"}},
              "sar10": {"sar": Fraction(10, 1)}}[how]
    path = write_video(tmp_path / f"{how}.mkv", np.stack([upright_image()] * 2), **kwargs)
    with pytest.raises(MediaError) as err:
        decode(path)
    assert str(path) in str(err.value) and reason in err.value.reason
    from features.fields import Sources  # what the extraction worker turns into an error row

    with pytest.raises(MediaError, match=reason):
        Sources({"video_path": str(path)}, tracker=lambda: None, wanted=["mel"]).timeline


def test_real_clip_turned_and_squeezed_gives_the_upright_face(tmp_path, real_corpus):
    """A real talking head stored sideways (display matrix) and one stored anamorphic (SAR 2:1)
    give the upright clip's pixels and the face tracker finds the same face in them."""
    import cv2

    from features.face import FaceTracker

    clip = real_corpus / "spk05" / "a.mp4"
    frames = np.stack(list(VideoStream(clip, end_s=0.8)))[:, :, 62:462]  # 20 portrait frames
    upright = write_video(tmp_path / "upright.mp4", frames)
    turned = write_video(tmp_path / "turned.mp4", np.stack([stored_for(f, -90, False) for f in frames]),
                         rotation=-90)
    half = frames.shape[2] // 2
    squeezed = write_video(tmp_path / "squeezed.mp4",
                           np.stack([cv2.resize(f, (half, f.shape[0]), interpolation=cv2.INTER_AREA)
                                     for f in frames]), sar=Fraction(2, 1))
    ref, _ = decode(upright)
    tracker = FaceTracker()
    want = tracker.track(iter(ref))
    assert want.detection_rate > 0.9
    for path, tolerance in ((turned, CODEC_ERROR), (squeezed, 2 * CODEC_ERROR)):
        got_frames, _ = decode(path)
        assert got_frames.shape == ref.shape
        assert mad(got_frames, ref) < tolerance < mad(got_frames, ref[:, ::-1, ::-1])
        got = tracker.track(iter(got_frames))
        assert got.detection_rate > 0.9
        side = np.median(want.boxes[:, 2])
        assert abs(np.median(got.boxes[:, 2]) / side - 1) < 0.1  # same face size, not squashed
        assert np.median(np.abs(got.boxes[:, :2] - want.boxes[:, :2])) < 0.05 * side  # same place


def test_low_resolution_frames_are_shown_upright_too(tmp_path):
    """`DisplayConverter.small` (for shot and face probes): the displayed frame at a small width;
    on square, unturned frames exactly what a plain area-filter reformat makes (the probe's
    scaler before it learned rotation)."""
    import av
    import cv2

    from features.media import DisplayConverter

    up = upright_image(192, 128)
    for rotation, path in ((90, tmp_path / "turned.mp4"), (0, tmp_path / "plain.mp4")):
        write_video(path, np.stack([stored_for(up, rotation, False)] * 2), rotation=rotation or None)
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            frame = next(c.decode(stream))
            got = DisplayConverter(stream, path).small(frame, 32)
            assert got.shape == (48, 32, 3)
            assert mad(got, cv2.resize(up, (32, 48), interpolation=cv2.INTER_AREA)) < CODEC_ERROR
            if rotation == 0:
                plain = frame.reformat(width=32, height=48, format="rgb24", interpolation="AREA")
                assert np.array_equal(got, plain.to_ndarray())


# ---- audio: every sample format PyAV decodes to -------------------------------------------

def stereo_signal(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """(2, n): a tone on the left and a chirp on the right, so a channel or interleaving mix-up
    does not pass (the decoder's mono is their mean)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t),
                     0.4 * np.sin(2 * np.pi * (200 + 500 * t) * t)]).astype(np.float32)


def assert_same_sound(got: np.ndarray, want: np.ndarray) -> None:
    n = min(len(got), len(want))
    got, want = got[:n].astype(np.float64), want[:n].astype(np.float64)
    assert np.corrcoef(got, want)[0, 1] > 0.99
    assert np.sqrt(np.mean(got ** 2)) / np.sqrt(np.mean(want ** 2)) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("codec,suffix,fmt", [
    ("pcm_u8", ".wav", "u8"), ("pcm_s8_planar", ".nut", "u8p"),
    ("pcm_s16le", ".wav", "s16"), ("pcm_s16le_planar", ".nut", "s16p"),
    ("pcm_s32le", ".wav", "s32"), ("pcm_s32le_planar", ".nut", "s32p"),
    ("pcm_s64le", ".nut", "s64"),
    ("pcm_f32le", ".wav", "flt"), ("pcm_f64le", ".wav", "dbl"),
    ("aac", ".m4a", "fltp"),
])
def test_every_sample_format_decodes_to_the_source_sound(tmp_path, codec, suffix, fmt):
    signal = stereo_signal()
    audio, facts = decode_audio(write_pcm(tmp_path / f"a{suffix}", signal, codec))
    assert facts["audio_sample_format"] == fmt and facts["audio_channels"] == 2
    skip = 2048 if codec == "aac" else 0  # the AAC encoder's priming delay
    assert_same_sound(audio[skip:], signal.mean(axis=0)[skip:])


def test_u8_pcm_avi_is_real_sound_through_load_media(tmp_path):
    """The issue's case: an .avi with 8-bit PCM at 8 kHz, mono, behind a video stream."""
    t = np.arange(16000) / 16000
    want = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)  # the same tone at 16 kHz
    path = write_pcm(tmp_path / "old.avi", want[None, ::2], "pcm_u8", rate=8000,
                     frames=np.stack([upright_image()] * 25))
    media = load_media(path)
    assert media.facts["audio_sample_format"] == "u8" and media.facts["audio_coverage"] > 0.98
    assert media.audio.std() > 0.3  # not a constant
    assert_same_sound(media.audio[400:-400], want[400:-400])  # resampler edges left out


@pytest.mark.parametrize("fmt", ["u8", "u8p", "s16", "s16p", "s32", "s32p", "flt", "fltp", "dbl", "dblp"])
@pytest.mark.parametrize("channels", [1, 2])
def test_samples_as_float_reads_every_layout(fmt, channels):
    """The conversion alone, on frames PyAV builds in each format, packed and planar."""
    import av

    rng = np.random.default_rng(0)
    want = rng.uniform(-0.9, 0.9, (channels, 300))
    dtype, zero, scale = {"u8": (np.uint8, 128, 128), "s16": (np.int16, 0, 2 ** 15),
                          "s32": (np.int32, 0, 2 ** 31), "flt": (np.float32, 0, 1),
                          "dbl": (np.float64, 0, 1)}[fmt.rstrip("p")]
    stored = (want * scale + zero).astype(dtype)
    array = stored if fmt.endswith("p") else stored.T.reshape(1, -1)  # packed: interleaved
    frame = av.AudioFrame.from_ndarray(array, format=fmt, layout={1: "mono", 2: "stereo"}[channels])
    got = samples_as_float(frame)
    assert got.shape == (channels, 300) and got.dtype == np.float32
    assert np.abs(got - want).max() < 2.5 / scale + 1e-6
