"""training/: loader, pair sampler, Eq. 1 loss, UniSync model, evaluation and fit.py.

The fixture is a tiny store with the real layout (catalog/utterances.parquet + one tar series per
field) whose signals are related the way speech and faces are: one loudness envelope per
utterance drives both the audio (mel energy, a HuBERT direction) and the mouth opening (landmarks,
rgb, parsing lips, a 3DMM expression coefficient), so sync is
learnable and a shifted or foreign audio window is detectably out of sync.
"""
from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from catalog.layout import table_path, tar_path
from features import rgb as rgb_codec
from features.codecs import encode_npy
from features.fields import ERROR_EXT
from features.landmarks import CHIN, LIPS
from catalog.tars import tar_bytes

from training.combos import COMBOS, combo_fields, parse_combo
from training.data import (ShardBuffer, StoreError, load_splits, load_utterances, prepare_landmarks,
                           rank_shards)
from training.evaluate import accuracy_report, eval_set
from training.fit import load_checkpoint, parse_args, train
from training.runtime import read_checkpoint
from training.loss import make_optimizer, margin_bce, margins_for
from training.model import UniSync, count_parameters
from training.sampler import PairSampler
from training.windows import make_batch

DATASET = "fake"
SPLIT_OF = {0: "train", 1: "train", 2: "val", 3: "val", 4: "test", 5: "test"}
LOWER_MOUTH = [i for i in LIPS if i in (14, 17, 84, 87, 178, 181, 314, 317, 402, 405, 91, 321)] + [CHIN]


# ---------------------------------------------------------------------------------------------
# A fake store
# ---------------------------------------------------------------------------------------------
def envelope(rng: np.random.Generator, seconds: float) -> callable:
    """Syllable-like loudness: Gaussian bumps every 0.12-0.3 s with gaps, in [0, ~1]."""
    centres, t = [], rng.uniform(0.0, 0.15)
    while t < seconds + 0.2:
        centres.append((t, rng.uniform(0.025, 0.06), rng.uniform(0.4, 1.0)))
        t += rng.uniform(0.12, 0.3) + (rng.uniform(0.2, 0.4) if rng.random() < 0.15 else 0.0)

    def env(times: np.ndarray) -> np.ndarray:
        out = np.zeros_like(times, dtype=np.float64)
        for c, w, a in centres:
            out += a * np.exp(-0.5 * ((times - c) / w) ** 2)
        return np.clip(out, 0.0, 1.2)
    return env


