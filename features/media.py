"""Media decoding onto the shared timebase, streamed: 25 fps RGB frames and 16 kHz mono audio.

Frame-count rule (documented in the README):
    the source video's duration D is the last frame's presentation time minus the first's, plus
    one typical frame duration (the median gap between presentation times);
    n_frames = round(D * 25).
Grid frame t (covering [t/25, (t+1)/25)) is the source frame whose presentation time, measured
from the first video frame, is nearest to t/25. Frames are never re-numbered, so 30 fps and
variable-rate sources keep their timing.

Frames are yielded as a player shows them (`Orientation`): non-square pixels are resampled to
square ones (the width scaled by the stream's sample aspect ratio, in the same conversion step as
the RGB one), then the frame is turned and mirrored as the display matrix on the frames (or a
legacy `rotate` tag) says, so a portrait phone clip stored landscape comes out upright before any
tracker sees it. A display transform that is not a right-angle turn or mirror, an aspect ratio out
of MAX_SAR, or a transform that changes mid-stream is a MediaError: never a sideways or squashed
row marked ok. The timeline facts record what was applied (`rotation`, `hflip`,
`sample_aspect_ratio`) and the size as displayed (`width`, `height`; `stored_*` as coded).

Audio time zero is the first video frame's presentation time; the audio is read from the same
file or from a separate one (whose own start is taken as time zero), converted from whatever sample format
the decoder gives (`samples_as_float`: u8, s16, s32, s64, flt, dbl, packed or planar), downmixed,
resampled to 16 kHz and trimmed or zero-padded to exactly 640 * n_frames samples.

Memory: `VideoStream` yields the grid frames one at a time while it decodes (`GridMapper`
decides each grid slot as soon as the next source frame is known), holding only the decoded
frames a pending slot can still pick (one or two at ordinary rates). Nothing keeps a clip's
frames, so a consumer that keeps only small per-frame outputs (crops, landmarks) runs in memory
independent of the source's resolution and nearly independent of its length (MEMORY_BOUND).
Audio is decoded whole but resampled to 16 kHz as it is decoded (`StreamResampler`, the same
samples as resampling the whole signal): 64 kB per second of float32 (115 MB for 30 minutes),
never the source rate's 3x that.

Nothing silent: a packet that fails to decode is skipped and decoding goes on; the timeline
records how many grid frames a real decoded frame backs (`decoded_frames`) against the frames
the container announces (`expected_frames`), and how much of the timeline real audio covers
(`audio_coverage`); `quality_warnings` turns short figures into warnings for the meta field.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
# Peak RSS per extraction worker, measured by benchmarks/memory.py (every CPU field, one
# utterance per task): the bound the README documents and tests/test_memory.py asserts.
MEMORY_BOUND = 2 * 1024 ** 3
# Below these a utterance is flagged: share of the timeline with real audio, frames missing.
MIN_AUDIO_COVERAGE = 0.98
MAX_LOST_FRAMES = 1
SEEK_FROM_FRAMES = 250  # a segment starting this far in seeks to it instead of decoding the way
SEEK_MARGIN_S = 1.0  # seek this long before the segment (the decoder starts at the keyframe before)
AUDIO_GAP_S = 0.01  # a jump in audio timestamps longer than this is filled with silence and recorded
MAX_SAR = 4  # a sample aspect ratio beyond 1:4..4:1 is not a real camera's: refused, not applied
MAX_DISPLAY_SIDE = 8192  # widest frame the SAR stretch may make (memory stays bounded)


def _large_arrays_from_mmap(threshold: int = 1 << 20) -> None:
    """Make glibc serve every allocation over `threshold` bytes (decoded frames) from its own
    mmap, returned to the system when freed. By default glibc moves that threshold up to the frame
    size after the first free, frames then come from the heap, and the small long-lived outputs
    made between them (JPEG crops, landmarks) pin the freed frame holes: a worker holding a few
    frames of look-ahead grew by ~3.6 MB per 1080p frame until the clip ended. Not glibc: no-op."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
    except (OSError, AttributeError):
        pass


_large_arrays_from_mmap()


class MediaError(Exception):
    """A source file that cannot become frames and audio; the message names the file and why."""

    def __init__(self, path: Path | str, reason: str, stage: str = "decode"):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.stage = stage


