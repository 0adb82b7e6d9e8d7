"""SyncTalklip's objectives (training/objectives.py), AV-SyncNet (training/avsync.py), lip reading
(training/lipread.py) and the frozen expert as a generator loss (training/sync/objectives.py).

The losses are pinned on inputs small enough to compute by hand. The trained tests use a tiny
store with the real layout whose `lip` mouth ROIs and `fbank` rows are driven by the same
syllables, as in pipelines/synthetic.py: each syllable's vowel sets the mouth's opening and
spread and the spectrum's formant bands, its loudness envelope both the opening and the energy;
the transcript is the vowels, words separated by spaces.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.lipread import CharTokenizer, cer, edit_distance, majority_vowel, vowels_of
from training.objectives import (AlignmentHead, eq6, eq13, l_av, l_cav, l_infonce, l_lip, l_rec, theta,
                                 theta_matrix, window_theta)


def head_with(weight: list[float], bias: float, tau: float) -> AlignmentHead:
    head = AlignmentHead(len(weight), tau=tau, bias=bias)
    with torch.no_grad():
        head.raw.copy_(torch.tensor([math.log(math.expm1(w)) for w in weight]))
    return head


# ---------------------------------------------------------------------------------------------
# the losses, by hand
# ---------------------------------------------------------------------------------------------
def test_theta_is_F_of_tau_times_the_absolute_difference():
    head = head_with([1.0, 2.0], bias=0.5, tau=2.0)
    fa, fv = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5])
    # tau * |fa - fv| = (2, 1); F = 1 * 2 + 2 * 1 + 0.5
    assert head(fa, fv).item() == pytest.approx(4.5, abs=1e-5)
    # weights 1, bias 0, tau 1: exactly the L1 norm (the "norm" reading is this special case)
    ones = head_with([1.0, 1.0, 1.0], bias=0.0, tau=1.0)
    x, y = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    assert ones(x, y).item() == pytest.approx(torch.linalg.vector_norm(x - y, 1).item(), abs=1e-5)
    assert theta(x, y, torch.ones(3), 0.0) == pytest.approx(3.5)


def test_l_av_by_hand():
    head = head_with([1.0, 2.0], bias=0.5, tau=2.0)
    fa = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]] * 2)  # two windows of T = 2 frames
    fv = torch.tensor([[[0.0, 0.5], [0.0, 0.0]]] * 2)
    th = window_theta(head, fa, fv)  # frames: 4.5 and 0.5 -> mean 2.5
    assert th.tolist() == pytest.approx([2.5, 2.5], abs=1e-5)
    pos, neg = math.log1p(math.exp(2.5)), math.log1p(math.exp(-2.5))  # softplus(theta), softplus(-theta)
    assert l_av(th, torch.tensor([1.0, 0.0])).item() == pytest.approx((pos + neg) / 2, abs=1e-5)
    assert l_av(th).item() == pytest.approx(pos, abs=1e-5)  # positives only: softplus of Eq. 5


def test_l_cav_by_hand():
    th = torch.tensor([[1.0, 4.0, 7.0], [2.0, 0.0, 5.0], [3.0, 3.0, 3.0]])  # theta(a_i, v_j)
    # i=0: 1 - (4 + 7) / 2 = -4.5; i=1: 0 - (2 + 5) / 2 = -3.5; i=2: 3 - 3 = 0
    assert l_cav(th, reduction="sum").item() == pytest.approx(-8.0)
    assert l_cav(th).item() == pytest.approx(-8.0 / 3)
    y = torch.tensor([True, False, True])  # Y = {0, 2}: i=0: 1 - 7; i=2: 3 - 3
    assert l_cav(th, y, reduction="sum").item() == pytest.approx(-6.0)
    assert l_cav(th, y).item() == pytest.approx(-3.0)
    assert l_cav(torch.stack([th, th + 1.0])).item() == pytest.approx(-8.0 / 3)  # a shift cancels
    with pytest.raises(ValueError, match="two frames"):
        l_cav(th, torch.tensor([True, False, False]))


def test_l_lip_by_hand():
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [math.log(3.0), 0.0, 0.0], [5.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, 0, -1]])  # the last position is padding (pad_id -1 here)
    # -log(2/4) - log(3/5)
    total = -math.log(0.5) - math.log(0.6)
    assert l_lip(logits, targets, pad_id=-1, reduction="sum").item() == pytest.approx(total, abs=1e-5)
    assert l_lip(logits, targets, pad_id=-1).item() == pytest.approx(total / 2, abs=1e-5)


def test_auxiliary_ctc_by_hand():
    from training.objectives import l_ctc

    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.25, 0.75]]]))  # blank 0, one symbol 1
    # paths of "1" over 2 frames: 11, _1, 1_ -> 0.75^2 + 2 * 0.25 * 0.75
    expected = -math.log(0.75 ** 2 + 2 * 0.25 * 0.75)
    assert l_ctc(logits, torch.tensor([2]), torch.tensor([[1, 0]])).item() == pytest.approx(expected, abs=1e-5)


def test_infonce_combinations_and_rec_by_hand():
    e = torch.eye(2)
    # cos = identity, temperature 1: each row -log(e / (e + 1)), both directions the same
    assert l_infonce(e, e, temperature=1.0).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-5)
    assert eq6(2.0, 3.0, 0.5, 0.1) == pytest.approx(1.3)
    assert eq13(1.0, 2.0, 3.0, 4.0, 1.0, 0.1, 10.0, 0.5) == pytest.approx(1 + 0.2 + 30 + 2)
    frames = torch.zeros(1, 2, 2, 2)
    assert l_rec(frames, frames + torch.tensor([1.0, 3.0])[None, :, None, None]).item() == pytest.approx(8.0)


def test_l_cav_gradient_pulls_paired_together_and_pushes_unpaired_apart():
    torch.manual_seed(0)
    head = AlignmentHead(8, tau=1.0)
    fa = torch.randn(1, 6, 8, requires_grad=True)
    fv = torch.randn(1, 6, 8, requires_grad=True)

    def split(th: torch.Tensor) -> tuple[float, float, int]:
        eye = torch.eye(6, dtype=torch.bool)
        rank_first = int((th[0].argmin(dim=1) == torch.arange(6)).sum())  # rows whose pair is nearest
        return th[0][eye].mean().item(), th[0][~eye].mean().item(), rank_first

    with torch.no_grad():
        paired0, unpaired0, first0 = split(theta_matrix(head, fa, fv))
    loss = l_cav(theta_matrix(head, fa, fv))
    loss.backward()
    # the gradient w.r.t. a_i is w * tau * (sign(a_i - v_i) - mean_{j != i} sign(a_i - v_j))
    w = head.weight.detach()
    s = torch.sign(fa.detach()[0, :, None, :] - fv.detach()[0, None, :, :])  # (i, j, d)
    eye = torch.eye(6, dtype=torch.bool)
    expected = w * (s[eye] - (s * (~eye)[:, :, None]).sum(dim=1) / 5) / 6  # mean over i
    assert torch.allclose(fa.grad[0], expected, atol=1e-6)
    opt = torch.optim.SGD([fa, fv], lr=1.0)
    for _ in range(60):
        opt.zero_grad()
        l_cav(theta_matrix(head, fa, fv)).backward()
        opt.step()
    with torch.no_grad():
        paired1, unpaired1, first1 = split(theta_matrix(head, fa, fv))
    print(f"paired {paired0:.3f} -> {paired1:.3f}, unpaired {unpaired0:.3f} -> {unpaired1:.3f}, nearest {first0} -> {first1}")
    assert paired1 < paired0 - 0.2 and unpaired1 > unpaired0 + 0.2
    assert first0 < 6 and first1 == 6  # every frame's own partner ends up its nearest


# ---------------------------------------------------------------------------------------------
# tokenizer and error rates
# ---------------------------------------------------------------------------------------------
def test_lip_augmentation_stretches_the_mouth_per_utterance():
    from training.lipread import AUGMENT, augment_frames

    look = {"skin": 160.0, "mouth": 18.0}
    mouths = torch.from_numpy(render_mouths(np.array([0.5, 0.5]), np.array([1.0, 1.0]), look))[None]
    same = augment_frames(mouths, torch.zeros(1, 5))
    assert torch.allclose(same, mouths.float() / 255, atol=1e-4)

    def width(img: torch.Tensor) -> int:  # dark (lip or inner mouth) pixels on the mouth's row
        return int((img[54] < 0.8 * look["skin"] / 255).sum())

    wide = augment_frames(mouths, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]))[0]
    assert width(wide[0]) == width(wide[1])  # one draw for every frame of the utterance
    assert width(wide[0]) == pytest.approx(width(same[0, 0]) * (1 + AUGMENT[0]), abs=2)


def test_tokenizer_round_trip_and_cer():
    tok = CharTokenizer.from_texts(["AE iou", "a  u"])
    assert tok.symbols == [" ", "a", "e", "i", "o", "u"]
    ids = tok.encode("Ae  u")
    assert tok.decode(ids + [2, 5]) == "ae u"  # stops at eos
    assert CharTokenizer.from_json(json.loads(json.dumps(tok.to_json()))) == tok
    assert tok.encode("x")[0] == 3  # unknown
    assert edit_distance("kitten", "sitting") == 3
    assert cer(["abcd", "ef"], ["abd", "efg"]) == pytest.approx(2 / 6)
    assert vowels_of("Ba dio") == "aio" and majority_vowel(["aa e", "o a"]) == "a"


# ---------------------------------------------------------------------------------------------
# a tiny store whose mouths and spectra follow the same syllables
# ---------------------------------------------------------------------------------------------
DATASET = "avfake"
OPEN = {"a": 1.0, "e": 0.72, "o": 0.75, "i": 0.5, "u": 0.48}  # pipelines/synthetic.py's
SPREAD = {"a": 1.0, "e": 1.08, "i": 1.14, "o": 0.8, "u": 0.72}
FORMANT_BANDS = {"a": (9, 12), "e": (6, 16), "i": (3, 19), "o": (7, 10), "u": (3, 9)}
AV_SPLITS = {0: "train", 1: "train", 2: "train", 3: "train", 4: "val", 5: "val", 6: "test", 7: "test"}


def syllable_plan(rng: np.random.Generator, seconds: float) -> list[dict]:
    """Words of 1-3 syllables (0.12-0.3 s each, a random vowel, a loudness) with pauses between."""
    out, t, word = [], rng.uniform(0.05, 0.2), 0
    while True:
        syls = []
        for _ in range(int(rng.integers(1, 4))):
            dur = rng.uniform(0.12, 0.3)
            syls.append({"start": t, "end": t + dur, "vowel": "aeiou"[rng.integers(5)],
                         "amp": rng.uniform(0.6, 1.0), "word": word})
            t += dur
        if syls[-1]["end"] > seconds - 0.05:
            return out
        out += syls
        word += 1
        t += rng.uniform(0.1, 0.3)


def state_at(plan: list[dict], times: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Loudness (a raised cosine over each syllable) and the current vowel ('' in pauses)."""
    loud, vowel = np.zeros(len(times)), [""] * len(times)
    for s in plan:
        inside = (times >= s["start"]) & (times < s["end"])
        phase = (times[inside] - s["start"]) / (s["end"] - s["start"])
        loud[inside] = s["amp"] * np.sin(np.pi * phase) ** 0.7
        for k in np.flatnonzero(inside):
            vowel[k] = s["vowel"]
    return loud, vowel