def fake_utterance(rng: np.random.Generator, speaker: dict, n_frames: int) -> dict[str, bytes | dict]:
    """Member bytes of every field for one utterance of `speaker`: mel and hubert carry the
    loudness envelope, landmarks, rgb, parsing and tdmm the mouth opening it drives."""
    env = envelope(rng, n_frames / 25)
    n_mel = 1 + 640 * n_frames // 200
    loud_mel = env(np.arange(n_mel) / 80.0)
    mel = speaker["base"][:, None] + 6.0 * speaker["formants"][:, None] * loud_mel[None, :]
    mel = np.clip(mel + rng.normal(0, 0.25, mel.shape), -4, 4).astype(np.float16)
    # HuBERT at 50 Hz, 2 rows per video frame: a speaker offset plus the loudness along a
    # direction shared by everyone (what a speech model's features would pick up), plus noise
    loud_hub = env((np.arange(2 * n_frames) + 0.5) / 50.0)
    hub = speaker["hubert"][None, :] + loud_hub[:, None] * HUBERT_DIRECTION[None, :]
    hub = (hub + rng.normal(0, 0.1, hub.shape)).astype(np.float16)
    # mouth opening of frame k: mean loudness over [k/25, (k+1)/25)
    sub = (np.arange(n_frames)[:, None] + (np.arange(4)[None, :] + 0.5) / 4) / 25.0
    opening = env(sub.ravel()).reshape(n_frames, 4).mean(axis=1)
    lm = np.repeat(speaker["shape"][None], n_frames, axis=0).copy()
    lm[:, LOWER_MOUTH, 1] += (speaker["jaw"] * opening)[:, None]
    lm[:, :, :2] += rng.normal(0, 0.6, (n_frames, 1, 2))  # head jitter in the crop
    lm += rng.normal(0, 0.15, lm.shape)
    frames = np.empty((n_frames, 96, 96, 3), np.uint8)
    frames[:] = speaker["skin"]
    labels = np.zeros((n_frames, 96, 96), np.uint8)
    yy, xx = np.mgrid[0:96, 0:96]
    face = ((xx - 48) / 36.0) ** 2 + ((yy - 50) / 44.0) ** 2 <= 1
    nose = (np.abs(xx - 48) <= 5) & (yy >= 40) & (yy <= 58)
    for k in range(n_frames):
        h = 2 + 10 * opening[k]
        mouth = ((xx - 48) / 14.0) ** 2 + ((yy - 70) / h) ** 2 <= 1
        lips = ((xx - 48) / 17.0) ** 2 + ((yy - 70) / (h + 3)) ** 2 <= 1
        frames[k][mouth] = (60, 20, 30)
        labels[k][face] = 1
        labels[k][nose] = 10
        labels[k][lips & (yy < 70)] = 12
        labels[k][lips & (yy >= 70)] = 13
        labels[k][mouth] = 11
    pose = np.zeros((n_frames, 7), np.float32)
    pose[:, :3] = speaker["rotation"] + rng.normal(0, 0.01, (n_frames, 3))
    pose[:, 3:6] = speaker["translation"] + rng.normal(0, 0.5, (n_frames, 3))
    pose[:, 6] = 1.0 + rng.normal(0, 0.005, n_frames)
    expression = rng.normal(0, 0.3, (n_frames, 64)).astype(np.float32)
    expression[:, 0] += speaker["jaw"] * opening
    return {"mel": encode_npy(mel), "landmarks": encode_npy(lm.astype(np.float16)),
            "rgb": rgb_codec.encode(frames),
            "parsing": gzip.compress(encode_npy(labels), compresslevel=1, mtime=0),
            "tdmm": {"tdmm.npy": encode_npy(np.hstack([pose, expression])),
                     "tdmm_id.npy": encode_npy(rng.normal(0, 1, 32).astype(np.float32))},
            "hubert": encode_npy(hub)}


HUBERT_DIRECTION = np.random.default_rng(99).normal(0, 1, 1024).astype(np.float32)
ALL_FIELDS = ("mel", "landmarks", "rgb", "parsing", "tdmm", "hubert")


def ext_of(name: str) -> str:
    from training.data import ext_of as data_ext
    return data_ext(name)


def make_store(root: Path, utts_per_speaker: int = 3, n_frames: int = 50, seed: int = 0,
               shard_size: int = 4, broken: bool = True, speakers: int = 6,
               split_of: dict | None = None) -> Path:
    """6 speakers (2 train, 2 val, 2 test) with the exact store layout and every field the
    trainer reads; with `broken`, one utterance has an rgb failure placeholder and one a
    landmarks failure placeholder."""
    split_of = split_of or SPLIT_OF
    rng = np.random.default_rng(seed)
    template = rng.uniform(20, 76, (478, 3))
    template[:, 2] -= 48
    rows, members = [], {f: {} for f in ALL_FIELDS}
    n = 0
    for s in range(speakers):
        speaker = {"base": rng.uniform(-3.5, -2.0) + rng.normal(0, 0.3, 80),
                   "formants": np.abs(np.sin(np.linspace(0, rng.uniform(3, 9), 80))) + 0.2,
                   "shape": template + rng.normal(0, 3.0, (478, 3)),
                   "jaw": rng.uniform(5.0, 9.0),
                   "skin": rng.integers(120, 230, 3),
                   "hubert": rng.normal(0, 0.5, 1024).astype(np.float32),
                   "rotation": rng.normal(0, 0.1, 3), "translation": rng.normal(0, 3, 3)}
        for u in range(utts_per_speaker):
            key = f"spk{s}_u{u}"
            frames = n_frames + int(rng.integers(-4, 5))
            data = fake_utterance(rng, speaker, frames)
            shard, index = divmod(n, shard_size)
            status = {f: "ok" for f in members}
            if broken and (s, u) == (0, 1):
                status["rgb"] = "error"
            if broken and (s, u) == (1, 2):
                status["landmarks"] = "error"
            for f in members:
                if status[f] != "ok":
                    items = [(f"{key}.{ERROR_EXT}", json.dumps({"status": "error"}).encode())]
                elif isinstance(data[f], dict):
                    items = [(f"{key}.{ext}", blob) for ext, blob in data[f].items()]
                else:
                    items = [(f"{key}.{ext_of(f)}", data[f])]
                members[f].setdefault(shard, []).extend(items)
            rows.append({"utt_id": f"{s}/{u}", "key": key, "dataset": DATASET,
                         "speaker_id": f"spk{s}", "split": split_of[s], "shard_id": shard,
                         "index_in_shard": index, "n_frames": frames,
                         "status": "ok" if all(v == "ok" for v in status.values()) else "error",
                         **{f"field_{f}": v for f, v in status.items()}})
            n += 1
    for f, shards in members.items():
        for shard, mem in shards.items():
            path = tar_path(root, DATASET, f, shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar_bytes(mem))
    schema = pa.schema([("utt_id", pa.string()), ("key", pa.string()), ("dataset", pa.string()),
                        ("speaker_id", pa.string()), ("split", pa.string()),
                        ("shard_id", pa.int32()), ("index_in_shard", pa.int32()),
                        ("n_frames", pa.int32()), ("status", pa.string())]
                       + [(f"field_{f}", pa.string()) for f in ALL_FIELDS])
    path = table_path(root, "utterances")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


