"""benchmarks/hubert_store.py: the hubert field added to a copy of a store by a tiny random HuBERT
through pipelines/extract.py (a tiny synthetic corpus: 3 speakers x 1 one-second clip)."""
from __future__ import annotations

import pytest

from benchmarks.hubert_store import HubertStoreError, has_hubert, store_with_hubert
from catalog.build import read_table
from catalog.layout import read_store_json
from tests.conftest import extract_here
from tests.test_training import make_store


def test_a_store_with_hubert_is_returned_as_it_is(tmp_path):
    store = make_store(tmp_path / "store", speakers=2, utts_per_speaker=1, shard_size=1)
    assert store_with_hubert(store, tmp_path / "work") == store.resolve()
    assert not (tmp_path / "work").exists()


def test_a_store_without_its_corpus_fails_naming_the_store(tmp_path):
    store = make_store(tmp_path / "store", speakers=2, utts_per_speaker=1, shard_size=1)
    for tar in store.glob("shards/*/hubert/*"):
        tar.unlink()
    with pytest.raises(HubertStoreError, match=str(store.resolve())):
        store_with_hubert(store, tmp_path / "work")


@pytest.mark.slow  # two extraction runs, the benchmark's on Ray
def test_hubert_is_added_to_a_copy_by_the_real_extraction(tmp_path):
    from catalog.__main__ import main as catalog_main
    from pipelines.synthetic import generate_corpus
    from training.data import load_utterances

    corpus, store = tmp_path / "corpus", tmp_path / "store"
    generate_corpus(corpus, n_speakers=3, n_utterances=1, min_seconds=1.0, max_seconds=1.2, progress=False)
    extract_here("--dataset", "synthetic", "--root", corpus, "--store", store, "--shard-size", "2",
                 "--fields", "audio", "meta", "--split-seed", "1").ok()  # in this process, without Ray
    assert not has_hubert(store)

    with pytest.raises(HubertStoreError, match="split"):  # a rebuilt catalog would change the split
        store_with_hubert(store, tmp_path / "work", hidden_size=16)
    assert catalog_main(["splits", "--store", str(store), "--seed", "0", "--write"]) == 0

    copy = store_with_hubert(store, tmp_path / "work", hidden_size=16)
    assert copy == (tmp_path / "work" / "store").resolve() and not has_hubert(store)
    assert (copy / "shards/synthetic/audio/synthetic-000000.tar").stat().st_ino == \
           (store / "shards/synthetic/audio/synthetic-000000.tar").stat().st_ino  # hard-linked, not rewritten
    rows = read_table(copy, "utterances").to_pylist()
    assert len(rows) == 3 and all(r["field_hubert"] == "ok" and r["status"] == "ok" for r in rows)
    assert read_table(store, "utterances")["split"].to_pylist() == [r["split"] for r in rows]
    assert read_store_json(copy)["hubert"]["model"] == str(tmp_path / "work" / "tiny-random-hubert-16")
    utts = load_utterances(copy, ["hubert"], ["train", "val", "test"])
    assert len(utts) == 3 and all(u.data["hubert"].shape == (2 * u.n_frames, 16) for u in utts)
    assert store_with_hubert(store, tmp_path / "work", hidden_size=16) == copy  # a finished copy is reused
