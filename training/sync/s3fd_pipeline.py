"""run_pipeline.py's face-track protocol (joonson/syncnet_python), rule by rule, on face-alignment's S3FD.

The reference scores every face *track*, not every video. Its rules, all reproduced here:

1. frames at 25 fps (it re-encodes with `ffmpeg -qscale:v 2 -async 1 -r 25` and dumps `-qscale:v 2`
   JPEGs; with `--io reference` we read frames through training.sync.reference_io at qscale 2);
2. S3FD on each frame, `detect_faces(conf_th=0.9, scales=[0.25])`;
3. PySceneDetect shots (ContentDetector, threshold 30, min_scene_len 15 as scenedetect 0.5.1 which
   the reference pins; frames subsampled `[::f, ::f]` by VideoManager's automatic factor; the
   reference detects shots on the re-encoded video as cv2.VideoCapture decodes it, we on the frames
   we detect faces on); shots of fewer than min_track (100) frames are skipped. The reference's
   API (VideoManager, SceneManager(StatsManager)) is gone from the installed scenedetect 0.7.2;
   its equivalent here is ContentDetector.process_frame fed frame by frame (see ShotSplitter);
4. per shot, greedy tracks: a face joins the track when it is at most num_failed_det (25) frames
   after the track's last face and IoU > 0.5; tracks of min_track (100) faces or fewer are dropped;
5. boxes linearly interpolated over the missing frames; tracks whose mean box width and height are
   both at most min_face_size (100 px) are dropped;
6. half size, centre x and centre y median-filtered over 13 (training.sync.crops.smooth_boxes),
   crop_scale 0.4 padding and 224 resize (training.sync.crops.pipeline_crop);
7. each track's audio is `[first / 25 s, (last + 1) / 25 s)` of the clip's 16 kHz audio.

With `--io reference` the lossy steps in between are reproduced in process too: the re-encode
`ffmpeg -qscale:v 2 -async 1 -r 25 video.avi` (pipeline_video: mpeg4, MP3 and ffmpeg's avi
timing, so a 25 fps clip whose MP3 starts before its video gets the reference's two repeated first
frames), its -qscale:v 2 JPEG dump, and for every track cv2.VideoWriter XVID and the
default-quality JPEG dump (xvid_round_trip); the audio is the .avi's MP3.

The detector is face-alignment's `s3fd` module and weight layout (`face_alignment.detection.sfd`),
loaded from a local file. face-alignment's own `batch_detect` differs from the reference's bundled
S3FD in four ways, so we do not call it: (a) its fc6 is a 3 x 3 conv with padding 3, the reference's
is dilated (dilation 6, padding 6); (b) its pool3 floors, the reference's pool3 uses ceil_mode
(odd sizes differ); (c) it feeds BGR minus (104, 117, 123), while the reference swaps to BGR,
subtracts the means and swaps back, so its network sees **RGB** minus (123, 117, 104); (d) it keeps
scores > 0.5 after one NMS at 0.3 (areas with +1) in input pixels, the reference keeps > conf_th
after NMS 0.3 (top 5000 of scores > 0.05) then a second NMS at 0.1, boxes normalised by the scaled
image and multiplied by the original size. `reference_forward` runs face-alignment's layers with
the reference's operations; `detect_batch` applies the reference's post-processing to a batch.
"""
from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from features.errors import ModelUnavailable

CONF_TH = 0.9  # run_pipeline: detect_faces(conf_th=0.9, ...)
FACEDET_SCALE = 0.25  # --facedet_scale
MIN_TRACK = 100  # --min_track
NUM_FAILED_DET = 25  # --num_failed_det
MIN_FACE_SIZE = 100  # --min_face_size
IOU_THRES = 0.5  # track_shot's iouThres
RGB_MEAN = (123.0, 117.0, 104.0)  # what the reference's network sees subtracted, in RGB order
STEPS = (4, 8, 16, 32, 64, 128)
MIN_SIZES = (16, 32, 64, 128, 256, 512)
SCENE_THRESHOLD = 30.0  # scenedetect 0.5.1 ContentDetector defaults
SCENE_MIN_LEN = 15
DOWNSCALE_FACTORS = {3200: 12, 2100: 8, 1700: 6, 1200: 5, 900: 4, 600: 3, 400: 2}  # 0.5.1 VideoManager