# ---------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------
def test_loader_reads_only_the_combo_fields(store, tmp_path):
    copy = shutil.copytree(store, tmp_path / "store")
    for name in ("rgb", "hubert", "parsing", "tdmm"):  # mel_landmarks must never open these
        shutil.rmtree(copy / "shards" / DATASET / name)
    utts = load_utterances(copy, combo_fields("mel_landmarks"), ["train"])
    assert {u.speaker_id for u in utts} == {"spk0", "spk1"}
    assert len(utts) == 5  # spk1_u2's landmarks failed; spk0_u1's rgb failure does not matter
    assert all(set(u.data) == {"mel", "landmarks"} for u in utts)
    u = utts[0]
    assert u.data["mel"].shape == (80, 1 + 640 * u.n_frames // 200)
    assert u.data["landmarks"].shape == (u.n_frames, 478, 3)
    assert u.data["landmarks"].dtype == np.float16  # kept as stored; windows are converted
    with pytest.raises(StoreError, match="rgb"):
        load_utterances(copy, combo_fields("mel_rgb"), ["train"])


def test_loader_counts_bytes_per_field_and_reads_nothing_else(store):
    from collections import Counter
    from training.data import read_catalog, select_rows, stream_utterances
    rows = read_catalog(store)
    counted = Counter()
    utts = list(stream_utterances(store, ["hubert", "tdmm"], select_rows(rows, ["hubert", "tdmm"],
                                  ["train"]), rows, bytes_read=counted))
    assert set(counted) == {"hubert", "tdmm"} and len(utts) == 6
    sizes = {f: sum(p.stat().st_size for p in (store / "shards" / DATASET / f).glob("*.tar"))
             for f in ("hubert", "tdmm")}
    for f in counted:  # the train shards are 2 of the 5 shards: part of each series, read once
        assert 0 < counted[f] < sizes[f]
    assert utts[0].data["hubert"].shape == (2 * utts[0].n_frames, 1024)
    assert utts[0].data["tdmm"].shape == (utts[0].n_frames, 71)


def test_loader_keeps_rgb_as_bytes_and_skips_failed_utterances(store):
    utts = load_splits(store, ["mel", "rgb"], ["train", "val", "test"])
    assert [u.key for u in utts["train"]] == ["spk0_u0", "spk0_u2", "spk1_u0", "spk1_u1", "spk1_u2"]
    assert isinstance(utts["train"][0].data["rgb"], bytes)
    assert len(utts["val"]) == 6 and len(utts["test"]) == 6


def test_loader_rejects_misaligned_field_tars(store, tmp_path):
    copy = shutil.copytree(store, tmp_path / "store")
    path = tar_path(copy, DATASET, "mel", 0)
    import tarfile
    with tarfile.open(path) as tar:
        mem = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    mem[0], mem[1] = mem[1], mem[0]  # same members, another order than landmarks and the plan
    path.write_bytes(tar_bytes(mem))
    with pytest.raises(StoreError, match="misaligned"):
        load_utterances(copy, ["mel", "landmarks"], ["train"])


def test_loader_names_the_missing_field_and_empty_split(store):
    with pytest.raises(StoreError, match="fbank"):
        load_utterances(store, ["fbank", "landmarks"], ["train"])
    with pytest.raises(StoreError, match="pretrain"):
        load_utterances(store, ["mel", "landmarks"], ["pretrain"])


def test_landmarks_are_normalised_and_centred():
    lm = np.full((10, 478, 3), 48.0, np.float32)
    lm[:, 0, 0] = np.arange(10) + 43.5  # x = 43.5..52.5, mean 48
    raw = prepare_landmarks(lm, center=False).astype(np.float32)
    assert raw[:, 1].max() == 0 and np.isclose(raw[0, 0, 0], (43.5 - 48) / 48, atol=1e-3)
    centred = prepare_landmarks(lm, center=True).astype(np.float32)
    assert np.allclose(centred.mean(axis=0), 0, atol=1e-3)
    assert np.isclose(centred[0, 0, 0], 4 * (43.5 - 48) / 48, atol=1e-2)


def test_windows_apply_the_same_normalisation_as_prepare_landmarks(store):
    from training.windows import window
    u = load_utterances(store, ["landmarks"], ["val"])[0]
    whole = prepare_landmarks(np.asarray(u.data["landmarks"])).astype(np.float32)
    assert np.allclose(window(u, "landmarks", 3), whole[3:8].reshape(5, -1), atol=2e-2)


def test_rank_shards_are_disjoint_cover_all_and_never_empty():
    shards = [("d", i) for i in range(7)]
    lists = [rank_shards(shards, r, 3) for r in range(3)]
    assert sorted(s for lst in lists for s in lst) == shards
    assert max(map(len, lists)) - min(map(len, lists)) <= 1
    few = [rank_shards(shards[:2], r, 4) for r in range(4)]  # more ranks than shards: share
    assert all(len(lst) == 1 for lst in few) and {lst[0] for lst in few} == set(shards[:2])


def test_shard_buffer_streams_resampled_passes_and_resumes(store):
    from training.data import read_catalog, select_rows, shard_list
    rows = read_catalog(store)
    train = select_rows(rows, ["mel", "landmarks"], ["train", "val", "test"])
    shards = shard_list(train)
    buf = ShardBuffer(store, ["mel", "landmarks"], train, rows, shards, size=2, seed=3)
    assert buf.streaming and len(buf.buffered) == 2
    seen = list(buf.buffered)
    for _ in range(2 * len(shards)):
        buf.advance()
        seen.append(buf.buffered[-1])
        assert len(buf.buffered) == 2 and buf.buffered[0] != buf.buffered[1] or len(shards) < 2
    first_pass = seen[:len(shards)]
    assert sorted(first_pass) == shards  # each pass is a permutation of the rank's shards
    assert buf.passes >= 2
    state = buf.state()
    nxt = [buf.advance() and buf.buffered[-1] for _ in range(4)]
    other = ShardBuffer(store, ["mel", "landmarks"], train, rows, shards, size=2, seed=99)
    other.restore(state)
    assert [other.advance() and other.buffered[-1] for _ in range(4)] == nxt
    assert [u.key for u in other.utterances] == [u.key for u in buf.utterances]


# ---------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------
def test_sampler_proportions_kinds_and_speakers(store):
    utts = load_utterances(store, ["mel", "landmarks"], ["train"])
    pairs = PairSampler(utts, seed=3, cross_speaker_ratio=0.2).sample(4000)
    kinds = np.array([p.kind for p in pairs])
    labels = np.array([p.label for p in pairs])
    assert abs((labels == 1).mean() - 0.5) < 0.03
    assert np.all(labels[kinds == "pos"] == 1) and np.all(labels[kinds != "pos"] == 0)
    assert abs((kinds == "cross").sum() / (labels == 0).sum() - 0.2) < 0.03
    for p in pairs:
        assert 0 <= p.v_t < utts[p.v_utt].n_windows and 0 <= p.a_t < utts[p.a_utt].n_windows
        if p.kind == "pos":
            assert (p.a_utt, p.a_t) == (p.v_utt, p.v_t)
        elif p.kind == "same":
            assert p.a_utt == p.v_utt and abs(p.shift) >= 2
        else:
            assert utts[p.a_utt].speaker_id != utts[p.v_utt].speaker_id
    shifts = np.array([abs(p.shift) for p in pairs if p.kind == "same"])
    assert abs((shifts <= 4).mean() - 0.5) < 0.05  # half overlapping (2..4), half not (>= 5)
    assert shifts.min() == 2 and shifts.max() >= 5


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_sampler_cross_speaker_ratio(store, ratio):
    utts = load_utterances(store, ["mel", "landmarks"], ["train"])
    pairs = PairSampler(utts, seed=1, cross_speaker_ratio=ratio).sample(3000)
    neg = [p for p in pairs if p.label == 0]
    assert abs(sum(p.kind == "cross" for p in neg) / len(neg) - ratio) < 0.04


def test_sampler_is_deterministic_by_seed_and_resumes_from_its_state(store):
    utts = load_utterances(store, ["mel", "landmarks"], ["train"])
    a = PairSampler(utts, seed=7).sample(200)
    assert a == PairSampler(utts, seed=7).sample(200)
    assert a != PairSampler(utts, seed=8).sample(200)
    s = PairSampler(utts, seed=7)
    s.sample(100)
    state = s.state()
    rest = s.sample(100)
    t = PairSampler(utts, seed=123)
    t.set_state(state)
    assert t.sample(100) == rest == a[100:] and t.drawn == 200


def test_one_speaker_split_borrows_cross_speaker_audio(store):
    val = load_utterances(store, ["mel", "landmarks"], ["val"])
    spk2 = [u for u in val if u.speaker_id == "spk2"]
    with pytest.raises(ValueError, match="two speakers"):
        PairSampler(spk2, seed=0)
    data = eval_set(spk2, 300, others=[u for u in val if u.speaker_id == "spk3"])
    cross = [p for p in data.pairs if p.kind == "cross"]
    assert cross and all(data.pool[p.a_utt].speaker_id == "spk3" for p in cross)
    assert all(data.utts[p.v_utt].speaker_id == "spk2" for p in data.pairs)


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------
def test_margin_bce_matches_hand_computation():
    p = torch.tensor([0.9, 0.25, 0.05, 0.6, 1.0, 0.0, 0.8])
    y = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    m = torch.tensor([0.0, 0.3, 0.1, 0.1, 0.0, 0.0, 0.7])
    eps = 1e-7
    terms = [
        -math.log(0.9),
        -math.log(1 - 0.0),  # 0.25 is below its margin 0.3: free
        -math.log(1 - 0.0),  # 0.05 below 0.1: free
        -math.log(1 - 0.5),  # max(0, 0.6 - 0.1)
        -math.log(1 - eps),  # p = 1 clamped to 1 - eps
        -math.log(eps),  # p = 0 clamped to eps: large but finite
        -math.log(1 - 0.1),  # cross-speaker margin 0.7: max(0, 0.8 - 0.7)
    ]
    got = margin_bce(p, y, m, eps=eps)
    assert math.isclose(got.item(), sum(terms) / len(terms), rel_tol=1e-4)
    # without margins the easy negatives cost something again
    assert margin_bce(p[:4], y[:4], 0.0).item() > margin_bce(p[:4], y[:4], m[:4]).item()
    # a negative at p = 1 with no margin: clamped to 1 - eps, so -log(eps) (float64 exactly;
    # float32 rounds 1 - 1e-7 to 1 - 1.19e-7) rather than inf
    one, zero = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    assert math.isclose(margin_bce(one, zero).item(), -math.log(eps), rel_tol=1e-6)
    assert math.isclose(margin_bce(one.float(), zero.float()).item(), -math.log(1.1920929e-7),
                        rel_tol=1e-4)


def test_margins_follow_pair_kind():
    kinds = torch.tensor([0, 1, 2, 1])
    assert margins_for(kinds, (0.1, 0.3)).tolist() == pytest.approx([0.0, 0.1, 0.3, 0.1])


def test_optimizer_is_papers_adam_with_coupled_l2():
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert g["lr"] == 1e-4 and g["betas"] == (0.5, 0.999) and g["weight_decay"] == 1e-4
    # coupled: Adam(weight_decay=wd) on L is Adam(0) on L + wd/2 ||w||^2 (the paper's L2 term)
    w0, wd = torch.tensor([0.5, -1.0, 2.0]), 0.1
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    oa, ob = make_optimizer([a], 1e-2, wd), make_optimizer([b], 1e-2, 0.0)
    for _ in range(3):
        for w, o, l2 in ((a, oa, 0.0), (b, ob, wd / 2)):
            o.zero_grad()
            ((w ** 3).sum() + l2 * (w ** 2).sum()).backward()
            o.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_cosine_lr_schedule_by_hand():
    from training.loss import lr_at

    assert [lr_at(s, 1e-3, 100) for s in (0, 50, 99)] == [1e-3] * 3  # constant by default
    assert lr_at(0, 1e-3, 101, "cosine") == pytest.approx(1e-3)
    assert lr_at(50, 1e-3, 101, "cosine") == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: the mean
    assert lr_at(100, 1e-3, 101, "cosine") == pytest.approx(1e-4)  # the last step: the floor
    assert lr_at(500, 1e-3, 101, "cosine", floor=0.0) == pytest.approx(0.0, abs=1e-12)  # past the end: held
    rates = [lr_at(s, 1.0, 11, "cosine") for s in range(11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at(3, 1e-3, 10, "linear")


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
SHAPES = {"landmarks": (5, 1434), "rgb": (15, 48, 96), "parsing": (5, 48, 96), "tdmm": (5, 71),
          "mel": (1, 80, 16), "hubert": (10, 1024)}
RAW_SHAPES = {"rgb": (5, 48, 96, 3)}
RAW_DTYPES = {"rgb": torch.uint8, "parsing": torch.uint8, "landmarks": torch.float16,
              "tdmm": torch.float32, "mel": torch.float16, "hubert": torch.float16}


@pytest.mark.parametrize("combo", COMBOS)
def test_model_shapes_and_probability_range(store, combo):
    audio, visual = parse_combo(combo)
    utts = load_utterances(store, [audio, visual], ["val"])
    pairs = PairSampler(utts, seed=0).sample(8)
    raw = make_batch(pairs, utts, utts, audio, visual)
    # the loader's windows stay as stored (uint8 pixels / ids, float16 features) ...
    assert tuple(raw.visual.shape) == (8, *RAW_SHAPES.get(visual, SHAPES[visual]))
    assert raw.visual.dtype == RAW_DTYPES[visual] and raw.audio.dtype == RAW_DTYPES[audio]
    batch = raw.to("cpu")  # ... and become model inputs on the device
    assert tuple(batch.visual.shape) == (8, *SHAPES[visual])
    assert tuple(batch.audio.shape) == (8, *SHAPES[audio])
    assert batch.visual.dtype == (torch.uint8 if visual == "parsing" else torch.float32)
    model = UniSync(combo, width=0.25).eval()
    p = model(batch.visual, batch.audio)
    assert p.shape == (8,) and torch.all((p >= 0) & (p <= 1))
    v, a = model.embed_visual(batch.visual), model.embed_audio(batch.audio)
    assert v.shape == a.shape == (8, 128) and torch.all(v >= 0) and torch.all(a >= 0)
    # the pooled shapes are fixed, so every combo's trunks are the same modules
    pooled = model.visual_pool(model.visual_adapter(batch.visual))
    assert tuple(pooled.shape[1:]) == (32, 24, 24)
    assert tuple(model.audio_pool(model.audio_adapter(batch.audio)).shape[1:]) == (32, 9, 6)


def test_parsing_window_keeps_class_ids_of_the_lower_half(store):
    from training.windows import window
    u = load_utterances(store, ["parsing"], ["val"])[0]
    x = window(u, "parsing", 2)
    assert x.shape == (5, 48, 96) and x.dtype == np.uint8
    assert np.array_equal(x, np.asarray(u.data["parsing"])[2:7, 48:])
    assert {11, 12, 13} <= set(np.unique(x).tolist())


def test_rgb_window_is_the_lower_half_of_the_window_frames(store):
    utts = load_utterances(store, ["mel", "rgb"], ["val"])
    u = utts[0]
    from training.windows import window
    x = window(u, "rgb", 3)
    frames = rgb_codec.decode(u.data["rgb"], 3, 8)
    assert x.shape == (15, 48, 96)
    assert np.allclose(x[3:6], frames[1, 48:].transpose(2, 0, 1) / 255.0)
    u.frame_cache = {}  # fit.py --cache-frames: decode once, same windows
    assert np.array_equal(window(u, "rgb", 3), x) and sorted(u.frame_cache) == [3, 4, 5, 6, 7]
    assert np.array_equal(window(u, "rgb", 5), window(utts[0], "rgb", 5))
    assert sorted(u.frame_cache) == list(range(3, 10))


@pytest.mark.parametrize("audio", ["mel", "hubert"])
def test_windows_keep_audio_and_video_in_sync(store, audio):
    """The fixture's audio energy and mouth opening come from one envelope: sliced on the shared
    timebase, they correlate best at shift 0 (an off-by-some-frames slicing bug would move it)."""
    from training.windows import window
    utts = load_utterances(store, [audio, "landmarks"], ["val", "test"])
    scores = {}
    for shift in (-3, -2, 0, 2, 3):
        r = []
        for u in utts:
            ts = range(max(0, -shift), min(u.n_windows, u.n_windows - shift))
            if audio == "mel":
                energy = [window(u, "mel", t + shift)[0].mean() for t in ts]
            else:
                energy = [window(u, "hubert", t + shift) @ HUBERT_DIRECTION for t in ts]
                energy = [e.mean() for e in energy]
            mouth = [window(u, "landmarks", t).reshape(5, 478, 3)[:, LOWER_MOUTH, 1].mean() for t in ts]
            r.append(np.corrcoef(energy, mouth)[0, 1])
        scores[shift] = float(np.mean(r))
    assert max(scores, key=scores.get) == 0 and scores[0] > 0.5, scores
    u = utts[0]
    if audio == "mel":
        assert np.array_equal(window(u, "mel", 7)[0], u.data["mel"][:, 22:38].astype(np.float32))
    else:
        assert np.array_equal(window(u, "hubert", 7), u.data["hubert"][14:24].astype(np.float32))


def test_paper_size_parameters_and_flops():
    from training.model import describe
    for combo in COMBOS:
        d = describe(combo, width=1.0)
        assert abs(d["params"] - 16.3e6) / 16.3e6 < 0.10, (combo, d["params"])
        assert abs(d["macs_per_pair"] - 1.73e9) / 1.73e9 < 0.10, (combo, d["macs_per_pair"])
    assert count_parameters(UniSync("mel_landmarks", width=0.25)) < 0.1 * 16.3e6


def test_print_model_cli(capsys):
    from training.fit import main
    assert main(["--print-model", "--combo", "hubert_tdmm"]) == 0
    out = capsys.readouterr().out
    assert "hubert_tdmm" in out and "MACs" in out


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def test_accuracy_report_is_balanced():
    from training.sampler import Pair
    pairs = [Pair(0, 0, 0, 0, 1, "pos")] * 2 + [Pair(0, 0, 0, 5, 0, "same")] * 6 + \
            [Pair(0, 0, 1, 0, 0, "cross")] * 2
    p = np.array([0.9, 0.2] + [0.1] * 6 + [0.8, 0.1])
    r = accuracy_report(p, pairs)
    assert r["per_type"] == {"pos": 0.5, "same": 1.0, "cross": 0.5, "same_far": 1.0}
    assert math.isclose(r["balanced_accuracy"], (0.5 + 7 / 8) / 2)
    assert math.isclose(r["accuracy"], 8 / 10)
    assert r["balanced_per_type"] == {"same": 0.75, "cross": 0.5, "same_far": 0.75}


def test_offset_protocols_on_a_known_sync_matrix():
    from training.evaluate import utterance_offset, window_offsets
    n = 60
    t = np.arange(n)
    P = np.clip(1 - np.abs(t[None, :] - t[:, None] - 0) / 4, 0, 1)  # peaked where audio = visual
    assert np.all(window_offsets(P) == 0) and len(window_offsets(P)) == n - 30
    for s in range(-10, 11):
        assert utterance_offset(P, s) == s
    noisy = P + np.random.default_rng(0).normal(0, 0.3, P.shape)  # averaging beats the noise
    assert all(abs(utterance_offset(noisy, s) - s) <= 1 for s in (-10, -3, 0, 4, 10))
    assert utterance_offset(P[:20, :20], 10) is None  # too short for the search


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------
def fit_args(store, out, *extra):
    return parse_args(["--combo", "mel_landmarks", "--store", str(store), "--out", str(out),
                       "--width", "0.25", "--lr", "1e-3", "--batch-size", "32", "--no-progress",
                       "--threads", "1", "--workers", "1", *extra])  # one loader worker on any machine


def test_fit_lowers_the_loss_and_writes_its_outputs(store, tmp_path):
    out = tmp_path / "run"
    final = train(fit_args(store, out, "--steps", "60", "--eval-every", "30", "--eval-pairs", "200",
                           "--log-every", "10", "--offset-windows", "10"))
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl", "final.json", "ranks.json"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["loss"] < records[0]["loss"] - 0.05
    assert "val_balanced_accuracy" in records[2] and "val_balanced_accuracy" in records[-1]
    on_disk = json.loads((out / "final.json").read_text())
    assert on_disk == json.loads(json.dumps(final))
    assert final["combo"] == "mel_landmarks" and final["steps"] == 60 and final["width"] == 0.25
    assert final["params"] == count_parameters(UniSync("mel_landmarks", 0.25))
    for split in ("val", "test"):  # held-out speakers: 60 steps already beat chance clearly
        assert final[split]["balanced_accuracy"] > 0.6, final[split]
        assert set(final[split]["per_type"]) >= {"pos", "same", "cross"}
        assert final[split]["utterance_offset_trials"] == 21 * 6
        assert 0 <= final[split]["utterance_offset_accuracy"] <= 1
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 60 and ckpt["args"]["combo"] == "mel_landmarks"
    assert "optimizer" in ckpt and isinstance(model, UniSync)
    assert len(ckpt["rank_states"]) == 1

    from training.evaluate import main as evaluate_main
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = evaluate_main(["--checkpoint", str(out / "best.pt"), "--store", str(store),
                            "--split", "test", "--json", "--pairs", "200", "--threads", "1"])
    report = json.loads(buf.getvalue())
    assert rc == 0 and report["split"] == "test" and report["n_pairs"] == 200
    assert {"balanced_accuracy", "per_type", "balanced_per_type", "offset_accuracy",
            "offset_mean_abs_error", "utterance_offset_accuracy",
            "utterance_offset_mean_abs_error"} <= set(report)
    assert math.isclose(report["balanced_accuracy"], final["test"]["balanced_accuracy"], abs_tol=0.05)


# image combos are ~10x dearer per step: narrower and smaller batches; geometry combos get more
# (cheap) steps, as their per-frame MLP takes a few dozen steps to find the mouth
FEW_STEPS = {"image": ("0.125", "16", "2e-3", "30", "10"), "geometry": ("0.25", "32", "1e-3", "60", "20")}


@pytest.mark.parametrize("combo", COMBOS)
def test_every_combo_trains_and_its_loss_falls(store, tmp_path, combo):
    width, batch, lr, steps, every = FEW_STEPS["image" if parse_combo(combo)[1] in ("rgb", "parsing")
                                               else "geometry"]
    out = tmp_path / combo
    train(parse_args(["--combo", combo, "--store", str(store), "--out", str(out), "--width", width,
                      "--lr", lr, "--batch-size", batch, "--steps", steps, "--log-every", every,
                      "--eval-every", "0", "--eval-pairs", "64", "--offset-windows", "0",
                      "--no-progress", "--threads", "1"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [int(every) * k for k in (1, 2, 3)]
    assert records[-1]["loss"] < records[0]["loss"] - 0.03, records


def test_resume_continues_exactly(store, tmp_path):
    """N steps straight == N/2 steps, then --resume to N: same step count, sampler draws, losses
    and weights."""
    common = ("--eval-every", "4", "--eval-pairs", "64", "--log-every", "1", "--offset-windows", "0")
    train(fit_args(store, tmp_path / "straight", "--steps", "8", *common))
    train(fit_args(store, tmp_path / "split", "--steps", "4", *common))
    half = read_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert half["step"] == 4
    final = train(fit_args(store, tmp_path / "split", "--steps", "8", "--resume", *common))
    assert final["steps"] == 8 and final["resumed_from"] == 4
    a = read_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = read_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    assert a["rank_states"][0]["sampler"] == b["rank_states"][0]["sampler"]  # same draws made
    la = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 9))
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5, abs=1e-7)
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k


def test_fit_streams_with_a_shard_buffer(store, tmp_path):
    out = tmp_path / "buffered"
    final = train(fit_args(store, out, "--steps", "9", "--buffer-shards", "1", "--refresh-every", "3",
                           "--eval-every", "0", "--eval-pairs", "64", "--offset-windows", "0"))
    assert final["steps"] == 9
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert len(ckpt["rank_states"][0]["buffer"]["buffered"]) == 1


def test_fit_cli_reports_missing_field(store, tmp_path, capsys):
    from training.fit import main
    copy = shutil.copytree(store, tmp_path / "store")
    shutil.rmtree(copy / "shards" / DATASET / "landmarks")
    rc = main(["--combo", "mel_landmarks", "--store", str(copy), "--out", str(tmp_path / "o"),
               "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "landmarks" in err and str(copy) in err
