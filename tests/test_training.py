"""training/: loader, pair sampler, Eq. 1 loss, UniSync model, evaluation and fit.py.

The fixture is a tiny store with the real layout (catalog/utterances.parquet + one tar series per
field) whose signals are related the way speech and faces are: one loudness envelope per
utterance drives both the mel energy and the mouth opening (landmarks and rgb), so sync is
learnable and a shifted or foreign audio window is detectably out of sync.
"""
from __future__ import annotations

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
from features.fields import ERROR_EXT, FIELDS
from features.landmarks import CHIN, LIPS
from pipelines.tars import tar_bytes

from training.combos import combo_fields, parse_combo
from training.data import StoreError, load_splits, load_utterances, prepare_landmarks
from training.evaluate import accuracy_report, eval_set, evaluate
from training.fit import load_checkpoint, parse_args, train
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


def fake_utterance(rng: np.random.Generator, speaker: dict, n_frames: int) -> dict[str, bytes]:
    """Member bytes of every field for one utterance of `speaker`."""
    env = envelope(rng, n_frames / 25)
    n_mel = 1 + 640 * n_frames // 200
    loud_mel = env(np.arange(n_mel) / 80.0)
    mel = speaker["base"][:, None] + 6.0 * speaker["formants"][:, None] * loud_mel[None, :]
    mel = np.clip(mel + rng.normal(0, 0.25, mel.shape), -4, 4).astype(np.float16)
    # mouth opening of frame k: mean loudness over [k/25, (k+1)/25)
    sub = (np.arange(n_frames)[:, None] + (np.arange(4)[None, :] + 0.5) / 4) / 25.0
    opening = env(sub.ravel()).reshape(n_frames, 4).mean(axis=1)
    lm = np.repeat(speaker["shape"][None], n_frames, axis=0).copy()
    lm[:, LOWER_MOUTH, 1] += (speaker["jaw"] * opening)[:, None]
    lm[:, :, :2] += rng.normal(0, 0.6, (n_frames, 1, 2))  # head jitter in the crop
    lm += rng.normal(0, 0.15, lm.shape)
    frames = np.empty((n_frames, 96, 96, 3), np.uint8)
    frames[:] = speaker["skin"]
    yy, xx = np.mgrid[0:96, 0:96]
    for k in range(n_frames):
        h = 2 + 10 * opening[k]
        mouth = ((xx - 48) / 14.0) ** 2 + ((yy - 70) / h) ** 2 <= 1
        frames[k][mouth] = (60, 20, 30)
    return {"mel": encode_npy(mel), "landmarks": encode_npy(lm.astype(np.float16)),
            "rgb": rgb_codec.encode(frames)}


