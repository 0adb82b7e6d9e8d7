"""Corpus adapters on fixture trees in each corpus's published layout (LRS2, LRS3, VoxCeleb2,
CN-CVS): ids, speakers, official splits, transcripts, separate audio, segmenting long pretrain
clips at word boundaries; and each tree extracted end to end through the real job."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.layout import table_path, utt_key
from pipelines.adapters import ADAPTERS, LANGUAGES, list_utterances
from pipelines.corpora.common import Word, read_transcript, segment, word_segments
from pipelines.corpora.fixtures import build_all
from tests.conftest import extract_here

FIELDS = ["audio", "rgb", "landmarks", "mel", "meta"]
MAX_SECONDS = 1.0


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    return build_all(tmp_path_factory.mktemp("corpora"), n_clips=8, min_seconds=1.0, max_seconds=1.6)


# ---------------------------------------------------------------- parsing and segmenting (no media)
def test_transcript_formats(tmp_path):
    lrs2_main = tmp_path / "main.txt"
    lrs2_main.write_text("Text:  WHEN YOU'RE COOKING CHIPS AT HOME\nConf:  4\n")
    t = read_transcript(lrs2_main)
    assert t.text == "WHEN YOU'RE COOKING CHIPS AT HOME" and t.header["Conf"] == "4" and t.words == []
    lrs3 = tmp_path / "lrs3.txt"
    lrs3.write_text("Text:  SO WE NEED TO\nConf:  3\nRef:   0akiEFwtkyA\n\nFRAME \tX \tY \tW \tH \n"
                    "000001 \t0.415 \t0.196 \t0.245 \t0.409 \n\nWORD START END ASDSCORE\n"
                    "SO 0.53 0.68 2.3\nWE 0.68 0.80 4.1\nNEED 0.80 1.02 5.0\nTO 1.02 1.10 3.3\n")
    t = read_transcript(lrs3)
    assert t.text == "SO WE NEED TO" and t.header["Ref"] == "0akiEFwtkyA"
    assert [w.word for w in t.words] == ["SO", "WE", "NEED", "TO"] and t.words[2] == Word("NEED", 0.80, 1.02, 5.0)
    assert read_transcript(tmp_path / "absent.txt").text == ""


def test_word_segments_cut_at_word_boundaries_within_max_length():
    words = [Word(f"W{i}", 0.5 + 0.7 * i, 0.5 + 0.7 * i + 0.5) for i in range(10)]  # 0.5 s words, 0.2 s gaps
    segs = word_segments(words, max_seconds=2.0)
    assert sum(len(run) for _, _, run in segs) == 10  # every word once, in order
    assert [w for _, _, run in segs for w in run] == words
    for (start, end, run), nxt in zip(segs, segs[1:] + [None]):
        assert end - start <= 2.0 + 1e-9
        assert start <= run[0].start and end >= run[-1].end  # never cuts a word
        if nxt is not None:
            assert end <= nxt[0] + 1e-9  # segments do not overlap
    long_word = word_segments([Word("LOOONG", 0.0, 3.0)], max_seconds=1.0)
    assert len(long_word) == 1 and long_word[0][1] >= 3.0  # a word longer than the maximum stays whole


def test_segment_ids_are_unique_and_dot_free():
    from pipelines.adapters import Utterance

    utt = Utterance("pretrain/6114233217837279443/00001", "6114233217837279443", "/x.mp4", transcript="A B C")
    words = [Word("A", 0.1, 0.6), Word("B", 0.9, 1.5), Word("C", 1.8, 2.4)]
    segs = segment(utt, words, max_seconds=1.0)
    assert [s.utt_id for s in segs] == [f"{utt.utt_id}_seg0{i}" for i in range(3)]
    assert [s.transcript for s in segs] == ["A", "B", "C"]
    assert all("." not in utt_key(s.utt_id) for s in segs)
    assert segment(utt, words, max_seconds=None) == [utt] == segment(utt, words, max_seconds=10.0)


# ---------------------------------------------------------------- adapters on the fixture trees
@pytest.mark.parametrize("dataset", ["lrs2", "lrs3", "voxceleb2", "cncvs"])
def test_adapter_recovers_ids_speakers_splits_transcripts(trees, dataset):
    root, expected = trees[dataset]
    utts = {u.utt_id: u for u in list_utterances(dataset, root)}
    assert set(utts) == set(expected)
    keys = [utt_key(i) for i in utts]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
    for utt_id, facts in expected.items():
        u = utts[utt_id]
        assert (u.speaker_id, u.official_split, u.transcript) == \
            (facts["speaker_id"], facts["official_split"], facts["transcript"]), utt_id
        assert Path(u.video_path).is_file() and u.language == LANGUAGES[dataset]
        assert u.audio_path == (str(facts["audio"].resolve()) if facts["audio"] else None)
        assert u.start_s is None and u.end_s is None


def test_layout_specifics(trees):
    lrs2 = {u.utt_id: u for u in list_utterances("lrs2", trees["lrs2"][0])}
    # the same programme/number exists in main/ and pretrain/: ids keep the subset apart
    assert {"main/5535415699068794046/00001", "pretrain/5535415699068794046/00001"} <= set(lrs2)
    assert lrs2["main/5535415699068794046/00003"].official_split == "test"  # "... MV" tag parsed off
    assert ADAPTERS["lrs2"](trees["lrs2"][0] / "mvlrs_v1")  # the mvlrs_v1 folder itself works as root
    vox = list_utterances("voxceleb2", trees["voxceleb2"][0])
    assert {u.speaker_id for u in vox} == {"id00012", "id00015", "id00017"}
    assert sum(u.audio_path is not None and u.audio_path.endswith(".m4a") for u in vox) == 1
    cn = list_utterances("cncvs", trees["cncvs"][0])
    assert {u.speaker_id for u in cn} == {"s00001", "s00002"} and {u.language for u in cn} == {"zh"}
    with pytest.raises(ValueError, match="does not support"):
        list_utterances("voxceleb2", trees["voxceleb2"][0], max_seconds=1.0)  # no word timings
    with pytest.raises(FileNotFoundError, match="LRS3 layout"):
        list_utterances("lrs3", trees["lrs2"][0])


@pytest.mark.parametrize("dataset", ["lrs2", "lrs3"])
def test_max_seconds_cuts_only_long_pretrain_clips(trees, dataset):
    root, expected = trees[dataset]
    utts = list_utterances(dataset, root, max_seconds=MAX_SECONDS)
    segs = [u for u in utts if "_seg" in u.utt_id]
    assert segs, "the fixture's pretrain clips are longer than the maximum"
    for u in utts:
        parent = u.utt_id.split("_seg")[0]
        assert parent in expected
        if "_seg" in u.utt_id:
            assert parent.startswith("pretrain/") and 0 <= u.start_s < u.end_s
            assert u.end_s - u.start_s <= MAX_SECONDS + 1e-9
            words = [w for w, s, e in expected[parent]["words"] if s >= u.start_s and e <= u.end_s]
            assert u.transcript == " ".join(words) and words
        else:
            assert u.start_s is None
    # every word of a cut clip lands in exactly one segment
    for parent in {u.utt_id.split("_seg")[0] for u in segs}:
        joined = " ".join(u.transcript for u in segs if u.utt_id.startswith(parent + "_seg"))
        assert joined == expected[parent]["transcript"]


def test_folder_follows_symlinked_speakers_and_files_without_looping(tmp_path):
    """A root whose speaker folders (and some files) are symlinks, with a link loop and a
    dangling link: every video once, ids as seen from the root, no hang."""
    store = tmp_path / "elsewhere"
    for spk in ("spkA", "spkB"):
        (store / spk).mkdir(parents=True)
        for utt in ("u0", "u1"):
            (store / spk / f"{utt}.mp4").write_bytes(b"not decoded here")
    (store / "spkA" / "u0.txt").write_text("hello there")
    root = tmp_path / "root"
    root.mkdir()
    (root / "spkA").symlink_to(store / "spkA", target_is_directory=True)
    (root / "spkB").symlink_to(store / "spkB", target_is_directory=True)
    (root / "spkC").mkdir()
    (root / "spkC" / "linked.mp4").symlink_to(store / "spkB" / "u1.mp4")
    (root / "spkC" / "gone.mp4").symlink_to(tmp_path / "missing.mp4")  # dangling: skipped
    (root / "spkA" / "loop").symlink_to(root, target_is_directory=True)  # inside spkA: back to the root
    utts = list_utterances("folder", root)
    assert [u.utt_id for u in utts] == ["spkA/u0", "spkA/u1", "spkB/u0", "spkB/u1", "spkC/linked"]
    assert [u.speaker_id for u in utts] == ["spkA", "spkA", "spkB", "spkB", "spkC"]
    assert utts[0].transcript == "hello there"
    assert utts[4].video_path == str((store / "spkB" / "u1.mp4").resolve())


# ---------------------------------------------------------------- end to end through the real job
# pipelines/extract.py's main in this process without Ray (tests/conftest.py: extract_here), one
# dataset after the other, appending to one store, on the session's warm local worker (MediaPipe
# loaded once); the command line on Ray is exercised by test_extract.py and, through `ray job
# submit`, by test_cluster.py.


@pytest.fixture(scope="module")
def stores(trees, tmp_path_factory) -> Path:
    """Every fixture tree extracted into one store (four runs appending datasets), pretrain cut."""
    store = tmp_path_factory.mktemp("store")
    for dataset in ["lrs2", "lrs3", "voxceleb2", "cncvs"]:
        extra = ["--max-seconds", str(MAX_SECONDS)] if dataset in ("lrs2", "lrs3") else []
        extract_here("--dataset", dataset, "--root", trees[dataset][0], "--store", store,
                     "--shard-size", "3", "--fields", *FIELDS, *extra).ok()
    return store


@pytest.mark.slow
def test_fixture_trees_extract_end_to_end(trees, stores):
    from catalog.verify import verify

    report = json.loads((stores / "extract_report.json").read_text())  # the last run's
    assert report["errors"] == 0 and report["ok"] == report["utterances"] and not report["failed_shards"]
    utts = pq.read_table(table_path(stores, "utterances")).to_pylist()
    by_ds = {}
    for u in utts:
        by_ds.setdefault(u["dataset"], []).append(u)
    assert set(by_ds) == {"lrs2", "lrs3", "voxceleb2", "cncvs"}
    for dataset, rows in by_ds.items():
        expected = trees[dataset][1]
        assert {r["utt_id"].split("_seg")[0] for r in rows} == set(expected)
        for r in rows:
            facts = expected[r["utt_id"].split("_seg")[0]]
            assert r["status"] == "ok" and all(r[f"field_{f}"] == "ok" for f in FIELDS), r
            assert r["speaker_id"] == facts["speaker_id"] and r["official_split"] == facts["official_split"]
            assert r["language"] == LANGUAGES[dataset]
            if "_seg" in r["utt_id"]:  # a segment holds the frames of [start_s, end_s)
                assert 5 <= r["n_frames"] <= round(r["end_s"] * 25) - round(r["start_s"] * 25)
            else:
                assert r["transcript"] == facts["transcript"]
    speakers = pq.read_table(table_path(stores, "speakers")).to_pylist()
    sources = {s["dataset"]: s["speaker_source"] for s in speakers}
    assert "programme" in sources["lrs2"] and "no speaker labels" in sources["lrs2"]
    assert {s["speaker_id"] for s in speakers if s["dataset"] == "voxceleb2"} == {"id00012", "id00015", "id00017"}
    report = verify(stores)
    assert report["ok"], report["problems"][:5]


@pytest.mark.slow
def test_separate_audio_files_are_in_sync_with_the_video(trees, stores):
    """The VoxCeleb2 .m4a and CN-CVS .wav of a video-only mp4 give the same stored audio as
    the original clip's own track (same clip extracted through another layout)."""
    from catalog.lookup import find_utterance, read_members
    from features.fields import FIELDS as REGISTRY

    def audio(dataset, utt_id):
        row = find_utterance(stores, utt_id, dataset)
        return REGISTRY["audio"].decode(read_members(stores, row, ["audio"])["audio"][1]), row

    pairs = [(("voxceleb2", "id00015/0fijmz4vTVU/00001"), ("lrs2", "main/5535415699068794046/00003")),
             (("cncvs", "news/s00001/00001"), ("lrs2", "main/6300370419826092098/00001"))]
    for (ds, utt), (ref_ds, ref_utt) in pairs:
        a, row = audio(ds, utt)
        b, ref_row = audio(ref_ds, ref_utt)
        assert row["n_frames"] == ref_row["n_frames"]
        n = min(len(a), len(b))
        a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
        lags = range(-640, 641, 80)
        corr = [np.dot(a[max(0, k):n + min(0, k)], b[max(0, -k):n - max(0, k)]) for k in lags]
        assert list(lags)[int(np.argmax(corr))] == 0, (ds, utt)
        assert np.corrcoef(a, b)[0, 1] > 0.9, (ds, utt)
