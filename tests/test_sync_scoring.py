"""SyncNet scoring follows syncnet_python exactly: MFCC, int16 scale, BGR, windows, table, LSE."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.sync.audio import (int16_scale, mfcc_window, n_mfcc_rows, syncnet_mfcc,
                                 syncnet_window_count)
from training.sync.crops import pipeline_crop, smooth_boxes, to_syncnet_input
from training.sync.scoring import DistanceBand, cosine_rows, distance_table, score_table


def speechlike(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.normal(size=n)
    return np.clip(x, -1, 1).astype(np.float32)


# ---------------------------------------------------------------- audio
@pytest.mark.parametrize("n", [300, 400, 401, 16000, 16000 * 3 + 123])
def test_mfcc_equals_python_speech_features(n):
    from python_speech_features import mfcc

    audio = int16_scale(speechlike(n))
    direct = mfcc(audio, 16000).T
    assert direct.shape == (13, n_mfcc_rows(n))
    np.testing.assert_array_equal(syncnet_mfcc(audio), direct)
    # chunked (7 rows at a time): the same numbers up to BLAS/FFT rounding of a different batch size
    np.testing.assert_allclose(syncnet_mfcc(audio, chunk_rows=7), direct, rtol=1e-12, atol=1e-12)


def test_int16_scale_and_why_it_matters():
    from python_speech_features import mfcc

    ints = np.array([-32768, -1, 0, 1, 12345, 32767], np.int16)
    assert np.array_equal(int16_scale(ints.astype(np.float32) / 32768), ints)  # stored FLAC round trip
    audio = speechlike(16000)
    with pytest.raises(TypeError):
        syncnet_mfcc(audio)  # float [-1, 1] audio is refused: the reference reads int16 values
    as_int = syncnet_mfcc(int16_scale(audio))
    as_float = mfcc(int16_scale(audio).astype(np.float64) / 32768, 16000).T
    # c0 is the log frame energy: the int16 scale adds ln(32768^2) = 20.79 to it, and only to it
    np.testing.assert_allclose(as_int[0] - as_float[0], 2 * np.log(32768), atol=1e-6)
    np.testing.assert_allclose(as_int[1:], as_float[1:], atol=1e-6)


def test_audio_windows_and_window_count():
    mfcc = np.arange(13 * 100, dtype=np.float64).reshape(13, 100)
    w = mfcc_window(mfcc, 3)
    assert w.shape == (1, 13, 20) and np.array_equal(w[0], mfcc[:, 12:32])  # rows [4t, 4t + 20)
    with pytest.raises(IndexError):
        mfcc_window(mfcc, 21)
    assert syncnet_window_count(125, 125 * 640) == 120  # the reference's loop stops at min_length - 5
    assert syncnet_window_count(125, 100 * 640 + 639) == 95  # min_length = floor(samples / 640)
    assert syncnet_window_count(5, 10 * 640) == 0


# ---------------------------------------------------------------- video
def test_bgr_float_0_255_layout():
    crops = np.zeros((5, 224, 224, 3), np.uint8)
    crops[..., 0] = 200  # red in RGB
    crops[2, ..., 2] = 7  # some blue in frame 2
    x = to_syncnet_input(crops)
    assert x.shape == (3, 5, 224, 224) and x.dtype == np.float32
    assert x[2].max() == 200 and x[0, 2].max() == 7 and x[1].max() == 0  # BGR: red is channel 2
    assert x.max() == 200.0  # no normalisation


def test_pipeline_crop_geometry():
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[:, :, 1] = np.arange(400, dtype=np.uint8)[None, :] % 256  # column index in green
    x, y, s = 200.0, 100.0, 50.0
    crop = pipeline_crop(frame, x, y, s)
    assert crop.shape == (224, 224, 3)
    # rows [y - s, y + s * 1.8) = [50, 190), columns [x - 1.4 s, x + 1.4 s) = [130, 270): square
    import cv2
    np.testing.assert_array_equal(crop, cv2.resize(frame[50:190, 130:270], (224, 224)))
    # near the top-left corner the crop reaches into run_pipeline's padding of value 110
    corner = pipeline_crop(frame, 20.0, 20.0, 50.0)
    assert np.all(corner[0, 0] == 110)


def test_box_smoothing_is_run_pipeline_medfilt():
    from scipy.signal import medfilt

    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(90, 110, 40), rng.uniform(40, 60, 40)])
    boxes = np.column_stack([boxes, boxes + rng.uniform(80, 120, (40, 2))])
    xs, ys, ss = smooth_boxes(boxes).T
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    np.testing.assert_array_equal(ss, medfilt(s, 13))
    np.testing.assert_array_equal(xs, medfilt((boxes[:, 0] + boxes[:, 2]) / 2, 13))


# ---------------------------------------------------------------- table and figures
def test_table_lse_and_offset_by_hand():
    # 1-d embeddings; the audio is the video's sequence delayed by one window
    video = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    audio = torch.tensor([[5.0], [0.0], [1.0], [2.0]])
    table = distance_table(video, audio, vshift=1)
    # audio zero-padded by 1: [0, 5, 0, 1, 2, 0]; row i compares video i with padded[i:i+3]
    expected = np.array([[0, 5, 0], [4, 1, 0], [2, 1, 0], [2, 1, 3]], np.float32)
    np.testing.assert_allclose(table.numpy(), expected, atol=2e-6)  # pairwise_distance adds eps 1e-6
    score = score_table(table, vshift=1)
    np.testing.assert_allclose(score.mean_dist, [2.0, 2.0, 0.75], atol=2e-6)  # column means
    assert score.offset == -1  # vshift - argmin: audio one window late -> -1, as the reference prints
    assert score.min_dist == pytest.approx(0.75, abs=2e-6)  # LSE-D
    assert score.confidence == pytest.approx(1.25, abs=2e-6)  # LSE-C = median - min = 2 - 0.75
    assert score.windows == 4
    assert score.window_offsets().tolist() == [1, -1, -1, 0]  # per-window argmin (first on ties), V - k


def test_table_matches_the_reference_loop_and_padding_rule():
    torch.manual_seed(0)
    n, v = 40, 15
    video, audio = torch.randn(n, 32), torch.randn(n, 32)
    padded = F.pad(audio, (0, 0, v, v))
    loop = torch.stack([F.pairwise_distance(video[[i]].repeat(2 * v + 1, 1), padded[i:i + 2 * v + 1])
                        for i in range(n)])
    table = distance_table(video, audio)
    assert torch.equal(table, loop)
    # padding: window 0 at offset index 0 compares with a zero vector
    assert table[0, 0].item() == pytest.approx(float((video[0] + 1e-6).norm()), rel=1e-6)
    score = score_table(table)
    mean = loop.mean(0)
    k = int(torch.argmin(mean))
    assert score.offset == v - k
    assert score.confidence == pytest.approx(float(torch.median(mean) - mean[k]), rel=1e-6)
    from scipy.signal import medfilt
    np.testing.assert_allclose(score.framewise_confidence,
                               medfilt((torch.median(mean) - loop[:, k]).numpy().astype(np.float64), 9),
                               rtol=1e-6)
    masked = score_table(table, edges="mask")  # VocaLiST-style: padded entries left out
    valid = np.array([[0 <= i + j - v < n for j in range(2 * v + 1)] for i in range(n)])
    np.testing.assert_allclose(masked.mean_dist, (loop.numpy() * valid).sum(0) / valid.sum(0), rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 20])
def test_streaming_band_equals_whole_table(batch):
    torch.manual_seed(1)
    n = 53
    video, audio = torch.randn(n, 16), torch.randn(n, 16)
    for rows, full in ((None, distance_table(video, audio)),
                       (cosine_rows, distance_table(video.relu(), audio.relu(), rows=cosine_rows))):
        band = DistanceBand(rows) if rows else DistanceBand()
        for i in range(0, n, batch):
            if rows:
                band.add(video[i:i + batch].relu(), audio[i:i + batch].relu())
            else:
                band.add(video[i:i + batch], audio[i:i + batch])
            assert len(band.audio[0]) <= batch + 2 * 15 + 1  # bounded, whatever n
        np.testing.assert_allclose(band.finish(), full.numpy(), atol=1e-6)