def make_store(root: Path, utts_per_speaker: int = 3, n_frames: int = 50, seed: int = 0,
               shard_size: int = 4, broken: bool = True) -> Path:
    """6 speakers (2 train, 2 val, 2 test) with the exact store layout; with `broken`, one
    utterance has an rgb failure placeholder and one a landmarks failure placeholder."""
    rng = np.random.default_rng(seed)
    template = rng.uniform(20, 76, (478, 3))
    template[:, 2] -= 48
    rows, members = [], {f: {} for f in ("mel", "landmarks", "rgb")}
    n = 0
    for s in range(6):
        speaker = {"base": rng.uniform(-3.5, -2.0) + rng.normal(0, 0.3, 80),
                   "formants": np.abs(np.sin(np.linspace(0, rng.uniform(3, 9), 80))) + 0.2,
                   "shape": template + rng.normal(0, 3.0, (478, 3)),
                   "jaw": rng.uniform(5.0, 9.0),
                   "skin": rng.integers(120, 230, 3)}
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
                name, blob = ((f"{key}.{FIELDS[f].ext}", data[f]) if status[f] == "ok" else
                              (f"{key}.{ERROR_EXT}", json.dumps({"status": "error"}).encode()))
                members[f].setdefault(shard, []).append((name, blob))
            rows.append({"utt_id": f"{s}/{u}", "key": key, "dataset": DATASET,
                         "speaker_id": f"spk{s}", "split": SPLIT_OF[s], "shard_id": shard,
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
                        ("n_frames", pa.int32()), ("status", pa.string()),
                        ("field_mel", pa.string()), ("field_landmarks", pa.string()),
                        ("field_rgb", pa.string())])
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
    shutil.rmtree(copy / "shards" / DATASET / "rgb")  # mel_landmarks must never open an rgb tar
    utts = load_utterances(copy, combo_fields("mel_landmarks"), ["train"])
    assert {u.speaker_id for u in utts} == {"spk0", "spk1"}
    assert len(utts) == 5  # spk1_u2's landmarks failed; spk0_u1's rgb failure does not matter
    assert all(set(u.data) == {"mel", "landmarks"} for u in utts)
    u = utts[0]
    assert u.data["mel"].shape == (80, 1 + 640 * u.n_frames // 200)
    assert u.data["landmarks"].shape == (u.n_frames, 478, 3)
    with pytest.raises(StoreError, match="rgb"):
        load_utterances(copy, combo_fields("mel_rgb"), ["train"])


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
    with pytest.raises(StoreError, match="hubert"):
        load_utterances(store, ["hubert", "landmarks"], ["train"])
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
    assert abs((shifts <= 4).mean() - 0.5) < 0.05  # half overlapping, half not


def test_sampler_is_deterministic_by_seed(store):
    utts = load_utterances(store, ["mel", "landmarks"], ["train"])
    a = PairSampler(utts, seed=7).sample(200)
    assert a == PairSampler(utts, seed=7).sample(200)
    assert a != PairSampler(utts, seed=8).sample(200)


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
    p = torch.tensor([0.9, 0.25, 0.05, 0.6, 1.0, 0.0])
    y = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    m = torch.tensor([0.0, 0.3, 0.1, 0.1, 0.0, 0.0])
    eps = 1e-7
    terms = [
        -math.log(0.9),
        -math.log(1 - 0.0),  # 0.25 is below its margin 0.3: free
        -math.log(1 - 0.0),  # 0.05 below 0.1: free
        -math.log(1 - 0.5),  # max(0, 0.6 - 0.1)
        -math.log(1 - eps),  # p = 1 clamped to 1 - eps
        -math.log(eps),  # p = 0 clamped to eps: large but finite
    ]
    got = margin_bce(p, y, m, eps=eps)
    assert math.isclose(got.item(), sum(terms) / len(terms), rel_tol=1e-4)
    # without margins the easy negatives cost something again
    assert margin_bce(p[:4], y[:4], 0.0).item() > margin_bce(p[:4], y[:4], m[:4]).item()


def test_margins_follow_pair_kind():
    kinds = torch.tensor([0, 1, 2, 1])
    assert margins_for(kinds, (0.1, 0.3)).tolist() == pytest.approx([0.0, 0.1, 0.3, 0.1])


def test_optimizer_is_papers_adam_with_coupled_l2():
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert g["lr"] == 1e-4 and g["betas"] == (0.5, 0.999) and g["weight_decay"] == 1e-4


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("combo", ["mel_landmarks", "mel_rgb"])
def test_model_shapes_and_probability_range(store, combo):
    audio, visual = parse_combo(combo)
    utts = load_utterances(store, [audio, visual], ["val"])
    pairs = PairSampler(utts, seed=0).sample(8)
    batch = make_batch(pairs, utts, utts, audio, visual)
    expected = {"landmarks": (8, 5, 1434), "rgb": (8, 15, 48, 96)}[visual]
    assert tuple(batch.visual.shape) == expected and tuple(batch.audio.shape) == (8, 1, 80, 16)
    model = UniSync(combo, width=0.25).eval()
    p = model(batch.visual, batch.audio)
    assert p.shape == (8,) and torch.all((p >= 0) & (p <= 1))
    v, a = model.embed_visual(batch.visual), model.embed_audio(batch.audio)
    assert v.shape == a.shape == (8, 128) and torch.all(v >= 0) and torch.all(a >= 0)


def test_rgb_window_is_the_lower_half_of_the_window_frames(store):
    utts = load_utterances(store, ["mel", "rgb"], ["val"])
    u = utts[0]
    from training.windows import window
    x = window(u, "rgb", 3)
    frames = rgb_codec.decode(u.data["rgb"], 3, 8)
    assert x.shape == (15, 48, 96)
    assert np.allclose(x[3:6], frames[1, 48:].transpose(2, 0, 1) / 255.0)


def test_windows_keep_audio_and_video_in_sync(store):
    """The fixture's mel energy and mouth opening come from one envelope: sliced on the shared
    timebase, they correlate best at shift 0 (an off-by-some-frames slicing bug would move it)."""
    from training.windows import window
    utts = load_utterances(store, ["mel", "landmarks"], ["val", "test"])
    scores = {}
    for shift in (-3, -2, 0, 2, 3):
        r = []
        for u in utts:
            ts = range(max(0, -shift), min(u.n_windows, u.n_windows - shift))
            energy = [window(u, "mel", t + shift)[0].mean() for t in ts]
            mouth = [window(u, "landmarks", t).reshape(5, 478, 3)[:, LOWER_MOUTH, 1].mean() for t in ts]
            r.append(np.corrcoef(energy, mouth)[0, 1])
        scores[shift] = float(np.mean(r))
    assert max(scores, key=scores.get) == 0 and scores[0] > 0.5, scores
    u = utts[0]
    assert np.array_equal(window(u, "mel", 7)[0], u.data["mel"][:, 22:38].astype(np.float32))


def test_paper_size_parameter_count():
    n = count_parameters(UniSync("mel_rgb", width=1.0))
    assert abs(n - 16.3e6) / 16.3e6 < 0.10, n
    assert count_parameters(UniSync("mel_landmarks", width=0.25)) < 0.1 * n


# ---------------------------------------------------------------------------------------------
# evaluation and fit
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


def test_fit_lowers_the_loss_and_writes_its_outputs(store, tmp_path):
    out = tmp_path / "run"
    args = parse_args(["--combo", "mel_landmarks", "--store", str(store), "--out", str(out),
                       "--steps", "60", "--batch-size", "32", "--width", "0.25", "--lr", "1e-3",
                       "--eval-every", "30", "--eval-pairs", "200", "--log-every", "10",
                       "--offset-windows", "10"])
    final = train(args)
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl", "final.json"):
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
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 60 and ckpt["args"]["combo"] == "mel_landmarks"
    assert "optimizer" in ckpt and isinstance(model, UniSync)


def test_fit_cli_reports_missing_field(store, tmp_path, capsys):
    from training.fit import main
    copy = shutil.copytree(store, tmp_path / "store")
    shutil.rmtree(copy / "shards" / DATASET / "landmarks")
    rc = main(["--combo", "mel_landmarks", "--store", str(copy), "--out", str(tmp_path / "o"),
               "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "landmarks" in err and str(copy) in err