@dataclass
class Timeline:
    """What a pass over the video stream found: the utterance's frames on the 25 fps grid."""

    n_frames: int  # grid frames of the utterance (a segment: its own frames)
    first: int  # the utterance's first frame on the source's grid (0 unless a segment)
    first_pts: float  # the source's first video frame, seconds of stream time: audio time zero
    facts: dict = field(default_factory=dict)  # stream facts and decode figures for the meta field


@dataclass
class Media:
    """A whole utterance in memory (short clips, tests, previews); extraction streams instead."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB on the 25 fps grid
    audio: np.ndarray  # (640 * n,) float32 in [-1, 1]
    facts: dict = field(default_factory=dict)  # source stream facts for the meta field

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def grid_indices(pts: np.ndarray) -> np.ndarray:
    """Source frame index for each 25 fps grid slot, by nearest presentation time.

    `pts` are seconds from the first frame, sorted ascending. (`GridMapper` is the streaming
    form of the same rule and gives the same indices.)
    """
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    gaps = np.diff(pts)
    typical = float(np.median(gaps)) if len(gaps) else 1.0 / FPS
    duration = float(pts[-1] - pts[0]) + typical
    n = int(round(duration * FPS))
    grid = np.arange(n) / FPS + pts[0]
    right = np.clip(np.searchsorted(pts, grid), 0, len(pts) - 1)
    left = np.clip(right - 1, 0, len(pts) - 1)
    take_left = np.abs(grid - pts[left]) <= np.abs(pts[right] - grid)
    return np.where(take_left, left, right)


class GridMapper:
    """`grid_indices` one source frame at a time: `push` each frame's time (seconds from the first
    frame, non-decreasing) and get the grid slots that are settled; `finish` settles the rest.

    Slot t is settled once a source frame at or after t/25 has arrived (its two neighbours are
    then known) and t is below round(25 * latest time), a lower bound of the final frame count,
    so no slot is ever handed out that the final count would drop.
    """

    def __init__(self):
        self.times: list[float] = []
        self.next_slot = 0
        self.n_frames: int | None = None

    def _pick(self, t: int) -> int:
        grid = t / FPS
        right = min(bisect.bisect_left(self.times, grid), len(self.times) - 1)
        left = max(right - 1, 0)
        return left if abs(grid - self.times[left]) <= abs(self.times[right] - grid) else right

    def push(self, time: float) -> list[tuple[int, int]]:
        """Add the next source frame; returns settled (grid slot, source index) pairs."""
        if self.times and time < self.times[-1]:
            raise ValueError("presentation times must not decrease")
        self.times.append(time)
        bound = int(round(time * FPS))
        out = []
        while self.next_slot < bound and self.next_slot / FPS <= time:
            out.append((self.next_slot, self._pick(self.next_slot)))
            self.next_slot += 1
        return out

    def oldest_needed(self) -> int:
        """The first source index a slot still to come may pick (older frames can be dropped)."""
        if not self.times:
            return 0
        return max(bisect.bisect_left(self.times, self.next_slot / FPS) - 1, 0)

    def typical_gap(self) -> float:
        gaps = np.diff(np.asarray(self.times))
        return float(np.median(gaps)) if len(gaps) else 1.0 / FPS

    def finish(self) -> list[tuple[int, int]]:
        """No more frames: the final frame count and the slots left to settle."""
        if not self.times:
            self.n_frames = 0
            return []
        duration = float(self.times[-1]) + self.typical_gap()  # times count from the first frame
        self.n_frames = int(round(duration * FPS))
        out = [(t, self._pick(t)) for t in range(self.next_slot, self.n_frames)]
        self.next_slot = max(self.next_slot, self.n_frames)
        return out


def _quarter_turn_matrix(turns: int, hflip: bool) -> np.ndarray:
    """The 2x2 map of pixel coordinates (x right, y down) that `turns` counter-clockwise quarter
    turns followed by a left-right mirror make; in FFmpeg's display-matrix layout [[a, c], [b, d]]."""
    quarter = np.array([[0, 1], [-1, 0]])  # x' = y, y' = -x: a counter-clockwise turn on screen
    m = np.linalg.matrix_power(quarter, turns % 4)
    return np.diag([-1, 1]) @ m if hflip else m


