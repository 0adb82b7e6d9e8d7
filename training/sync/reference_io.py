"""syncnet_python's input path, reproduced in process: what its ffmpeg commands and readers give.

`SyncNetInstance.evaluate` does not read the video itself: it runs

    ffmpeg -y -i VIDEO -threads 1 -f image2 DIR/%06d.jpg            (run_pipeline: -qscale:v 2)
    ffmpeg -y -i VIDEO -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000 DIR/audio.wav

and reads the JPEGs back with cv2.imread and the WAV with scipy's wavfile. Both steps change the
numbers: the JPEG round trip is lossy, the audio starts at the file's start (not at the first video
frame), and the frames are the stream's own frames treated as 25 fps. This module gives the same
arrays without a subprocess or files, through the libraries ffmpeg itself uses (PyAV links
libavcodec, libavfilter, libswscale and libswresample):

- frames: ffmpeg's constant-frame-rate selection for image2 output (`vsync cfr` at the stream's
  guessed rate, timestamps from the file's start, so a video that starts late repeats its first
  frame), conversion to yuvj420p by swscale (bicubic, as ffmpeg's auto-inserted scaler), one mjpeg
  encoder for the whole clip with ffmpeg's defaults (200 kb/s rate control, qmin 2, qmax 31) or a
  fixed `qscale`, then OpenCV's JPEG decoder (cv2.imdecode, the decoder cv2.imread uses).
- audio: ffmpeg's audio filter chain for those options, built as a libavfilter graph:
  `aresample=async=1:first_pts=0` (pad or trim to the file's start), then `aformat` to s16, 16 kHz
  mono (libswresample's downmix and resampler), as int16 values.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from features.media import MediaError

SAMPLE_RATE = 16000
DEFAULT_BIT_RATE = 200_000  # libavcodec's default "b", which ffmpeg's image2 output keeps


def _open(path: Path | str):
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file does not exist")
    try:
        return av.open(str(path))
    except Exception as exc:
        raise MediaError(path, f"unreadable or not a media file ({type(exc).__name__}: {exc})") from exc


def _file_start(container) -> Fraction:
    """The container's start time (s): ffmpeg's input ts_offset is minus this (no -copyts)."""
    return Fraction(container.start_time or 0, 1_000_000)


def cfr_select(frames: Iterable[tuple[float, float, object]], rate: Fraction) -> Iterator[object]:
    """ffmpeg 5.1's `vsync cfr` (fftools do_video_out) for image2 output at `rate`: `frames` are
    (time from the file's start in s, duration in s or 0, frame); yields the frames written, in
    order. A frame behind the output clock by more than 1.1 frames is dropped; a gap of more than
    1.1 frames is filled, the first part by the previous frame; the first frame of a video that
    starts after the file's start is repeated up to its own time (there is no previous frame)."""
    sync = 0  # ost->sync_opts: index of the next output frame
    last = None
    for t, dur, frame in frames:
        ipts = t * float(rate)
        duration = float(np.rint(dur * float(rate))) if dur and np.rint(dur * float(rate)) > 0 else 1.0
        delta0 = ipts - sync
        delta = delta0 + duration
        if delta0 < 0 < delta:  # clipped to the output clock
            delta0 = 0.0
        n, n0 = 1, 0
        if delta < -1.1:
            n = 0
        elif delta > 1.1:
            n = int(np.rint(delta))
            if delta0 > 1.1:
                n0 = int(np.rint(delta0 - 0.6))
        for i in range(n):
            yield last if i < min(n0, n) and last is not None else frame
        sync += n
        last = frame


def vfr_select(frames: Iterable[tuple[float, float, object]], rate: Fraction) -> Iterator[tuple[int, object]]:
    """ffmpeg 5.1's video sync for avi output at `-r rate` (fftools forces `vsync vfr` for avi):
    `frames` as for cfr_select; yields (output pts in 1 / rate, frame). A frame never repeats; one
    more than 0.6 frames behind the output clock is dropped, one ahead of it keeps its own
    (rounded) time, so the avi muxer leaves a gap (empty chunks) that a later cfr reader fills."""
    sync = 0
    for t, dur, frame in frames:
        ipts = t * float(rate)
        duration = float(np.rint(dur * float(rate))) if dur and np.rint(dur * float(rate)) > 0 else 1.0
        delta0 = ipts - sync
        delta = delta0 + duration
        if delta0 < 0 < delta:  # clipped to the output clock (delta is not recomputed)
            ipts = float(sync)
        if delta <= -0.6:
            continue
        if delta > 0.6:
            sync = int(np.rint(ipts))
        yield sync, frame
        sync += 1


def _decoded_frames(container, stream) -> Iterator[tuple[float, float, object]]:
    """(time from the file's start, duration, frame) of each decoded frame."""
    start = _file_start(container)
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        yield (float(frame.pts * frame.time_base - start),
               float((frame.duration or 0) * frame.time_base), frame)


def to_yuvj420p(frame):
    """A decoded frame as the yuvj420p picture ffmpeg 5.1's swscale gives the mjpeg encoder.

    For yuv420p input (limited range) that is swscale's unscaled-size path: 15-bit intermediates
    (v << 7), its integer range expansion (lumRangeToJpeg / chrRangeToJpeg), rounding by 64 >> 7.
    Newer libswscale builds (the one PyAV bundles) round the expansion differently (18% of samples
    differ by 1), so it is done here in numpy; other formats go through swscale (bicubic)."""
    import av

    if frame.format.name != "yuv420p":
        return frame.reformat(format="yuvj420p", interpolation="BICUBIC")
    h = frame.height
    planes = frame.to_ndarray()  # (h * 3 / 2, w) uint8: Y, then U and V
    out = np.concatenate([_LUMA_TO_JPEG[planes[:h]], _CHROMA_TO_JPEG[planes[h:]]])
    return av.VideoFrame.from_ndarray(out, format="yuvj420p")


def _range_lut(clip: int, mul: int, sub: int, shift: int) -> np.ndarray:
    """swscale's integer range expansion of one 8-bit sample value (an elementwise map: a table)."""
    v = np.arange(256, dtype=np.int64) << 7
    return np.clip(((np.minimum(v, clip) * mul - sub) >> shift) + 64 >> 7, 0, 255).astype(np.uint8)


_LUMA_TO_JPEG = _range_lut(30189, 19077, 39057361, 14)  # lumRangeToJpeg
_CHROMA_TO_JPEG = _range_lut(30775, 4663, 9289992, 12)  # chrRangeToJpeg


def _imdecode(packet) -> np.ndarray:
    """OpenCV's JPEG decoder, as cv2.imread of the written file (BGR)."""
    import cv2

    return cv2.imdecode(np.frombuffer(bytes(packet), np.uint8), cv2.IMREAD_COLOR)


def reference_frames(path: Path | str, qscale: int | None = None,
                     max_frames: int | None = None) -> Iterator[np.ndarray]:
    """BGR uint8 (H, W, 3) frames as `ffmpeg -i path -threads 1 [-qscale:v Q] -f image2 %06d.jpg`
    and cv2.imread give them (see the module doc); `max_frames` stops after that many."""
    import av

    container = _open(path)
    try:
        if not container.streams.video:
            raise MediaError(Path(path), "no video stream")
        stream = container.streams.video[0]
        rate = Fraction(stream.guessed_rate or 25)
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height = stream.codec_context.width, stream.codec_context.height
        enc.pix_fmt = "yuvj420p"
        enc.time_base, enc.framerate = 1 / rate, rate
        enc.bit_rate = DEFAULT_BIT_RATE
        enc.thread_count = 1
        if qscale is not None:
            enc.qscale = qscale
        written = 0
        for frame in cfr_select(_decoded_frames(container, stream), rate):
            if max_frames is not None and written >= max_frames:
                break
            pic = to_yuvj420p(frame)
            pic.pts, pic.time_base = written, enc.time_base
            for packet in enc.encode(pic):
                yield _imdecode(packet)
            written += 1
        for packet in enc.encode(None):
            yield _imdecode(packet)
    finally:
        container.close()


def async_graph(sample_format: str, sample_rate: int, layout: str, time_base, aformat: str):
    """ffmpeg's `-async 1` audio path as a filter graph: abuffer -> aresample async=1 (first pts 0)
    -> aformat(`aformat`) -> sink. Returns (graph, source, sink)."""
    from av.filter import Graph

    graph = Graph()
    src = graph.add_abuffer(format=sample_format, sample_rate=sample_rate, layout=layout, time_base=time_base)
    sync = graph.add("aresample", "async=1:first_pts=0")
    fmt = graph.add("aformat", aformat)
    sink = graph.add("abuffersink")
    src.link_to(sync)
    sync.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    return graph, src, sink


def reference_audio(path: Path | str, max_frames: int | None = None) -> np.ndarray:
    """int16 16 kHz mono audio as `ffmpeg -i path -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000`
    and scipy's wavfile.read give it; `max_frames` keeps max_frames * 640 samples."""
    import av

    container = _open(path)
    try:
        if not container.streams.audio:
            raise MediaError(Path(path), "no audio stream")
        stream = container.streams.audio[0]
        start = _file_start(container)
        graph, src, sink, chunks = None, None, None, []
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            if graph is None:
                tb = frame.time_base
                graph, src, sink = async_graph(frame.format.name, frame.sample_rate, frame.layout.name, tb,
                                               f"sample_fmts=s16:sample_rates={SAMPLE_RATE}:channel_layouts=mono")
                offset = int(round(start / tb))  # ffmpeg's ts_offset in the stream's time base
            frame.pts = frame.pts - offset
            src.push(frame)
            chunks += _pull(sink)
        if graph is None:
            raise MediaError(Path(path), "audio stream has zero decodable frames")
        src.push(None)
        chunks += _pull(sink)
    finally:
        container.close()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if max_frames is not None:
        audio = audio[:max_frames * 640]
    return audio


def _pull(sink) -> list[np.ndarray]:
    """Every ready frame of the audio sink as int16 samples."""
    return [frame.to_ndarray().reshape(-1).astype(np.int16) for frame in _pull_frames(sink)]


QSCALE_LAMBDA = 118  # FF_QP2LAMBDA: `-qscale:v q` is global_quality q * 118, which ffmpeg gives every frame


def set_frame_quality(frame, quality: int) -> bool:
    """Set AVFrame.quality, which ffmpeg's CLI sets on every frame it encodes (`in_picture->quality =
    enc->global_quality`) and PyAV does not expose. With a fixed quantiser the mpegvideo encoders
    take their lambda from it: at 0 (PyAV's frames) intra frames come out the same, but the motion
    search weighs vector cost by lambda, so P-frames differ. Written through ctypes at the offsets
    of PyAV 18's Frame (PyObject head, vtable, AVFrame *) and libavutil 59/60's AVFrame (quality 24
    bytes after pts), after checking width, height and pts there; returns False (nothing written)
    on any other PyAV or libavutil, or when a check fails."""
    import ctypes

    import av

    if av.__version__.split(".")[0] != "18" or av.library_versions["libavutil"][0] not in (59, 60):
        return False
    ptr = ctypes.c_void_p.from_address(id(frame) + 24).value
    if not ptr or frame.pts is None:
        return False
    if (ctypes.c_int32.from_address(ptr + 104).value, ctypes.c_int32.from_address(ptr + 108).value) != \
            (frame.width, frame.height) or ctypes.c_int64.from_address(ptr + 136).value != frame.pts:
        return False
    ctypes.c_int32.from_address(ptr + 160).value = int(quality)
    return True


def reencode_avi(path: Path | str, target: Path | str) -> Path:
    """run_pipeline's `ffmpeg -y -i VIDEO -qscale:v 2 -async 1 -r 25 video.avi`, in process:
    video frames timed by ffmpeg's avi rule (vfr_select at 25 fps, from the file's start), mpeg4 at
    fixed quantiser 2 with libavcodec's automatic slice-thread count (ffmpeg's `-threads auto`:
    cores + 1, so the reference's own .avi depends on the machine's core count); audio through
    `aresample=async=1:first_pts=0` into libmp3lame (avi's default audio codec). Packets are muxed
    in the order ffmpeg writes them (decode order, each encoder's output as it comes), because the
    muxer's shift of the MP3's negative start (encoder delay) applies to the video packets written
    after the first audio one: on a 25 fps clip the .avi's second frame lands at 0.12 s, and the
    JPEG dump shows the first two frames twice each. Every frame gets ffmpeg's quality 236
    (set_frame_quality: the lambda the encoder's motion search weighs)."""
    import av

    target = Path(target)
    src_c = _open(path)
    try:
        if not src_c.streams.video:
            raise MediaError(Path(path), "no video stream")
        vs = src_c.streams.video[0]
        a_in = src_c.streams.audio[0] if src_c.streams.audio else None
        start = _file_start(src_c)
        rate = Fraction(25)
        with av.open(str(target), "w") as out:
            venc = out.add_stream("mpeg4", rate=rate)
            venc.width, venc.height, venc.pix_fmt = vs.codec_context.width, vs.codec_context.height, "yuv420p"
            venc.codec_context.qscale = 2  # AV_CODEC_FLAG_QSCALE ...
            venc.codec_context.global_quality = 2 * QSCALE_LAMBDA  # ... at quantiser 2
            venc.codec_context.thread_count = 0  # libavcodec's automatic count, as ffmpeg's default
            aenc = graph = None
            if a_in is not None:
                aenc = out.add_stream("libmp3lame", rate=a_in.rate, layout=a_in.layout.name)
                supported = [f.name for f in aenc.codec.audio_formats]  # ffmpeg keeps the decoder's
                if a_in.format.name in supported:                       # format where it can
                    aenc.format = a_in.format.name
                graph, asrc, sink = async_graph(a_in.format.name, a_in.rate, a_in.layout.name, a_in.time_base,
                                                f"sample_fmts={aenc.format.name}")
                a_offset = int(round(start / a_in.time_base))

            def video_frames():
                for frame in src_c.decode(*([vs, a_in] if a_in is not None else [vs])):
                    if frame.pts is None:
                        continue
                    if isinstance(frame, av.AudioFrame):
                        frame.pts -= a_offset
                        asrc.push(frame)
                        for af in _pull_frames(sink):
                            out.mux(aenc.encode(af))
                        continue
                    yield (float(frame.pts * frame.time_base - start),
                           float((frame.duration or 0) * frame.time_base), frame)

            for pts, frame in vfr_select(video_frames(), rate):
                pic = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p",
                                                                                     interpolation="BICUBIC")
                pic.pts, pic.time_base = pts, 1 / rate
                pic.pict_type = 0  # the encoder picks each frame's type, as ffmpeg's (not the source's)
                set_frame_quality(pic, 2 * QSCALE_LAMBDA)
                out.mux(venc.encode(pic))
            out.mux(venc.encode(None))
            if graph is not None:
                asrc.push(None)
                for af in _pull_frames(sink):
                    out.mux(aenc.encode(af))
                out.mux(aenc.encode(None))
    finally:
        src_c.close()
    return target


def _pull_frames(sink) -> list:
    """Every frame a filter graph's sink has ready."""
    import av

    out = []
    while True:
        try:
            out.append(sink.pull())
        except (av.error.BlockingIOError, av.error.EOFError):
            return out
