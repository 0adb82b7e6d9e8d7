"""SyncNet architecture, published weight layout, and the streaming scorer against a direct
reimplementation of syncnet_python's evaluate (random weights: the numbers mean nothing, the
arithmetic must match)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.sync.syncnet import SyncNet, WeightsError, load_syncnet, save_random_weights

# syncnet_python's SyncNetModel.S: Sequential indices of the convolutions (BatchNorm at +1) and
# their weight shapes; the fc heads are Linear(512, 512), BatchNorm1d, ReLU, Linear(512, 1024).
AUDIO_CONVS = {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3),
               14: (256, 256, 3, 3), 18: (512, 256, 5, 4)}
LIP_CONVS = {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3),
             11: (256, 256, 1, 3, 3), 14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)}


def published_layout() -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    for net, convs in (("netcnnaud", AUDIO_CONVS), ("netcnnlip", LIP_CONVS)):
        for i, shape in convs.items():
            keys[f"{net}.{i}.weight"], keys[f"{net}.{i}.bias"] = shape, shape[:1]
            for p in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{net}.{i + 1}.{p}"] = shape[:1]
    for net in ("netfcaud", "netfclip"):
        keys.update({f"{net}.0.weight": (512, 512), f"{net}.0.bias": (512,), f"{net}.3.weight": (1024, 512),
                     f"{net}.3.bias": (1024,)})
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{net}.1.{p}"] = (512,)
    return keys


def test_random_weights_in_the_published_layout_load(tmp_path):
    path = save_random_weights(tmp_path / "syncnet_v2.model")
    state = torch.load(path, weights_only=True)
    layout = published_layout()
    saved = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert saved == layout
    model = SyncNet()
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    # an old-PyTorch file without BatchNorm counters loads too; a stray or missing key is named
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    loaded = load_syncnet(tmp_path / "old.model")
    assert not loaded.training
    assert torch.equal(loaded.netcnnlip[0].weight, state["netcnnlip.0.weight"])
    torch.save({**old, "netcnnaud.99.weight": torch.zeros(1)}, tmp_path / "extra.model")
    with pytest.raises(WeightsError, match="netcnnaud.99.weight"):
        load_syncnet(tmp_path / "extra.model")
    torch.save({k: v for k, v in old.items() if k != "netfclip.3.bias"}, tmp_path / "short.model")
    with pytest.raises(WeightsError, match="netfclip.3.bias"):
        load_syncnet(tmp_path / "short.model")
    with pytest.raises(WeightsError, match="cannot be downloaded"):
        load_syncnet(tmp_path / "absent.model")


def test_embedding_shapes():
    model = SyncNet().eval()
    with torch.no_grad():
        assert model.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)
        assert model.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)


def test_folded_lip_trunk_gives_forward_lips_embeddings():
    """The scorer's 2-d, BatchNorm-folded lip trunk is the published 3-d network, up to float
    rounding (every BatchNorm's four tensors non-trivial, so a wrong fold shows)."""
    from training.sync.syncnet import fast_forward_lip, folded_lip_trunk

    torch.manual_seed(1)
    model = SyncNet().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.3)
    frames = torch.rand(3, 3, 5, 224, 224) * 255
    with torch.no_grad():
        want = model.forward_lip(frames)
        got = fast_forward_lip(model, folded_lip_trunk(model), frames)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert not torch.equal(got, model.forward_lip(frames.flip(2)))  # the frame order matters


def reference_evaluate(model, frames_rgb: np.ndarray, audio: np.ndarray, vshift: int = 15):
    """syncnet_python's evaluate, restated from its facts on in-memory inputs: BGR float frames
    (1, 3, T, 224, 224), MFCC (1, 1, 13, M), windows 0 .. min_length - 6 in batches of 20."""
    from python_speech_features import mfcc
    from scipy.signal import medfilt

    im = torch.from_numpy(frames_rgb[..., ::-1].astype(float)).float().permute(3, 0, 1, 2)[None]
    cc = torch.from_numpy(mfcc(audio, 16000).T.astype(float)).float()[None, None]
    min_length = min(len(frames_rgb), len(audio) // 640)
    last = min_length - 5
    v, a = [], []
    with torch.no_grad():
        for i in range(0, last, 20):
            idx = range(i, min(last, i + 20))
            v.append(model.forward_lip(torch.cat([im[:, :, t:t + 5] for t in idx])))
            a.append(model.forward_aud(torch.cat([cc[:, :, :, 4 * t:4 * t + 20] for t in idx])))
    v, a = torch.cat(v), torch.cat(a)
    padded = F.pad(a, (0, 0, vshift, vshift))
    dists = torch.stack([F.pairwise_distance(v[[i]].repeat(2 * vshift + 1, 1), padded[i:i + 2 * vshift + 1])
                         for i in range(len(v))])
    mean = dists.mean(0)
    k = int(torch.argmin(mean))
    conf = torch.median(mean) - mean[k]
    fconf = medfilt((torch.median(mean) - dists[:, k]).numpy().astype(np.float64), 9)
    return vshift - k, float(mean[k]), float(conf), fconf, len(v)


def test_streaming_scorer_equals_reference_evaluate(tmp_path):
    from training.sync.audio import int16_scale
    from training.sync.scorers import SyncNetScorer

    torch.set_num_threads(2)
    scorer = SyncNetScorer(save_random_weights(tmp_path / "w.model", seed=3))
    rng = np.random.default_rng(0)
    n = 31  # 26 windows: a full batch of 20 and a partial one
    frames = rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)
    audio = int16_scale((0.2 * rng.normal(size=n * 640 + 100)).clip(-1, 1).astype(np.float32))
    consumed = []

    def crops():  # more frames than the audio covers: the scorer stops reading at the audio's end
        for i in range(n + 40):
            consumed.append(i)
            yield frames[i % n]

    score = scorer.score_arrays(crops(), audio)
    offset, lse_d, lse_c, fconf, windows = reference_evaluate(scorer.model, frames, audio)
    assert windows == 26 and score.windows == 26
    assert len(consumed) <= n + 1
    assert score.offset == offset
    assert score.min_dist == pytest.approx(lse_d, rel=1e-5)
    assert score.confidence == pytest.approx(lse_c, rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(score.framewise_confidence, fconf, rtol=1e-4, atol=1e-5)