def mouth_params(loud: np.ndarray, vowel: list[str]) -> tuple[np.ndarray, np.ndarray]:
    opening = np.array([(l ** 0.6) * OPEN[v] if v else 0.0 for l, v in zip(loud, vowel)])
    spread = np.array([1 + (SPREAD[v] - 1) * min(1.0, 2 * l) if v else 1.0 for l, v in zip(loud, vowel)])
    return opening, spread


def render_mouths(opening: np.ndarray, spread: np.ndarray, speaker: dict,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """(n, 96, 96) uint8 grey mouth ROIs: skin, a lip ring and the dark inner mouth."""
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    out = np.empty((len(opening), 96, 96), np.uint8)
    for k, (o, s) in enumerate(zip(opening, spread)):
        dx, dy = (rng.normal(0, 1.0, 2) if rng is not None else (0.0, 0.0))
        w, h = speaker["mouth"] * s, 1.5 + 14.0 * o
        r_in = ((xx - 48 - dx) / w) ** 2 + ((yy - 54 - dy) / h) ** 2
        r_lip = ((xx - 48 - dx) / (w + 3)) ** 2 + ((yy - 54 - dy) / (h + 4)) ** 2
        img = np.full((96, 96), speaker["skin"], np.float32)
        img[r_lip <= 1] = speaker["skin"] * 0.62
        img[r_in <= 1] = 28.0
        if rng is not None:
            img += rng.normal(0, 4.0, img.shape)
        out[k] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def fbank_rows(loud: np.ndarray, vowel: list[str], speaker: dict, rng: np.random.Generator) -> np.ndarray:
    """(rows, 26) log filterbank energies: the speaker's floor plus formant bands times loudness."""
    bands = np.arange(26)[None, :]
    prof = np.zeros((len(loud), 26))
    for k, v in enumerate(vowel):
        if v:
            for c in FORMANT_BANDS[v]:
                prof[k] += np.exp(-0.5 * ((bands[0] - c - speaker["shift"]) / 1.3) ** 2)
    rows = speaker["floor"][None, :] + 7.0 * loud[:, None] * (0.3 + prof) + rng.normal(0, 0.4, prof.shape)
    return rows.astype(np.float32)


def make_av_store(root: Path, utts_per_speaker: int = 5, seed: int = 0, shard_size: int = 4) -> Path:
    """8 speakers (4 train, 2 val, 2 test) with lip, fbank and a vowel transcript per utterance;
    the speakers' looks go to <root>/speakers.json (the generator test draws their mouths)."""
    from catalog.layout import table_path, tar_path
    from catalog.tars import tar_bytes
    from features.codecs import encode_npy
    from features.lip import encode as encode_lip
    from pipelines.synthetic import transcript_of

    rng = np.random.default_rng(seed)
    rows, members, n, looks = [], {"lip": {}, "fbank": {}}, 0, {}
    for s, split in AV_SPLITS.items():
        speaker = {"skin": rng.uniform(120, 190), "mouth": rng.uniform(16, 21), "shift": int(rng.integers(-1, 2)),
                   "floor": -3 + rng.normal(0, 0.5, 26)}
        looks[f"s{s}"] = {"skin": float(speaker["skin"]), "mouth": float(speaker["mouth"])}
        for u in range(utts_per_speaker):
            n_frames = int(rng.integers(60, 90))
            plan = syllable_plan(rng, n_frames / 25)
            loud_v, vowel_v = state_at(plan, (np.arange(n_frames) + 0.5) / 25)
            loud_a, vowel_a = state_at(plan, (np.arange(4 * n_frames) + 0.5) / 100)
            lip = encode_lip(render_mouths(*mouth_params(loud_v, vowel_v), speaker, rng))
            fbank = encode_npy(fbank_rows(loud_a, vowel_a, speaker, rng))
            key = f"s{s}_u{u}"
            shard, index = divmod(n, shard_size)
            members["lip"].setdefault(shard, []).append((f"{key}.lip.jpgs", lip))
            members["fbank"].setdefault(shard, []).append((f"{key}.fbank.npy", fbank))
            rows.append({"utt_id": f"s{s}/u{u}", "key": key, "dataset": DATASET, "speaker_id": f"s{s}",
                         "split": split, "shard_id": shard, "index_in_shard": index, "n_frames": n_frames,
                         "status": "ok", "field_lip": "ok", "field_fbank": "ok",
                         "transcript": transcript_of(plan)})
            n += 1
    for name, shards in members.items():
        for shard, items in shards.items():
            path = tar_path(root, DATASET, name, shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar_bytes(items))
    path = table_path(root, "utterances")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    (root / "speakers.json").write_text(json.dumps(looks))
    return root


# ---------------------------------------------------------------------------------------------
# AV-SyncNet
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("combo", ["fbank_lip", "mel_lip", "hubert_rgb", "fbank_landmarks"])
def test_avsync_pair_matrix_is_the_forward_p_sync(combo):
    from training.avsync import AVSyncNet

    torch.manual_seed(0)
    model = AVSyncNet(combo, "micro", vocab=9).eval()
    visual = {"lip": torch.rand(3, 5, 96, 96), "rgb": torch.rand(3, 15, 48, 96),
              "landmarks": torch.randn(3, 5, 1434)}[model.visual]
    audio = {"fbank": torch.randn(3, 20, 26), "mel": torch.randn(3, 1, 80, 16),
             "hubert": torch.randn(3, 10, 1024)}[model.audio]
    with torch.no_grad():
        p = model(visual, audio)
        P = model.pair_matrix(model.embed_visual(visual), model.embed_audio(audio))
        crossed = model(visual, audio.roll(1, dims=0))
    assert p.shape == (3,) and bool(((p > 0) & (p < 1)).all())
    assert torch.allclose(P.diagonal(), p, atol=1e-5)
    assert torch.allclose(P[torch.arange(3), (torch.arange(3) - 1) % 3], crossed, atol=1e-5)


MICRO_RUN = ["--model", "avsync", "--preset", "micro", "--combo", "fbank_lip", "--batch-size", "32",
             "--lr", "3e-3", "--lip-batch", "4", "--eval-pairs", "300", "--log-every", "50",
             "--threads", "1", "--no-progress", "--workers", "0"]


@pytest.fixture(scope="module")
def trained_avsync(tmp_path_factory):
    """A micro AV-SyncNet trained with Eq. 6 through fit.py on the tiny store."""
    from training.fit import parse_args, train

    root = tmp_path_factory.mktemp("avsync")
    store = make_av_store(root / "store")
    torch.manual_seed(0)
    final = train(parse_args(MICRO_RUN + ["--store", str(store), "--out", str(root / "run"), "--steps", "160",
                                          "--eval-every", "0", "--offset-windows", "60"]))
    return store, root / "run", final


def test_fit_trains_avsync_with_eq6(trained_avsync):
    from training.avsync import AVSyncNet
    from training.avsync_train import tokenizer_of
    from training.runtime import load_checkpoint

    store, run, final = trained_avsync
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["l_av"] < lines[0]["l_av"] and lines[-1]["l_lip"] < lines[0]["l_lip"] - 0.2
    test = final["test"]
    print(f"test balanced accuracy {test['balanced_accuracy']:.3f}, utterance offsets "
          f"{test['utterance_offset_accuracy']:.3f}, lip reading {test['lip_reading']}")
    assert test["balanced_accuracy"] > 0.6 and test["utterance_offset_accuracy"] > 0.8
    lip = test["lip_reading"]
    assert lip["n_utterances"] == 10 and lip["vowel_cer"] < 1.0  # saying nothing scores 1, garbage more
    # the baseline by hand: a constant string of the right length misses every other vowel
    refs = "".join(vowels_of(r["transcript"]) for r in pq.read_table(store / "catalog" / "utterances.parquet")
                   .to_pylist() if r["split"] == "test")
    assert lip["baseline_vowel_cer"] == pytest.approx(1 - refs.count(lip["majority_vowel"]) / len(refs))
    # best.pt is chosen on val sync minus val vowel CER (--select auto with a lip reader)
    assert final["select"] == "sync+lip" and lines[-1]["val_vowel_cer"] == final["val"]["lip_reading"]["vowel_cer"]
    assert lines[-1]["val_score"] == pytest.approx(final["val"]["balanced_accuracy"] - lines[-1]["val_vowel_cer"])
    model, ckpt = load_checkpoint(run / "best.pt")  # weights_only, config names the model
    assert isinstance(model, AVSyncNet) and ckpt["config"]["model"] == "avsync"
    assert tokenizer_of(ckpt).symbols == [" ", "a", "e", "i", "o", "u"]

def test_evaluate_cli_reports_lip_reading_of_an_avsync_checkpoint(trained_avsync, capsys):
    """unisync-evaluate on an AV-SyncNet checkpoint: sync figures and the lip reader's CER."""
    from training.evaluate import main as evaluate_main

    store, run, _ = trained_avsync
    assert evaluate_main(["--checkpoint", str(run / "best.pt"), "--store", str(store), "--split", "test",
                          "--pairs", "200", "--no-offsets", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "lip reading" in text and "vowel CER" in text and "majority-vowel baseline" in text
    assert evaluate_main(["--checkpoint", str(run / "best.pt"), "--store", str(store), "--split", "test",
                          "--pairs", "200", "--no-offsets", "--threads", "1", "--json"]) == 0
    lip = json.loads(capsys.readouterr().out)["lip_reading"]
    assert lip["n_utterances"] == 10 and 0 <= lip["cer"] and "baseline_vowel_cer" in lip



# ---------------------------------------------------------------------------------------------
# the frozen expert as a generator's loss (Eq. 13's stream-level terms)
# ---------------------------------------------------------------------------------------------
def render_mouths_torch(opening: torch.Tensor, spread: torch.Tensor, look: dict, sharpness: float = 6.0) -> torch.Tensor:
    """`render_mouths` with soft edges, differentiable in opening and spread: (n,) -> (n, 96, 96) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    w = (look["mouth"] * spread)[:, None, None]
    h = (1.5 + 14.0 * opening)[:, None, None]
    inner = torch.sigmoid(sharpness * (1 - ((xx - 48) / w) ** 2 - ((yy - 54) / h) ** 2))
    lip = torch.sigmoid(sharpness * (1 - ((xx - 48) / (w + 3)) ** 2 - ((yy - 54) / (h + 4)) ** 2))
    skin = look["skin"]
    img = skin * (1 - lip) + 0.62 * skin * lip
    return (img * (1 - inner) + 28.0 * inner) / 255.0


class MouthGenerator(torch.nn.Module):
    """Each frame's opening and spread from the fbank rows of its own and its neighbours' frames;
    starts with a still, half-open mouth (the last layer is zero)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(12 * 26, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, fbank: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (fbank - fbank.mean()) / fbank.std()
        x = torch.nn.functional.pad(x[None, None], (0, 0, 4, 4), mode="replicate")[0, 0]
        context = x[:4 * (n_frames + 2)].reshape(n_frames + 2, 4 * 26).unfold(0, 3, 1)  # (n, 104, 3)
        out = self.net(context.transpose(1, 2).reshape(n_frames, -1))
        return torch.sigmoid(out[:, 0]), 1 + 0.3 * torch.tanh(out[:, 1])


def generated(gen: MouthGenerator, utt, look: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The utterance's generated mouth frames (n, 96, 96) and its fbank rows (4n, 26)."""
    fbank = torch.from_numpy(np.array(utt.data["fbank"], np.float32))
    return render_mouths_torch(*gen(fbank, utt.n_frames), look), fbank


def windows_of(frames: torch.Tensor, fbank: torch.Tensor, starts) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([frames[t:t + 5] for t in starts]), torch.stack([fbank[4 * t:4 * t + 20] for t in starts]))


def test_generator_gains_held_out_sync_against_frozen_avsync(trained_avsync):
    from training.data import load_utterances
    from training.lipread import transcript_of
    from training.sync.objectives import AVSyncLoss

    store, run, _ = trained_avsync
    loss_fn = AVSyncLoss.from_checkpoint(run / "best.pt")
    assert not any(p.requires_grad for p in loss_fn.expert.parameters())
    looks = json.loads((store / "speakers.json").read_text())
    train, held = (load_utterances(store, ["fbank"], [s]) for s in ("train", "val"))
    gen = MouthGenerator()

    @torch.no_grad()
    def held_out_p() -> float:
        ps = []
        for utt in held:
            frames, fbank = generated(gen, utt, looks[utt.speaker_id])
            ps.append(loss_fn.p_sync(*windows_of(frames, fbank, range(utt.n_windows))))
        return torch.cat(ps).mean().item()

    before = held_out_p()
    frozen = [p.clone() for p in loss_fn.expert.parameters()]
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for step in range(30):  # a train utterance a step: L_cav on 16 of its windows, L_lip on all of it
        utt = train[rng.integers(len(train))]
        frames, fbank = generated(gen, utt, looks[utt.speaker_id])
        visual, audio = windows_of(frames, fbank, rng.integers(0, utt.n_windows, 16))
        loss = loss_fn(visual, audio, frames[None], torch.tensor([utt.n_frames]), [transcript_of(utt)],
                       lambda_cav=1.0, lambda_lip=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss_fn.train()  # the generator's train mode leaves the expert in eval mode
    assert not loss_fn.expert.training
    after = held_out_p()
    assert all(torch.equal(a, b) for a, b in zip(frozen, loss_fn.expert.parameters()))
    print(f"held-out mean p_sync of generated mouths: {before:.3f} -> {after:.3f}")
    assert after > before + 0.1


def test_avsync_scorer_reads_the_store_and_finds_the_offset(trained_avsync):
    from catalog.sync_correction import apply
    from training.data import load_utterances
    from training.sync.scorers import SCORERS, make_scorer

    store, run, _ = trained_avsync
    assert "avsync" in SCORERS
    scorer = make_scorer("avsync", run / "best.pt")
    assert scorer.stored_fields() == ["fbank", "lip"]
    with pytest.raises(ValueError, match="--scorer avsync"):
        make_scorer("unisync", run / "best.pt")
    utts = load_utterances(store, ["fbank", "lip"], ["test"])
    found = [scorer.score_utterance(u).offset for u in utts]
    assert sum(abs(o) <= 1 for o in found) >= len(found) - 1, found
    # "correcting" an in-sync utterance by offset 3 puts it 3 frames off the other way
    for u in utts:
        apply(u, 3)
    shifted = [scorer.score_utterance(u).offset for u in utts]
    assert sum(abs(o + 3) <= 1 for o in shifted) >= len(shifted) - 1, shifted


def test_avsync_resume_is_exact(tmp_path):
    from training.fit import parse_args, train
    from training.runtime import read_checkpoint

    store = make_av_store(tmp_path / "store", utts_per_speaker=2)
    quick = MICRO_RUN + ["--store", str(store), "--eval-every", "0", "--eval-pairs", "40", "--offset-windows", "0"]
    train(parse_args(quick + ["--out", str(tmp_path / "straight"), "--steps", "4"]))
    train(parse_args(quick + ["--out", str(tmp_path / "resumed"), "--steps", "2"]))
    train(parse_args(quick + ["--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"]))
    a, b = (read_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("straight", "resumed"))
    assert a["step"] == b["step"] == 4 and a["lip_states"] == b["lip_states"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
