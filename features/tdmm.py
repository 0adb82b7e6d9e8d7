"""tdmm field: a linear morphable model fitted on the corpus's own pose-aligned face meshes.

    frame mesh = pose(mean + identity_basis . id + expression_basis . expr)

Pose (rotation as a rotation vector, translation, scale) is the similarity transform that
carries the model into the frame, found by Umeyama's method on rigid points (forehead, nose
bridge, eye corners, temples), so mouth and jaw motion stay out of it. Identity is the
utterance's mean aligned shape (coefficients in a PCA basis of utterance means), expression
the PCA of each frame's residual from that mean (64 components by default). Stored per frame:
pose (7) + expression (64) as `<key>.tdmm.npy`; per utterance: identity as `<key>.tdmm_id.npy`.
Deep3DFaceRecon/BFM or FLAME can plug in later behind the same field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.codecs import decode_npy, encode_npy

VERSION = "mesh-pca-1"
RIGID = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 109, 338, 67, 297,
         127, 356, 234, 454, 21, 251]
EYE_OUTER = (33, 263)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising |s R src + t - dst| over point sets (k, 3) (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (a ** 2).sum(1).mean())
    return scale, rot, mu_d - scale * rot @ mu_s


def align(frames: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Meshes (n, 478, 3) moved onto the reference; and each frame's pose (n, 7) carrying the
    aligned mesh back into the frame: rotation vector (3), translation (3), scale (1)."""
    from scipy.spatial.transform import Rotation

    aligned, poses = np.empty_like(frames, dtype=np.float64), np.empty((len(frames), 7))
    for i, mesh in enumerate(frames.astype(np.float64)):
        s, r, t = similarity(mesh[RIGID], reference[RIGID])
        aligned[i] = s * mesh @ r.T + t
        back = r.T  # frame = (1/s) R^T (aligned - t)
        poses[i, :3] = Rotation.from_matrix(back).as_rotvec()
        poses[i, 3:6] = -(back @ t) / s
        poses[i, 6] = 1.0 / s
    return aligned, poses