# face-alignment's layer names in the reference's S3FDNet order (vgg conv indices, extras, heads)
VGG_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1",
             "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7")
VGG_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)
EXTRAS = ("conv6_1", "conv6_2", "conv7_1", "conv7_2")
SOURCES = ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2")
NORMS = {"conv3_3_norm": "L2Norm3_3", "conv4_3_norm": "L2Norm4_3", "conv5_3_norm": "L2Norm5_3"}


def load_detector(path: Path | str | None, device: str = "cpu"):
    """face-alignment's S3FD network with weights from a local file (never downloaded here)."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd

    if path is None or not Path(path).is_file():
        raise ModelUnavailable(f"S3FD weights not found at {path!r}: pass --s3fd-weights FILE (face-alignment's "
                               "s3fd-619a316812.pth layout; nothing is downloaded at run time)")
    with torch.device("meta"):  # no random init of 22 M weights that the file replaces
        net = s3fd()
    try:
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), assign=True)
    except Exception as exc:
        raise ModelUnavailable(f"S3FD weights at {path} do not load into face-alignment's s3fd "
                               f"({type(exc).__name__}: {exc})") from exc
    return net.float().to(device).eval()


def s3fd_shapes() -> dict:
    """face-alignment's S3FD parameter shapes, without initialising its 22 M weights (meta device)."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd

    with torch.device("meta"):
        return {k: v.shape for k, v in s3fd().state_dict().items()}


def to_reference_layout(state: dict) -> dict:
    """face-alignment's S3FD state dict -> the reference's S3FDNet keys (sfd_face.pth), same tensors."""
    out = {}
    for name, idx in zip(VGG_CONVS, VGG_INDEX):
        out[f"vgg.{idx}.weight"], out[f"vgg.{idx}.bias"] = state[f"{name}.weight"], state[f"{name}.bias"]
    for k, name in enumerate(EXTRAS):
        out[f"extras.{k}.weight"], out[f"extras.{k}.bias"] = state[f"{name}.weight"], state[f"{name}.bias"]
    for ours, theirs in NORMS.items():
        out[f"{theirs}.weight"] = state[f"{ours}.weight"]
    for k, src in enumerate(SOURCES):
        for head, suffix in (("loc", "loc"), ("conf", "conf")):
            for p in ("weight", "bias"):
                out[f"{head}.{k}.{p}"] = state[f"{src}_mbox_{suffix}.{p}"]
    return out


def reference_forward(net, x):
    """The reference S3FDNet's operations on face-alignment's layers: [(cls, reg)] per source, cls
    with background max-out on the first head. x: (B, 3, H, W) RGB minus RGB_MEAN."""
    import torch
    import torch.nn.functional as F

    h = x
    pools = {"conv1_2": dict(), "conv2_2": dict(), "conv3_3": dict(ceil_mode=True), "conv4_3": dict(),
             "conv5_3": dict()}
    feats = {}
    for name in VGG_CONVS:
        conv = getattr(net, name)
        if name == "fc6":
            h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=6, dilation=6))
        else:
            h = F.relu(conv(h))
        if name in ("conv3_3", "conv4_3", "conv5_3", "fc7"):
            feats[name] = h
        if name in pools:
            h = F.max_pool2d(h, 2, 2, **pools[name])
    for name in EXTRAS:
        h = F.relu(getattr(net, name)(h))
        feats[name] = h
    sources = [net.conv3_3_norm(feats["conv3_3"]), net.conv4_3_norm(feats["conv4_3"]),
               net.conv5_3_norm(feats["conv5_3"]), feats["fc7"], feats["conv6_2"], feats["conv7_2"]]
    out = []
    for src, x_ in zip(SOURCES, sources):
        cls = getattr(net, f"{src}_mbox_conf")(x_)
        if cls.shape[1] == 4:
            cls = torch.cat([cls[:, :3].max(dim=1, keepdim=True).values, cls[:, 3:]], dim=1)
        out.append((cls, getattr(net, f"{src}_mbox_loc")(x_)))
    return out


def _heads_module(net):
    """reference_forward as a module with a flat tuple output (what torch.jit.trace takes)."""
    import torch

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return tuple(t for pair in reference_forward(self.net, x) for t in pair)

    return Heads().eval()


