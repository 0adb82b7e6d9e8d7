"""identity field: one face-identity embedding per utterance, from dlib's face-recognition ResNet.

Sampled frames of our face track are aligned by dlib (its 5-point predictor inside the track's
box, as dlib's face-recognition example does, then `get_face_chip`: 150 px, padding 0.25; not
the 68-point one, whose 300-W training data restricts commercial use) and embedded (128-d, dlib's metric: Euclidean
distance, ~0.6 between different people for single images). The member, `<key>.identity.json`:

    {"embedding": [128 floats: the mean of the samples' descriptors],
     "spread": mean distance of the samples to the mean, "max_distance": the largest,
     "n_samples": k, "frames": [the sampled frame indices], "model": the weights' file name}

`spread` says how steady the face was (pose, blur, a wrong face in some frames). Frames are
sampled evenly over the whole utterance without knowing its length: every `stride`-th frame is
aligned and its chip kept; when MAX_SAMPLES chips are held, every second one is dropped and the
stride doubles. So an utterance of any length gives about MAX_SAMPLES / 2 .. MAX_SAMPLES samples
(frames 0, S, 2S, ...), holding at most MAX_SAMPLES chips (67 kB each), and the ResNet (the
costly part, ~0.1 s a chip on one core) runs once per sample, batched, at the end.

Distances between utterances (catalog/identities.py clusters them): on the real clips, the means
of one person's two recordings lie 0.12 apart, different people's 0.61 .. 1.0 (README).
"""
from __future__ import annotations

import json

import numpy as np

from features import dlib_models
from features.codecs import encode_json

VERSION = "dlib-resnet-v1-sp5-mean-1"
MAX_SAMPLES = 8
DIM = 128


class IdentitySamples:
    """Crop maker for identity: aligned chips of evenly spaced frames, embedded at the end."""

    name = "identity"
    geometry = None  # the face square (dlib's box is derived from it)

    def __init__(self, max_samples: int = MAX_SAMPLES):
        dlib_models.face_encoder()  # load now: a missing model fails the field, not the pass
        dlib_models.shape_predictor_5()
        self.max_samples, self.stride = max_samples, 1
        self.chips: dict[int, np.ndarray] = {}

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        if t % self.stride:
            return
        self.chips[t] = dlib_models.face_chip(frame, dlib_models.shape_5(frame, params))
        while len(self.chips) > self.max_samples:  # thin to every second sample
            self.stride *= 2
            self.chips = {k: c for k, c in self.chips.items() if k % self.stride == 0}

    def result(self) -> bytes:
        frames = sorted(self.chips)
        if not frames:
            raise ValueError("identity: no frame was sampled")
        return encode(dlib_models.descriptors([self.chips[t] for t in frames]), frames)


def encode(descriptors: np.ndarray, frames: list[int]) -> bytes:
    """The member from the samples' (k, 128) descriptors."""
    mean = descriptors.astype(np.float64).mean(axis=0)
    dist = np.linalg.norm(descriptors - mean, axis=1)
    return encode_json({"embedding": [round(float(v), 6) for v in mean], "spread": round(float(dist.mean()), 6),
                        "max_distance": round(float(dist.max()), 6), "n_samples": len(frames),
                        "frames": [int(t) for t in frames], "model": dlib_models.RESNET})


def decode(data: bytes) -> dict:
    """The member as a dict, `embedding` a (128,) float32 array."""
    out = json.loads(data)
    out["embedding"] = np.asarray(out["embedding"], np.float32)
    return out


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance(s) between embeddings (the metric dlib's ResNet was trained for)."""
    return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)