def apply_pose(mesh: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Model-space mesh (478, 3) into the frame with a stored pose (7,)."""
    from scipy.spatial.transform import Rotation

    return pose[6] * mesh @ Rotation.from_rotvec(pose[:3]).as_matrix().T + pose[3:6]


CHUNK_FRAMES = 1024  # frames aligned at a time beyond this many (~12 MB of float64 a copy)


def _balanced_spans(n: int, most: int) -> list[tuple[int, int]]:
    """[a, b) spans of near-equal size, at most `most` frames each (none is a sliver: a product
    of one row takes BLAS's matrix-vector path, whose rounding differs from the matrix one)."""
    k = -(-n // most)
    edges = [n * i // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class MorphableModel:
    mean: np.ndarray  # (478, 3)
    identity: np.ndarray  # (k_id, 1434) orthonormal rows
    expression: np.ndarray  # (k_expr, 1434) orthonormal rows
    version: str = VERSION

    def coefficients(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame (n, 7 + k_expr) pose + expression, and the utterance's identity (k_id,).

        Over CHUNK_FRAMES frames, in two passes over chunks (the aligned float64 meshes of 30
        minutes are 0.5 GB): the first sums the aligned meshes in frame order, as the whole-array
        mean does, the second aligns each chunk again and projects it. Same values."""
        if len(landmarks) <= CHUNK_FRAMES:
            aligned, poses = align(landmarks, self.mean)
            flat = aligned.reshape(len(aligned), -1)
            own_mean = flat.mean(0)
            expr = (flat - own_mean) @ self.expression.T
        else:
            spans = _balanced_spans(len(landmarks), CHUNK_FRAMES)
            poses, total = np.empty((len(landmarks), 7)), None
            for a, b in spans:
                aligned, poses[a:b] = align(landmarks[a:b], self.mean)
                rows = aligned.reshape(b - a, -1)
                total = np.add.reduce(rows if total is None else np.concatenate([total[None], rows]), axis=0)
            own_mean = total / len(landmarks)
            expr = np.concatenate([(align(landmarks[a:b], self.mean)[0].reshape(b - a, -1) - own_mean)
                                   @ self.expression.T for a, b in spans])
        ident = self.identity @ (own_mean - self.mean.reshape(-1))
        return np.hstack([poses, expr]).astype(np.float32), ident.astype(np.float32)

    def reconstruct(self, frame_coeffs: np.ndarray, identity: np.ndarray) -> np.ndarray:
        """Frame-space meshes (n, 478, 3) from stored coefficients."""
        shape = self.mean.reshape(-1) + identity @ self.identity
        meshes = (shape + frame_coeffs[:, 7:] @ self.expression).reshape(-1, 478, 3)
        return np.stack([apply_pose(m, p) for m, p in zip(meshes, frame_coeffs[:, :7])])

    def save(self, path: Path, report: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, identity=self.identity, expression=self.expression,
                     version=np.array(self.version))
        path.with_suffix(".json").write_text(json.dumps(report, indent=2))

    @classmethod
    def load(cls, path: Path) -> "MorphableModel":
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no fitted morphable model; extract --fields tdmm fits it")
        z = np.load(path)
        return cls(z["mean"], z["identity"], z["expression"], str(z["version"]))


def _pca(rows: np.ndarray, k: int) -> np.ndarray:
    _, _, vt = np.linalg.svd(rows - rows.mean(0), full_matrices=False)
    return vt[:k]


def fit(utterances: list[np.ndarray], n_expression: int = 64, n_identity: int = 32,
        holdout: float = 0.1, max_frames: int = 20000, seed: int = 0) -> tuple[MorphableModel, dict]:
    """Fit on per-utterance landmark arrays (n_i, 478, 3); report held-out reconstruction error.

    Error: mean point distance between a held-out frame's aligned mesh and its reconstruction
    from the model (identity from the utterance mean, expression by projection), as a share of
    the reference's outer-eye-corner (inter-ocular) distance.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utterances))
    n_held = max(1, int(round(holdout * len(utterances)))) if len(utterances) > 2 else 0
    held, train = [utterances[i] for i in order[:n_held]], [utterances[i] for i in order[n_held:]]
    reference = train[0][0].astype(np.float64)
    for _ in range(3):  # generalised Procrustes: align everything, re-estimate the reference
        stack = np.concatenate([align(u, reference)[0] for u in train])
        reference = stack.mean(0)
    aligned = [align(u, reference)[0].reshape(len(u), -1) for u in train]
    means = np.stack([a.mean(0) for a in aligned])
    k_id = max(1, min(n_identity, len(train) - 1))
    identity = _pca(means, k_id) if len(train) > 1 else np.zeros((1, means.shape[1]))
    residuals = np.concatenate([a - a.mean(0) for a in aligned])
    if len(residuals) > max_frames:
        residuals = residuals[rng.choice(len(residuals), max_frames, replace=False)]
    _, _, vt = np.linalg.svd(residuals, full_matrices=False)
    model = MorphableModel(reference, identity, vt[:n_expression])
    iod = float(np.linalg.norm(reference[EYE_OUTER[0]] - reference[EYE_OUTER[1]]))
    errors = []
    for u in held or train[:1]:
        a = align(u, reference)[0].reshape(len(u), -1)
        own = a.mean(0)
        recon = own + ((a - own) @ model.expression.T) @ model.expression
        errors.append(np.linalg.norm((recon - a).reshape(len(u), 478, 3), axis=2).mean(1))
    err = np.concatenate(errors)
    report = {"version": VERSION, "utterances_fit": len(train), "utterances_held_out": len(held),
              "frames_fit": int(sum(len(u) for u in train)), "expression_components": n_expression,
              "identity_components": k_id, "interocular": iod,
              "heldout_mean_error_share_of_iod": float(err.mean() / iod),
              "heldout_p95_error_share_of_iod": float(np.percentile(err, 95) / iod)}
    return model, report


def encode(landmarks: np.ndarray, model: MorphableModel) -> dict[str, bytes]:
    if landmarks.dtype not in (np.float16, np.float32):  # both are exact in align's float64
        landmarks = landmarks.astype(np.float32)
    frames, identity = model.coefficients(landmarks)
    return {"tdmm.npy": encode_npy(frames), "tdmm_id.npy": encode_npy(identity)}


decode = decode_npy