def fast_forward(net, x):
    """reference_forward through a traced, frozen graph optimised for inference (torch.jit.
    optimize_for_inference: oneDNN convolutions with fused ReLUs), one per input shape, kept on the
    network: ~1.2x faster on a CPU, scores equal to ~6e-7 (the same boxes on the benchmark's clips).
    Falls back to eager reference_forward where tracing fails."""
    import torch

    cache = net.__dict__.setdefault("_fast_graphs", {})
    key = tuple(x.shape)
    if key not in cache:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on the fixed head-count branch
                cache[key] = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(_heads_module(net), x)))
        except Exception:  # noqa: BLE001 - any failure: the eager path computes the same
            cache[key] = None
    graph = cache[key]
    if graph is None:
        return reference_forward(net, x)
    with torch.no_grad():
        flat = graph(x)
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _priors(shapes: list[tuple[int, int]], imh: int, imw: int):
    """The reference's PriorBox (normalised cx, cy, w, h), row-major per level, float32."""
    import torch

    mean = []
    for (fh, fw), step, size in zip(shapes, STEPS, MIN_SIZES):
        j, i = np.meshgrid(np.arange(fw), np.arange(fh))
        cx = (j.ravel() + 0.5) / (imw / step)
        cy = (i.ravel() + 0.5) / (imh / step)
        mean.append(np.column_stack([cx, cy, np.full_like(cx, size / imw), np.full_like(cy, size / imh)]))
    return torch.from_numpy(np.concatenate(mean)).float()


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS in descending score order, keeping IoU <= thresh (areas without +1, as the
    reference's box_utils.nms and nms_); returns kept indices, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return np.asarray(keep, dtype=np.int64)


def detect_batch(net, frames_rgb: list[np.ndarray], conf_th: float = CONF_TH,
                 scale: float = FACEDET_SCALE, device: str = "cpu") -> list[np.ndarray]:
    """`S3FD.detect_faces(frame, conf_th, scales=[scale])` for same-size RGB uint8 frames, batched:
    one (k, 5) x0 y0 x1 y1 score array per frame, in original pixels."""
    import cv2
    import torch

    if not frames_rgb:
        return []
    h, w = frames_rgb[0].shape[:2]
    small = np.stack([cv2.resize(f, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
                      for f in frames_rgb]).astype(np.float32)
    small -= np.asarray(RGB_MEAN, np.float32)
    x = torch.from_numpy(small.transpose(0, 3, 1, 2).copy()).to(device)
    heads = fast_forward(net, x)
    shapes = [tuple(c.shape[2:]) for c, _ in heads]
    conf = torch.cat([c.permute(0, 2, 3, 1).reshape(len(frames_rgb), -1, 2) for c, _ in heads], 1)
    loc = torch.cat([r.permute(0, 2, 3, 1).reshape(len(frames_rgb), -1, 4) for _, r in heads], 1)
    conf = torch.softmax(conf, dim=-1)[..., 1].cpu()
    priors = _priors(shapes, small.shape[1], small.shape[2])
    loc = loc.cpu()
    boxes = torch.cat([priors[:, :2] + loc[..., :2] * 0.1 * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[..., 2:] * 0.2)], -1)
    boxes[..., :2] -= boxes[..., 2:] / 2
    boxes[..., 2:] += boxes[..., :2]
    size = torch.tensor([w, h, w, h], dtype=torch.float32)
    out = []
    for b in range(len(frames_rgb)):
        s = conf[b]
        cand = torch.nonzero(s > 0.05).ravel()
        cand = cand[torch.argsort(s[cand], descending=True, stable=True)[:5000]]  # Detect's nms_top_k
        cand = cand[s[cand] > conf_th]
        if not len(cand):
            out.append(np.empty((0, 5)))
            continue
        bx, sc = boxes[b, cand].numpy(), s[cand].numpy()
        keep = nms(bx, sc, 0.3)[:750]  # Detect: nms_thresh 0.3, top_k 750
        dets = np.column_stack([(boxes[b, cand[keep]] * size).numpy().astype(np.float64),
                                sc[keep].astype(np.float64)])
        out.append(dets[nms(dets[:, :4], dets[:, 4], 0.1)])
    return out


def downscale_factor(width: int) -> int:
    """scenedetect 0.5.1 VideoManager.set_downscale_factor(): integer subsampling by frame width."""
    for wmin in sorted(DOWNSCALE_FACTORS, reverse=True):
        if width >= wmin:
            return DOWNSCALE_FACTORS[wmin]
    return 1


class ShotSplitter:
    """run_pipeline's scene_detect on frames as they stream (scenedetect 0.7.2's ContentDetector
    with the reference's 0.5.1 settings; frames BGR, subsampled as VideoManager does)."""

    def __init__(self, fps: float = 25.0):
        from scenedetect.detector import FlashFilter
        from scenedetect.detectors import ContentDetector

        # SUPPRESS is 0.5's rule (a cut needs min_scene_len frames since the last one); 0.7's default
        # MERGE joins short scenes instead. Residual difference: 0.5 counts the first gap from frame
        # 0, 0.7 from frame 1 (its first frame has no score), so a cut at exactly frame 15 is lost.
        self.detector = ContentDetector(threshold=SCENE_THRESHOLD, min_scene_len=SCENE_MIN_LEN,
                                        filter_mode=FlashFilter.Mode.SUPPRESS)
        self.fps, self.n, self.cuts = fps, 0, []

    def add(self, frame_rgb: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        f = downscale_factor(frame_rgb.shape[1])
        bgr = np.ascontiguousarray(frame_rgb[::f, ::f, ::-1])
        self.cuts += [c.frame_num for c in self.detector.process_frame(FrameTimecode(self.n, self.fps), bgr)]
        self.n += 1

    def shots(self) -> list[tuple[int, int]]:
        """[start, end) frame ranges; one shot for the whole clip when there is no cut."""
        edges = [0] + sorted(set(self.cuts)) + [self.n]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def iou(a, b) -> float:
    """run_pipeline's bb_intersection_over_union (no +1, no zero-area guard)."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@dataclass
class Track:
    """A face track: frames[0] .. frames[-1] consecutive, with interpolated (n, 4) boxes."""
    frames: np.ndarray
    boxes: np.ndarray

    @property
    def start(self) -> int:
        return int(self.frames[0])

    @property
    def end(self) -> int:  # exclusive
        return int(self.frames[-1]) + 1


def track_shot(scenefaces: list[list[dict]], min_track: int = MIN_TRACK, num_failed_det: int = NUM_FAILED_DET,
               min_face_size: float = MIN_FACE_SIZE) -> list[Track]:
    """run_pipeline's track_shot: `scenefaces` is one list of {'frame', 'bbox'} per frame (consumed,
    as the reference removes the faces it assigns). Its loop quirks are kept: the inner loop
    removes from the list it walks, and a face too far after the track ends the frame's loop."""
    from scipy.interpolate import interp1d

    tracks = []
    while True:
        track: list[dict] = []
        for framefaces in scenefaces:
            for face in framefaces:
                if track == []:
                    track.append(face)
                    framefaces.remove(face)
                elif face["frame"] - track[-1]["frame"] <= num_failed_det:
                    if iou(face["bbox"], track[-1]["bbox"]) > IOU_THRES:
                        track.append(face)
                        framefaces.remove(face)
                        continue
                else:
                    break
        if track == []:
            break
        if len(track) > min_track:
            framenum = np.array([f["frame"] for f in track])
            bboxes = np.array([np.array(f["bbox"]) for f in track])
            frame_i = np.arange(framenum[0], framenum[-1] + 1)
            boxes_i = np.stack([interp1d(framenum, bboxes[:, j])(frame_i) for j in range(4)], axis=1)
            if max(np.mean(boxes_i[:, 2] - boxes_i[:, 0]), np.mean(boxes_i[:, 3] - boxes_i[:, 1])) > min_face_size:
                tracks.append(Track(frame_i, boxes_i))
    return tracks


def tracks_from_detections(dets: list[np.ndarray], shots: list[tuple[int, int]],
                           min_track: int = MIN_TRACK, **kw) -> list[Track]:
    """run_pipeline's main loop: shots of at least min_track frames, tracked one by one."""
    tracks = []
    for a, b in shots:
        if b - a >= min_track:
            faces = [[{"frame": t, "bbox": d[:4].tolist(), "conf": d[4]} for d in dets[t]] for t in range(a, b)]
            tracks += track_shot(faces, min_track=min_track, **kw)
    return tracks


@contextmanager
def pipeline_video(video: Path | str, io: str) -> Iterator[Path]:
    """The file run_pipeline works on: with `--io reference` its re-encoded .avi (reference_io.
    reencode_avi: mpeg4 -qscale:v 2, MP3, ffmpeg's avi timing), in a temporary folder removed on
    exit (about 0.4 MB per second of 512 px video); otherwise the source itself."""
    if io != "reference":
        yield Path(video)
        return
    from training.sync.reference_io import reencode_avi

    with tempfile.TemporaryDirectory(prefix="s3fd_avi_") as tmp:
        yield reencode_avi(video, Path(tmp) / "video.avi")


def reference_frames_rgb(path: Path | str, io: str, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """The frames run_pipeline works on, RGB uint8: `reference` = the -qscale:v 2 JPEG dump of
    `path` (pipeline_video's .avi) read back by OpenCV (training.sync.reference_io); `exact` = our
    25 fps grid decode (lossless)."""
    if io == "reference":
        from training.sync.reference_io import reference_frames

        for bgr in reference_frames(path, qscale=2, max_frames=max_frames):
            yield np.ascontiguousarray(bgr[..., ::-1])
    else:
        from training.sync.video import _stream

        yield from _stream(path, max_frames)


def shot_frames_rgb(path: Path | str, io: str) -> Iterator[np.ndarray] | None:
    """The frames run_pipeline's scene_detect sees, when they are not the detector's: with
    `--io reference`, the .avi as a VideoCapture decodes it, one frame per coded frame (no gap
    filled: 200 frames where the JPEG dump has 202), so the last shot ends at the .avi's own frame
    count and frames past it get no track, as in the reference. None: the detector's frames."""
    if io != "reference":
        return None
    import av

    def frames():
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                yield f.to_ndarray(format="rgb24")
    return frames()


def find_tracks(net, frames: Iterable[np.ndarray], batch_size: int = 4, device: str = "cpu",
                shot_frames: Iterable[np.ndarray] | None = None,
                **kw) -> tuple[list[Track], list[np.ndarray], list[tuple[int, int]]]:
    """Pass 1 over a clip: batched S3FD and the shot split as frames stream (on `shot_frames`
    instead where given: shot_frames_rgb); then the tracks. Returns (tracks, per-frame
    detections, shots)."""
    dets: list[np.ndarray] = []
    shots = ShotSplitter()
    batch: list[np.ndarray] = []
    for frame in frames:
        if shot_frames is None:
            shots.add(frame)
        batch.append(frame)
        if len(batch) == batch_size:
            dets += detect_batch(net, batch, device=device)
            batch = []
    dets += detect_batch(net, batch, device=device)
    for frame in shot_frames or ():
        shots.add(frame)
    split = [(a, min(b, len(dets))) for a, b in shots.shots() if a < len(dets)]  # --max-frames
    return tracks_from_detections(dets, split, **kw), dets, split


def track_crops(frames: Iterable[np.ndarray], tracks: list[Track]) -> list[np.ndarray]:
    """Pass 2: (n, 224, 224, 3) uint8 crops per track (run_pipeline's crop_video), one decode for all
    tracks; a 100-frame track's crops are 15 MB."""
    from training.sync.crops import SIZE, pipeline_crop, smooth_boxes

    smooth = [smooth_boxes(t.boxes) for t in tracks]
    out = [np.empty((len(t.frames), SIZE, SIZE, 3), np.uint8) for t in tracks]
    last = max((t.end for t in tracks), default=0)
    for n, frame in enumerate(frames):
        if n >= last:
            break
        for k, t in enumerate(tracks):
            if t.start <= n < t.end:
                out[k][n - t.start] = pipeline_crop(frame, *smooth[k][n - t.start])
    return out


def xvid_round_trip(crops_rgb: np.ndarray, fps: int = 25) -> list[np.ndarray]:
    """`--io reference`: the track's crops as run_syncnet sees them: crop_video writes them with
    cv2.VideoWriter (XVID, OpenCV's libavcodec mpeg4 at its default quality), and evaluate dumps
    that file to default-quality JPEGs (training.sync.reference_io). One small temporary .avi per
    track (no frame files), removed at once."""
    import tempfile

    import cv2

    from training.sync.reference_io import reference_frames

    with tempfile.TemporaryDirectory(prefix="s3fd_track_") as tmp:
        path = str(Path(tmp) / "track.avi")
        out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"XVID"), fps, crops_rgb.shape[2:0:-1])
        for crop in crops_rgb:
            out.write(np.ascontiguousarray(crop[..., ::-1]))
        out.release()
        return [np.ascontiguousarray(f[..., ::-1]) for f in reference_frames(path)]