@dataclass(frozen=True)
class Orientation:
    """How a stored frame becomes the frame a player shows: stretched to square pixels by the
    sample aspect ratio, then turned `turns` quarter turns counter-clockwise and, if `hflip`,
    mirrored left-right (FFmpeg's order: the display matrix acts on square pixels)."""

    turns: int = 0  # counter-clockwise quarter turns (PyAV's frame.rotation / 90)
    hflip: bool = False
    sar: Fraction = Fraction(1)  # sample aspect ratio: width of a stored pixel over its height
    source: str = "none"  # where the turn came from: "display_matrix", "rotate_tag" or "none"

    @property
    def rotation(self) -> int:
        """The turn in degrees counter-clockwise in -90..180, as PyAV's frame.rotation and ffprobe
        print it (an iPhone portrait clip: -90, i.e. a clockwise quarter turn)."""
        return {0: 0, 1: 90, 2: 180, 3: -90}[self.turns % 4]

    def stretched_width(self, width: int) -> int:
        """The stored width in square pixels (the height is kept)."""
        return max(1, int(round(width * self.sar)))

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) as displayed, for a frame stored `width` x `height`."""
        w = self.stretched_width(width)
        return (height, w) if self.turns % 2 else (w, height)

    def turn(self, rgb: np.ndarray) -> np.ndarray:
        """Turn and mirror a square-pixel (H, W, 3) frame (OpenCV: a few ms for a 1080p turn)."""
        import cv2

        code = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}
        if self.turns % 4:
            rgb = cv2.rotate(rgb, code[self.turns % 4])
        return cv2.flip(rgb, 1) if self.hflip else rgb

    def facts(self, width: int, height: int) -> dict:
        display_w, display_h = self.display_size(width, height)
        out = {"width": display_w, "height": display_h, "stored_width": width, "stored_height": height,
               "rotation": self.rotation,
               "sample_aspect_ratio": f"{self.sar.numerator}:{self.sar.denominator}"}
        if self.hflip:
            out["hflip"] = True
        if self.source != "none":
            out["rotation_source"] = self.source
        return out


def display_matrix(frame) -> bytes | None:
    """The raw DISPLAYMATRIX side data of a decoded frame (FFmpeg copies the container's matrix,
    e.g. an mp4 tkhd matrix, onto every frame), or None."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            return bytes(data)
    return None


def matrix_turns(raw: bytes, path: Path | str) -> tuple[int, bool]:
    """(counter-clockwise quarter turns, hflip) of an FFmpeg display matrix (9 int32: a b u c d v
    x y w, 16.16 fixed point except u v w at 2.30). Translation and a uniform scale are ignored, as
    players do; anything other than a right-angle turn or mirror cannot be shown on a pixel grid."""
    m = np.frombuffer(raw, dtype=np.int32, count=9).astype(np.float64)
    a, b, u, c, d, v = m[0] / 65536, m[1] / 65536, m[2] / 2 ** 30, m[3] / 65536, m[4] / 65536, m[5] / 2 ** 30
    linear = np.array([[a, c], [b, d]])
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    if u or v or scale == 0:
        raise MediaError(path, f"display matrix {m.astype(int).tolist()} is singular or has perspective: "
                               "cannot show the frames as a player does")
    unit = linear / scale
    for turns in range(4):
        for hflip in (False, True):
            if np.allclose(unit, _quarter_turn_matrix(turns, hflip), atol=1e-3):
                return turns, hflip
    angle = float(np.degrees(np.arctan2(-b, a)))
    raise MediaError(path, f"display matrix turns the frames by {angle:.1f} degrees (or shears them), "
                           "not a multiple of 90: cannot show them on a pixel grid as a player does")


