"""The sync table of one clip and the figures read off it (syncnet_python's evaluate, exactly).

For video window i and offset index k = 0 .. 2V (V = vshift = 15), the table holds the distance
between video embedding i and audio embedding i + k - V, the audio embeddings zero-padded by V at
both ends (so near the ends some entries compare against a zero vector: the reference's edge
bias; `edges="mask"` leaves those entries out of the means instead, as VocaLiST-style evaluation
does). Distances are torch's pairwise_distance (L2 of the difference plus 1e-6), as the reference.

    mean_dist[k] = mean over i of table[i, k]        (31 values)
    min_dist     = min(mean_dist)                    LSE-D
    confidence   = median(mean_dist) - min_dist      LSE-C
    offset       = V - argmin(mean_dist)             as the reference prints it
    framewise    = medfilt(median(mean_dist) - table[:, argmin], 9)

Sign of the offset: audio delayed by d frames (late against the lips) is matched at k = V + d, so
offset = -d; offset +2 means the audio comes 2 frames early. Shifting the audio later by `offset`
frames (or the lips earlier) brings the clip in sync.

Any scorer fits: SyncNet gives L2 distances of its embeddings; a UniSync checkpoint gives
1 - p_sync (cosine of ReLU embeddings), so the same rules give its offset and confidence.
The table is built in a streaming band (`DistanceBand`): embeddings arrive in batches and each
row is computed once its 2V + 1 audio neighbours exist, so a long clip keeps only V + batch audio
embeddings, not all of them.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

VSHIFT = 15
FRAMEWISE_FILTER = 9
EDGES = ("pad", "mask")


def l2_rows(video: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """SyncNet: L2 distance (torch's pairwise_distance, eps 1e-6) of each video embedding (N, D)
    to its audio neighbours (N, 2V+1, D)."""
    return F.pairwise_distance(video[:, None, :], windows, p=2.0, eps=1e-6)


def cosine_rows(video: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """UniSync: 1 - p_sync, p_sync = cosine of the (ReLU, so non-negative) embeddings in [0, 1];
    a padded (zero) audio embedding gives p_sync 0, distance 1."""
    return 1.0 - F.cosine_similarity(video[:, None, :], windows, dim=2, eps=1e-8).clamp(0.0, 1.0)


def neighbour_windows(audio: torch.Tensor, n: int, vshift: int = VSHIFT) -> torch.Tensor:
    """(n, 2V+1, D): audio embeddings i-V .. i+V of each window i, zero padded by V at both ends."""
    padded = F.pad(audio, (0, 0, vshift, vshift))
    return padded.unfold(0, 2 * vshift + 1, 1)[:n].transpose(1, 2)


def distance_table(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT,
                   rows=l2_rows) -> torch.Tensor:
    """(N, 2V+1) distances of video embedding i to audio embeddings i-V .. i+V (zero padded)."""
    return rows(video, neighbour_windows(audio, len(video), vshift))


def edge_mask(n: int, vshift: int = VSHIFT) -> np.ndarray:
    """(n, 2V+1) True where audio window i + k - V exists (0 <= i + k - V < n)."""
    j = np.arange(n)[:, None] + np.arange(2 * vshift + 1)[None, :] - vshift
    return (j >= 0) & (j < n)


@dataclass
class SyncScore:
    """What one clip's table says; `table` is (windows, 2V+1)."""

    offset: int
    min_dist: float  # LSE-D (SyncNet) / 1 - mean p_sync at the best offset (UniSync)
    confidence: float  # LSE-C
    mean_dist: list[float]  # per offset index k (offset V - k)
    framewise_confidence: list[float]  # median-filtered (9), per window
    windows: int
    vshift: int = VSHIFT
    edges: str = "pad"
    table: np.ndarray | None = field(default=None, repr=False)

    @property
    def offsets(self) -> np.ndarray:
        """The offset each entry of `mean_dist` stands for (V - k), as the reference prints."""
        return self.vshift - np.arange(2 * self.vshift + 1)

    def window_offsets(self) -> np.ndarray:
        """Per window, the offset of its smallest distance (the per-window protocol of
        training/evaluate.py, on the reference's sign); edge windows see padded entries."""
        return self.vshift - np.argmin(self.table, axis=1)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("table")
        return d


def score_table(table: np.ndarray | torch.Tensor, vshift: int = VSHIFT, edges: str = "pad") -> SyncScore:
    """Offset, LSE-D, LSE-C and framewise confidence of a (windows, 2V+1) distance table."""
    from scipy.signal import medfilt

    if edges not in EDGES:
        raise ValueError(f"edges must be one of {EDGES}, got {edges!r}")
    table = torch.as_tensor(np.asarray(table, np.float32))
    n = len(table)
    if n == 0:
        raise ValueError("no window to score: the clip is shorter than 6 frames of video and audio")
    if edges == "pad":
        mean = table.mean(dim=0)
    else:
        valid = torch.from_numpy(edge_mask(n, vshift))
        counts = valid.sum(dim=0)
        if (counts == 0).any():
            raise ValueError(f"{n} windows are too few to mask offsets +/-{vshift}; use edges='pad'")
        mean = (table * valid).sum(dim=0) / counts
    min_val, min_idx = torch.min(mean, 0)
    median = torch.median(mean)  # 2V+1 values: the middle one
    framewise = median.numpy() - table[:, int(min_idx)].numpy()
    with warnings.catch_warnings():  # fewer than 9 windows: medfilt zero-pads, as the reference
        warnings.simplefilter("ignore", UserWarning)
        framewise = medfilt(framewise.astype(np.float64), FRAMEWISE_FILTER)
    return SyncScore(offset=int(vshift - int(min_idx)), min_dist=float(min_val),
                     confidence=float(median - min_val), mean_dist=mean.tolist(),
                     framewise_confidence=framewise.tolist(),
                     windows=n, vshift=vshift, edges=edges, table=table.numpy())


class DistanceBand:
    """Builds a distance table from embeddings that arrive in order, batch by batch.

    Row i needs audio embeddings i-V .. i+V; rows are emitted as soon as those exist (or the clip
    ends), and audio embeddings older than the next pending row minus V are dropped.
    `rows` is `l2_rows` (SyncNet) or `cosine_rows` (UniSync).
    """

    def __init__(self, rows=l2_rows, vshift: int = VSHIFT):
        self.row_fn, self.vshift = rows, vshift
        self.video: list[torch.Tensor] = []
        self.audio: list[torch.Tensor] = []
        self.audio_start = 0  # window index of self.audio's first row
        self.next_row = 0  # first video window without a table row yet
        self.rows: list[torch.Tensor] = []

    def add(self, video: torch.Tensor, audio: torch.Tensor) -> None:
        """Embeddings of the next windows (same count for both streams)."""
        if len(video) != len(audio):
            raise ValueError(f"{len(video)} video vs {len(audio)} audio embeddings")
        self.video.append(video.detach().float().cpu())
        self.audio.append(audio.detach().float().cpu())
        self._emit(final=False)

    def finish(self) -> np.ndarray:
        """The (windows, 2V+1) table."""
        self._emit(final=True)
        if not self.rows:
            return np.zeros((0, 2 * self.vshift + 1), np.float32)
        return torch.cat(self.rows).numpy()

    def _emit(self, final: bool) -> None:
        if not self.video:
            return
        video = torch.cat(self.video)  # rows next_row ..
        audio = torch.cat(self.audio)  # rows audio_start ..
        audio_end = self.audio_start + len(audio)
        ready = len(video) if final else max(0, min(len(video), audio_end - self.vshift - self.next_row))
        if ready == 0:
            self.video, self.audio = [video], [audio]
            return
        v = self.vshift
        lo = self.next_row - v  # audio window index of the padded slice's first row
        hi = self.next_row + ready + v
        # audio rows [lo, hi), zeros where the clip has none (before 0 or after the last window)
        pad_before = max(0, self.audio_start - lo)
        pad_after = max(0, hi - audio_end) if final else 0
        take = audio[max(0, lo - self.audio_start):hi - self.audio_start]
        block = F.pad(take, (0, 0, pad_before, pad_after))
        windows = block.unfold(0, 2 * v + 1, 1)[:ready].transpose(1, 2)
        self.rows.append(self.row_fn(video[:ready], windows))
        self.next_row += ready
        keep_from = max(self.audio_start, self.next_row - v)
        self.audio = [audio[keep_from - self.audio_start:]]
        self.audio_start = keep_from
        self.video = [video[ready:]]