def track_audio(audio: np.ndarray, track: Track, fps: int = 25, rate: int = 16000) -> np.ndarray:
    """The track's audio as crop_video cuts it: `ffmpeg -ss first/25 -to (last+1)/25` on the WAV."""
    return audio[int(round(track.start / fps * rate)):int(round(track.end / fps * rate))]


def calibrated_random_detector(frames_rgb: list[np.ndarray], seed: int = 0, level: int = 2,
                               spread: float = 2.0, top: int = 3):
    """A randomly initialised S3FD of the real architecture that does detect (tests, benchmarks).

    At random init every score is near 0.5, so conf_th 0.9 finds nothing. We keep the seeded
    random network and change only the face-class bias and scale of the score heads: heads other
    than `level` never fire (bias -30), and `level`'s face-minus-background logit is scaled to a
    spread (std) of `spread` on `frames_rgb` with a bias that puts about `top` positions per frame
    above p = 0.9. Level 2 (stride 16, 64 px priors at scale 0.25) gives 256 px boxes: face sized.
    """
    import cv2
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(seed)
    net = s3fd().eval()
    small = np.stack([cv2.resize(f, dsize=(0, 0), fx=FACEDET_SCALE, fy=FACEDET_SCALE) for f in frames_rgb])
    x = torch.from_numpy((small.astype(np.float32) - np.asarray(RGB_MEAN, np.float32)).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        cls, _ = reference_forward(net, x)[level]
        d = (cls[:, -1] - cls[:, 0]).reshape(len(frames_rgb), -1)
        k = spread / float(d.std())
        nth = float(torch.sort(d * k, dim=1, descending=True).values[:, top - 1].mean())
        for i, src in enumerate(SOURCES):
            head = getattr(net, f"{src}_mbox_conf")
            if i == level:
                head.weight[-1] *= k
                head.weight[0] *= k
                head.bias[-1] = head.bias[-1] * k + (np.log(9.0) - nth)
                head.bias[0] *= k
            else:
                head.bias[-1] = -30.0
    return net


_DETECTORS: dict[tuple[str, str], object] = {}


def cached_detector(path: Path | str | None, device: str = "cpu"):
    """One loaded S3FD per (weights, device) per process (Ray workers score many videos)."""
    key = (str(path), device)
    if key not in _DETECTORS:
        _DETECTORS[key] = load_detector(path, device)
    return _DETECTORS[key]


def score_s3fd_tracks(scorer, video: str, max_frames: int | None, io: str, weights: Path | str | None,
                      batch_size: int | None = None) -> list[tuple[dict, object]]:
    """`--crop s3fd`: (track facts, SyncScore) per run_pipeline track of `video`, as run_syncnet
    scores every track; no tracks gives an empty list (the reference then writes nothing)."""
    from training.sync.audio import int16_scale
    from training.sync.video import read_audio_int16

    device = str(getattr(scorer, "device", "cpu"))
    batch_size = batch_size or (4 if device == "cpu" else 32)  # 4 x 128 px images stay in a CPU's cache
    net = cached_detector(weights, device)
    with pipeline_video(video, io) as source:
        tracks, _, _ = find_tracks(net, reference_frames_rgb(source, io, max_frames), batch_size, device,
                                   shot_frames=shot_frames_rgb(source, io))
        crops = track_crops(reference_frames_rgb(source, io, max_frames), tracks)
        if io == "reference":  # run_pipeline's audio.wav: the .avi's MP3 at 16 kHz mono
            from training.sync.reference_io import reference_audio

            audio = int16_scale(reference_audio(source, max_frames))
        else:
            audio = read_audio_int16(video, None, max_frames, io=io)
    out = []
    for k, (t, c) in enumerate(zip(tracks, crops)):
        frames = xvid_round_trip(c) if io == "reference" else c
        s = scorer.score_arrays(iter(frames), track_audio(audio, t))
        out.append(({"track": k, "track_start": t.start, "track_frames": len(t.frames)}, s))
    return out