def rotate_tag_turns(metadata: dict, path: Path | str) -> int | None:
    """Counter-clockwise quarter turns of a legacy `rotate` stream tag (clockwise degrees, as
    FFmpeg wrote it before display matrices: 90 = a clockwise quarter turn), or None without one."""
    tag = next((v for k, v in metadata.items() if k.lower() == "rotate"), None)
    if tag is None:
        return None
    try:
        degrees = float(tag)
    except ValueError:
        raise MediaError(path, f"rotate tag {tag!r} is not a number of degrees") from None
    if degrees % 90:
        raise MediaError(path, f"rotate tag {tag!r} is not a multiple of 90 degrees: "
                               "cannot show the frames on a pixel grid as a player does")
    return int(-degrees // 90) % 4


def stream_sar(stream, path: Path | str) -> Fraction:
    """The stream's sample aspect ratio (container or codec, as FFmpeg guesses it; 1 when unset)."""
    sar = stream.sample_aspect_ratio
    if not sar or sar <= 0:
        return Fraction(1)
    sar = Fraction(sar)
    if not Fraction(1, MAX_SAR) <= sar <= MAX_SAR:
        raise MediaError(path, f"sample aspect ratio {sar.numerator}:{sar.denominator} is outside "
                               f"1:{MAX_SAR}..{MAX_SAR}:1: cannot show the frames as a player does")
    return sar


def orientation_of(frame, stream, path: Path | str) -> Orientation:
    """How frames like `frame` (the stream's first) are shown: its display matrix, else the
    stream's legacy rotate tag, and the stream's sample aspect ratio."""
    sar = stream_sar(stream, path)
    raw = display_matrix(frame)
    if raw is not None:
        turns, hflip = matrix_turns(raw, path)
        source = "display_matrix"
    else:
        turns, hflip = rotate_tag_turns(dict(stream.metadata), path) or 0, False
        source = "rotate_tag" if turns else "none"
    orientation = Orientation(turns=turns, hflip=hflip, sar=sar,
                              source=source if turns or hflip else "none")
    if orientation.stretched_width(frame.width) > MAX_DISPLAY_SIDE:
        raise MediaError(path, f"sample aspect ratio {sar} makes the frames "
                               f"{orientation.stretched_width(frame.width)} px wide "
                               f"(over {MAX_DISPLAY_SIDE}): cannot show them within the memory bound")
    return orientation


class DisplayConverter:
    """Decoded frames to (H, W, 3) uint8 RGB as displayed: one scaler (kept: building one per frame
    halves the speed) makes RGB and square pixels in one step, then the turn. The orientation is
    fixed by the first frame; a later frame whose display matrix differs is a MediaError."""

    def __init__(self, stream, path: Path | str):
        from av.video.reformatter import VideoReformatter

        self.stream, self.path = stream, path
        self.orientation: Orientation | None = None
        self._matrix: bytes | None = None
        self._scaler = VideoReformatter()
        self._small_scalers: dict[tuple[int, int, str], VideoReformatter] = {}

    def check(self, frame) -> Orientation:
        """Fix the orientation from the first frame; refuse a change on a later one. Later frames
        are compared by `frame.rotation` (read from the display matrix in C; 0 without one), not
        by `frame.side_data`: in PyAV 18 that ties each frame into a reference cycle only a full
        garbage collection frees (measured: ~300 MB of 720p frames held after 3,000 frames, and
        growing ~5 KB a frame; a 30-minute 1080p utterance held GBs)."""
        if self.orientation is None:
            self.orientation = orientation_of(frame, self.stream, self.path)
            self._matrix, self._rotation = display_matrix(frame), frame.rotation
        elif frame.rotation not in (self._rotation, 0):
            raise MediaError(self.path, "the display matrix changes mid-stream (at "
                                        f"{float(frame.pts * frame.time_base):.3f} s): frames of one "
                                        "utterance cannot be shown at one size")
        return self.orientation

    def rgb(self, frame) -> np.ndarray:
        o = self.check(frame)
        width = o.stretched_width(frame.width)
        if width == frame.width:
            rgb = self._scaler.reformat(frame, format="rgb24").to_ndarray()
        else:
            rgb = self._scaler.reformat(frame, width=width, height=frame.height, format="rgb24",
                                        interpolation="BICUBIC").to_ndarray()
        return o.turn(rgb) if o.turns or o.hflip else rgb

    def small(self, frame, width: int, fmt: str = "rgb24") -> np.ndarray:
        """The frame as displayed, scaled (area filter) to `width` pixels wide with the height in
        proportion and even, for low-resolution passes (shot and face probes) that must see what a
        player shows too. Scaled before the turn, so the turn moves only the small frame."""
        from av.video.reformatter import VideoReformatter

        o = self.check(frame)
        display_w, display_h = o.display_size(frame.width, frame.height)
        height = max(2, int(round(display_h * width / display_w / 2)) * 2)
        w, h = (height, width) if o.turns % 2 else (width, height)
        scaler = self._small_scalers.setdefault((w, h, fmt), VideoReformatter())
        small = scaler.reformat(frame, width=w, height=h, format=fmt, interpolation="AREA").to_ndarray()
        return o.turn(small) if o.turns or o.hflip else small


def _open(path: Path):
    import av

    if not path.exists():
        raise MediaError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")
    try:
        return av.open(str(path))
    except Exception as exc:  # PyAV raises many error types for unreadable input
        raise MediaError(path, f"unreadable or not a media file ({type(exc).__name__}: {exc})") from exc


def _decoded(container, stream, counters: dict) -> Iterator:
    """Every frame of `stream`, packet by packet: a packet that fails to decode is skipped and
    counted (`decode_errors`, `last_decode_error`), and a demuxer failure ends the stream as
    truncated (`demux_error`), so a damaged middle costs only its own frames."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.FFmpegError, OSError) as exc:
            counters["demux_error"] = str(exc)
            return
        try:
            frames = packet.decode()
        except (av.error.FFmpegError, OSError) as exc:
            counters["decode_errors"] = counters.get("decode_errors", 0) + 1
            counters["last_decode_error"] = str(exc)
            continue
        yield from frames


def _announced_seconds(container, stream) -> float | None:
    """The video stream's duration as the container announces it (None when it does not)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


class VideoStream:
    """One pass over a video's frames on the 25 fps grid, in order, without keeping them.

    Iterating yields each grid frame of the utterance ([first, last) for a segment) as (H, W, 3)
    uint8 RGB; a source frame used by several grid slots (a source below 25 fps) is converted once
    and yielded again as the same array. `pixels=False` yields None instead and converts nothing
    (a pass that only needs the timeline). After the iteration `timeline` holds the frame count
    and the decode figures. Decoding stops as soon as a segment's last frame is settled.
    """

    def __init__(self, path: Path | str, start_s: float | None = None, end_s: float | None = None,
                 pixels: bool = True):
        self.path, self.start_s, self.end_s, self.pixels = Path(path), start_s, end_s, pixels
        self.timeline: Timeline | None = None

    def __iter__(self) -> Iterator[np.ndarray | None]:
        first = 0 if self.start_s is None else max(0, int(round(self.start_s * FPS)))
        if first >= SEEK_FROM_FRAMES:  # a segment deep in a long source: seek, don't decode the way
            try:
                yield from self._pass(first, seek=True)
                return
            except _SeekMissed:
                pass
        yield from self._pass(first, seek=False)

    def _pass(self, first: int, seek: bool) -> Iterator[np.ndarray | None]:
        path = self.path
        last_wanted = None if self.end_s is None else int(round(self.end_s * FPS))
        mapper, counters = GridMapper(), {}
        held: dict[int, object] = {}  # source index -> RGB frame (or decoded frame) a slot may pick
        distances: list[float] = []  # per yielded slot: |source time - grid time|
        out_of_order, first_pts, ended_early = 0, None, False
        container = _open(path)
        with container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            display = DisplayConverter(stream, path)
            announced = _announced_seconds(container, stream)
            source_frames = 0
            if seek:
                first_pts = _first_pts(container, stream)
                target = first_pts + first / FPS - SEEK_MARGIN_S
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
                mapper.next_slot = first  # earlier slots are not this segment's

            def emit(pairs):
                for slot, src in pairs:
                    if slot < first or (last_wanted is not None and slot >= last_wanted):
                        continue
                    distances.append(abs(mapper.times[src] - slot / FPS))
                    image = held[src]
                    if self.pixels and not isinstance(image, np.ndarray):  # skipped at decode time
                        image = held[src] = display.rgb(image)
                    yield image

            try:
                for frame in _decoded(container, stream, counters):
                    if frame.pts is None:
                        continue
                    pts = float(frame.pts * frame.time_base)
                    if first_pts is None:
                        first_pts = pts
                    rel = pts - first_pts
                    if seek and not mapper.times and rel > first / FPS:
                        raise _SeekMissed()  # landed past the segment's start: decode from the top
                    if mapper.times and rel < mapper.times[-1]:
                        out_of_order += 1  # the decoder handed a frame back in time: dropped
                        continue
                    display.check(frame)
                    source_frames += 1
                    # Converted at once (holding decoded frames stalls the decoder's buffer pool),
                    # unless the frame lies before a segment's first slot.
                    wanted = self.pixels and rel >= (first - 1) / FPS
                    held[len(mapper.times)] = display.rgb(frame) if wanted else frame
                    yield from emit(mapper.push(rel))
                    for old in [i for i in held if i < mapper.oldest_needed()]:
                        del held[old]
                    if last_wanted is not None and mapper.next_slot >= last_wanted:
                        ended_early = True
                        break
            except Exception as exc:
                if not isinstance(exc, MediaError) and source_frames == 0:
                    raise MediaError(path, f"video stream is truncated or corrupt ({exc})") from exc
                raise
            if source_frames == 0:
                reason = counters.get("last_decode_error") or counters.get("demux_error")
                raise MediaError(path, "video stream has zero decodable frames"
                                 + (f" ({reason})" if reason else ""))
            if not ended_early:
                yield from emit(mapper.finish())
            facts = {
                "video_codec": stream.codec_context.name,
                **display.orientation.facts(stream.codec_context.width, stream.codec_context.height),
                "source_fps": float(stream.average_rate) if stream.average_rate else None,
                "source_frames": source_frames,
            }
        if ended_early:
            n_source = None  # the source runs on past the segment: its full count is not needed
            last = last_wanted
        else:
            n_source = mapper.n_frames
            if n_source == 0:
                raise MediaError(path, "zero frames on the 25 fps grid")
            last = n_source if last_wanted is None else min(n_source, last_wanted)
        if last <= first:
            raise MediaError(path, f"segment [{self.start_s}, {self.end_s}) s holds no frames")
        n = last - first
        # a grid frame is backed by a decoded frame when one lies within a typical frame interval
        tolerance = max(mapper.typical_gap(), 1.0 / FPS) + 1e-6
        expected_total = None if announced is None else int(round(announced * FPS))
        if last_wanted is not None:
            expected = last_wanted - first
        elif expected_total is not None:
            expected = max(expected_total - first, 0)
        else:
            expected = n
        facts.update({
            "first_pts": first_pts,
            "source_duration_s": round(n_source / FPS, 4) if n_source is not None
            else (round(announced, 4) if announced is not None else None),
            "n_frames": n, "segment_frames": [first, last],
            "expected_frames": expected,
            "decoded_frames": int(sum(d <= tolerance for d in distances)),
            "decode_errors": counters.get("decode_errors", 0),
        })
        if "last_decode_error" in counters:
            facts["last_decode_error"] = counters["last_decode_error"]
        if "demux_error" in counters:
            facts["video_truncated"] = counters["demux_error"]
        if out_of_order:
            facts["out_of_order_frames"] = out_of_order
        self.timeline = Timeline(n_frames=n, first=first, first_pts=first_pts, facts=facts)


class _SeekMissed(Exception):
    """A seek landed after the first frame a segment needs."""


def _first_pts(container, stream) -> float:
    """The presentation time of the stream's first frame (decodes one frame)."""
    for frame in _decoded(container, stream, {}):
        if frame.pts is not None:
            return float(frame.pts * frame.time_base)
    raise MediaError(container.name, "video stream has zero decodable frames")


def read_timeline(path: Path | str, start_s: float | None = None, end_s: float | None = None) -> Timeline:
    """The timeline of a video without converting any frame (decoding only)."""
    stream = VideoStream(path, start_s, end_s, pixels=False)
    for _ in stream:
        pass
    return stream.timeline


# Sample format (packed name) -> (stored dtype, the value of silence, full scale): x -> (x - zero) / scale.
SAMPLE_FORMATS = {
    "u8": (np.uint8, 128.0, 128.0),  # 8-bit PCM is unsigned, silence at 128
    "s16": (np.int16, 0.0, 2.0 ** 15),
    "s32": (np.int32, 0.0, 2.0 ** 31),
    "s64": (np.int64, 0.0, 2.0 ** 63),
    "flt": (np.float32, 0.0, 1.0),
    "dbl": (np.float64, 0.0, 1.0),
}


def samples_as_float(frame, path: Path | str = "") -> np.ndarray:
    """An audio frame as (channels, samples) float32 with full scale at 1, from any PCM sample
    format FFmpeg decodes to, packed (interleaved, one plane) or planar (a plane per channel).
    Read from the planes directly: PyAV's to_ndarray has no s64, and its dtype alone says nothing
    of u8's offset."""
    name = frame.format.packed.name
    if name not in SAMPLE_FORMATS:
        raise MediaError(path, f"audio sample format {frame.format.name!r} is not one this decoder "
                               f"converts ({', '.join(SAMPLE_FORMATS)})")
    dtype, zero, scale = SAMPLE_FORMATS[name]
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        data = np.stack([np.frombuffer(plane, dtype=dtype, count=frame.samples) for plane in frame.planes])
    else:
        data = np.frombuffer(frame.planes[0], dtype=dtype, count=frame.samples * channels)
        data = data.reshape(frame.samples, channels).T
    if zero == 0.0 and scale == 1.0:
        return data.astype(np.float32)
    return ((data.astype(np.float64) - zero) / scale).astype(np.float32)


def decode_audio(path: Path, start_s: float = 0.0) -> tuple[np.ndarray, dict]:
    """The first audio stream as 16 kHz mono float32, starting at `start_s` seconds of stream time.

    Packets that fail to decode are skipped; a jump in the timestamps (lost packets) longer than
    AUDIO_GAP_S is filled with silence and listed in facts["audio_gaps_s"] as [at, seconds], so
    the audio after it keeps its time. facts["audio_decoded_s"] is the real audio decoded.
    """
    path = Path(path)
    container = _open(path)
    counters: dict = {}
    with container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks, first_pts, expected_next, gaps, real = [], None, None, [], 0
        to_16k = StreamResampler(rate)  # resampled as decoded: only 16 kHz samples are held
        sample_format = None
        try:
            for frame in _decoded(container, stream, counters):
                if frame.pts is not None:
                    at = float(frame.pts * frame.time_base)
                    if first_pts is None:
                        first_pts = at
                    elif expected_next is not None and at - expected_next > AUDIO_GAP_S:
                        missing = int(round((at - expected_next) * rate))
                        gaps.append([round(expected_next - first_pts, 4), round(missing / rate, 4)])
                        chunks.append(to_16k.add(np.zeros(missing, np.float32)))
                    expected_next = at + frame.samples / rate
                elif expected_next is not None:
                    expected_next += frame.samples / rate
                sample_format = frame.format.name
                data = samples_as_float(frame, path).mean(axis=0)
                chunks.append(to_16k.add(data))
                real += len(data)
        except MediaError:
            raise
        except Exception as exc:
            if not chunks:
                raise MediaError(path, f"audio stream is truncated or corrupt ({exc})") from exc
        facts = {"audio_codec": stream.codec_context.name, "audio_rate": rate,
                 "audio_channels": stream.codec_context.channels, "audio_sample_format": sample_format}
    if not chunks:
        raise MediaError(path, "audio stream has no decodable samples")
    chunks.append(to_16k.flush())
    audio = to_16k.fit(np.concatenate(chunks))
    del chunks
    # Align to the requested time zero: positive offset means the audio starts late -> pad.
    offset = int(round(((first_pts or 0.0) - start_s) * SAMPLE_RATE))
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    facts["audio_offset_samples"] = offset
    facts["audio_decoded_s"] = round(real / rate, 4)
    if gaps:
        facts["audio_gaps_s"] = gaps
    if counters.get("decode_errors"):
        facts["audio_decode_errors"] = counters["decode_errors"]
    if "demux_error" in counters:
        facts["audio_truncated"] = counters["demux_error"]
    return np.clip(audio, -1.0, 1.0, out=audio if audio.flags.writeable else None).astype(np.float32, copy=False), facts


class StreamResampler:
    """Source-rate mono samples in, 16 kHz out as they come: soxr's stream at the quality
    `librosa.resample(res_type="soxr_hq")` uses, which gives the same samples as that one-shot
    call on the whole signal (tested), so a long source at 48 kHz is never held at 48 kHz."""

    def __init__(self, rate: int):
        import soxr

        self.rate, self.n_in = rate, 0
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
            rate, SAMPLE_RATE, 1, dtype="float32", quality="soxr_hq")

    def add(self, samples: np.ndarray) -> np.ndarray:
        self.n_in += len(samples)
        samples = samples.astype(np.float32, copy=False)
        return samples if self.stream is None else self.stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        if self.stream is None:
            return np.zeros(0, np.float32)
        return self.stream.resample_chunk(np.zeros(0, np.float32), last=True)

    def fit(self, audio: np.ndarray) -> np.ndarray:
        """Trimmed or padded to librosa.resample's length, ceil(n * 16000 / rate)."""
        if self.stream is None:
            return audio
        n = int(np.ceil(self.n_in * (float(SAMPLE_RATE) / self.rate)))
        return audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))


