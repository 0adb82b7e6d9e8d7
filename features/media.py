"""Media decoding onto the shared timebase, streamed: 25 fps RGB frames and 16 kHz mono audio.

Frame-count rule (documented in the README):
    the source video's duration D is the last frame's presentation time minus the first's, plus
    one typical frame duration (the median gap between presentation times);
    n_frames = round(D * 25).
Grid frame t (covering [t/25, (t+1)/25)) is the source frame whose presentation time, measured
from the first video frame, is nearest to t/25. Frames are never re-numbered, so 30 fps and
variable-rate sources keep their timing.

Audio time zero is the first video frame's presentation time; the audio is read from the same
file or from a separate one (whose own start is taken as time zero), downmixed, resampled to
16 kHz and trimmed or zero-padded to exactly 640 * n_frames samples.

Memory: `VideoStream` yields the grid frames one at a time while it decodes (`GridMapper`
decides each grid slot as soon as the next source frame is known), holding only the decoded
frames a pending slot can still pick (one or two at ordinary rates). Nothing keeps a clip's
frames, so a consumer that keeps only small per-frame outputs (crops, landmarks) runs in memory
independent of the source's resolution and nearly independent of its length (MEMORY_BOUND).
Audio is decoded whole: 64 kB per second at 16 kHz float32 (40 MB for 10 minutes).

Nothing silent: a packet that fails to decode is skipped and decoding goes on; the timeline
records how many grid frames a real decoded frame backs (`decoded_frames`) against the frames
the container announces (`expected_frames`), and how much of the timeline real audio covers
(`audio_coverage`); `quality_warnings` turns short figures into warnings for the meta field.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
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
                        image = held[src] = image.to_ndarray(format="rgb24")
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
                    source_frames += 1
                    # Converted at once (holding decoded frames stalls the decoder's buffer pool),
                    # unless the frame lies before a segment's first slot.
                    wanted = self.pixels and rel >= (first - 1) / FPS
                    held[len(mapper.times)] = frame.to_ndarray(format="rgb24") if wanted else frame
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
                "width": stream.codec_context.width,
                "height": stream.codec_context.height,
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


def decode_audio(path: Path, start_s: float = 0.0) -> tuple[np.ndarray, dict]:
    """The first audio stream as 16 kHz mono float32, starting at `start_s` seconds of stream time.

    Packets that fail to decode are skipped; a jump in the timestamps (lost packets) longer than
    AUDIO_GAP_S is filled with silence and listed in facts["audio_gaps_s"] as [at, seconds], so
    the audio after it keeps its time. facts["audio_decoded_s"] is the real audio decoded.
    """
    import librosa

    path = Path(path)
    container = _open(path)
    counters: dict = {}
    with container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks, first_pts, expected_next, gaps, real = [], None, None, [], 0
        try:
            for frame in _decoded(container, stream, counters):
                if frame.pts is not None:
                    at = float(frame.pts * frame.time_base)
                    if first_pts is None:
                        first_pts = at
                    elif expected_next is not None and at - expected_next > AUDIO_GAP_S:
                        missing = int(round((at - expected_next) * rate))
                        gaps.append([round(expected_next - first_pts, 4), round(missing / rate, 4)])
                        chunks.append(np.zeros(missing, np.float32))
                    expected_next = at + frame.samples / rate
                elif expected_next is not None:
                    expected_next += frame.samples / rate
                data = frame.to_ndarray().astype(np.float32)
                if frame.format.is_planar:
                    data = data.mean(axis=0)
                else:  # interleaved: (1, samples * channels)
                    data = data.reshape(-1, len(frame.layout.channels)).mean(axis=1)
                if frame.format.name.startswith("s16"):
                    data /= 32768.0
                elif frame.format.name.startswith("s32"):
                    data /= 2147483648.0
                chunks.append(data)
                real += len(data)
        except Exception as exc:
            if not chunks:
                raise MediaError(path, f"audio stream is truncated or corrupt ({exc})") from exc
        facts = {"audio_codec": stream.codec_context.name, "audio_rate": rate,
                 "audio_channels": stream.codec_context.channels}
    if not chunks:
        raise MediaError(path, "audio stream has no decodable samples")
    audio = np.concatenate(chunks)
    del chunks
    if rate != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
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
    return np.clip(audio, -1.0, 1.0).astype(np.float32), facts


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