def audio_coverage(facts: dict, first: int, n_frames: int) -> float:
    """Share (0..1) of grid frames [first, first + n_frames) that real decoded audio covers:
    not the silence before a late start, after an early end, or in a filled gap."""
    lo, hi = first * SAMPLES_PER_FRAME, (first + n_frames) * SAMPLES_PER_FRAME
    if hi <= lo:
        return 0.0
    start = facts.get("audio_offset_samples", 0)
    spans = []  # real audio on the timeline, in 16 kHz samples
    cursor = start
    for at, seconds in facts.get("audio_gaps_s", []):
        gap_start = start + int(round(at * SAMPLE_RATE))
        spans.append((cursor, gap_start))
        cursor = gap_start + int(round(seconds * SAMPLE_RATE))
    spans.append((cursor, start + int(round(facts.get("audio_decoded_s", 0.0) * SAMPLE_RATE))
                   + sum(int(round(s * SAMPLE_RATE)) for _, s in facts.get("audio_gaps_s", []))))
    covered = sum(max(0, min(b, hi) - max(a, lo)) for a, b in spans)
    return round(covered / (hi - lo), 4)


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim or zero-pad to exactly n_samples."""
    if len(audio) >= n_samples:
        return audio[:n_samples]
    return np.pad(audio, (0, n_samples - len(audio)))


def load_audio(video_path: Path | str, audio_path: Path | str | None, timeline: Timeline
               ) -> tuple[np.ndarray, dict]:
    """The utterance's audio on its timeline: 640 * n_frames samples, with coverage facts."""
    if audio_path is None:
        audio, facts = decode_audio(Path(video_path), start_s=timeline.first_pts)
    else:
        audio, facts = decode_audio(Path(audio_path), start_s=0.0)
    last = timeline.first + timeline.n_frames
    audio = fit_length(audio, last * SAMPLES_PER_FRAME)[timeline.first * SAMPLES_PER_FRAME:]
    facts["audio_coverage"] = audio_coverage(facts, timeline.first, timeline.n_frames)
    return audio, facts


def quality_warnings(facts: dict) -> list[str]:
    """Plain-language warnings for what the source did not give (the meta field's `warnings`)."""
    out = []
    n, expected, decoded = facts.get("n_frames"), facts.get("expected_frames"), facts.get("decoded_frames")
    if n is not None and expected is not None and n < expected - MAX_LOST_FRAMES:
        out.append(f"video truncated: {n} of {expected} expected frames on the 25 fps grid")
    if n is not None and decoded is not None and decoded < n - MAX_LOST_FRAMES:
        out.append(f"video damaged: {n - decoded} of {n} frames have no decoded source frame "
                   f"(filled with the nearest decoded one)")
    if facts.get("decode_errors"):
        out.append(f"video: {facts['decode_errors']} packets failed to decode and were skipped "
                   f"({facts.get('last_decode_error', '')})")
    if facts.get("out_of_order_frames"):
        out.append(f"video: {facts['out_of_order_frames']} frames out of presentation order dropped")
    coverage = facts.get("audio_coverage")
    if coverage is not None and coverage < MIN_AUDIO_COVERAGE:
        out.append(f"audio covers {coverage:.0%} of the timeline (the rest is silence padding)")
    if facts.get("audio_gaps_s"):
        out.append(f"audio: {len(facts['audio_gaps_s'])} gaps in the timestamps filled with silence")
    if facts.get("audio_decode_errors"):
        out.append(f"audio: {facts['audio_decode_errors']} packets failed to decode and were skipped")
    return out


def load_media(video_path: Path | str, audio_path: Path | str | None = None,
               start_s: float | None = None, end_s: float | None = None) -> Media:
    """Decode one utterance onto the shared timebase into memory; raises MediaError naming the file.

    For short clips (tests, previews): extraction streams with `VideoStream` instead. `start_s` /
    `end_s` (seconds from the first video frame) cut a segment out of a long source, e.g. a
    pretrain utterance split at word boundaries; the cut is made on the 25 fps grid.
    """
    stream = VideoStream(video_path, start_s, end_s)
    frames = np.stack(list(stream))
    timeline = stream.timeline
    audio, afacts = load_audio(video_path, audio_path, timeline)
    facts = {**timeline.facts, **afacts}
    return Media(frames=frames, audio=audio, facts=facts)
