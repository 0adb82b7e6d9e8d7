"""The sync pass: per-utterance sync columns in a column-only sidecar, merged into the catalog by
its build, curated with SQL. Uses the trainer's fake store and a random-weight UniSync checkpoint
(the figures mean nothing here; benchmarks/sync_offsets.py measures a trained one)."""
from __future__ import annotations

import json

import pytest
import torch

from catalog.layout import sidecar_path, tar_path


@pytest.fixture(scope="module")
def store_and_checkpoint(tmp_path_factory):
    from tests.test_training import DATASET, make_store
    from training.model import UniSync
    from training.runtime import model_config

    root = tmp_path_factory.mktemp("sync_pass")
    store = make_store(root / "store", utts_per_speaker=2, n_frames=40, speakers=3,
                       split_of={0: "train", 1: "val", 2: "test"})
    torch.manual_seed(0)
    model = UniSync("mel_landmarks", width=0.25)
    ckpt = root / "random.pt"
    torch.save({"model": model.state_dict(), "config": model_config(model), "args": {}, "step": 0}, ckpt)
    return store, ckpt, DATASET


def test_sync_sidecar_columns_reach_the_catalog_and_sql(store_and_checkpoint):
    from catalog.build import build_catalog
    from catalog.plan import read_plan
    from training.sync.sync_pass import COLUMNS, is_done, score_shard
    from catalog.reader import read_catalog

    store, ckpt, dataset = store_and_checkpoint
    spec = f"unisync:{ckpt}"
    rows = read_catalog(store)
    shards = sorted({r["shard_id"] for r in rows})
    for s in shards:
        mine = [r for r in rows if r["shard_id"] == s]
        result = score_shard(str(store), dataset, s, mine, mine, spec)
        assert result["scored"] == len(mine)
    side = json.loads(sidecar_path(store, dataset, "sync", shards[0]).read_text())
    assert not tar_path(store, dataset, "sync", shards[0]).exists()  # column-only: no tar
    assert side["version"].startswith("unisync:mel_landmarks+")
    entry = side["members"][0]
    assert entry["status"] == "ok" and set(entry["columns"]) == set(COLUMNS)
    assert -15 <= entry["columns"]["sync_offset"] <= 15 and entry["columns"]["sync_confidence"] >= 0
    assert is_done(store, dataset, shards[0], side["version"])
    assert not is_done(store, dataset, shards[0], "syncnet:other")

    tables = build_catalog(store, read_plan(store), ["mel", "landmarks"])
    utts = tables["utterances"]
    assert str(utts.schema.field("sync_offset").type) == "int32"
    assert str(utts.schema.field("sync_confidence").type) == "double"
    got = utts.to_pylist()
    assert len(got) == len(rows) and all(r["sync_scorer"] == side["version"] for r in got)

    from catalog.sql import run_sql  # the store helper's SQL over the catalog (DuckDB)
    kept = run_sql(store, "SELECT utt_id, sync_offset FROM utterances "
                          "WHERE sync_confidence >= 0 AND abs(sync_offset) <= 15")
    assert kept.num_rows == len(rows)


def test_scorer_specs_come_from_the_registry():
    from training.sync.scorers import SCORERS, parse_spec

    name, path = parse_spec("unisync:x/best.pt")
    assert name == "unisync" and path.endswith("/x/best.pt") and path.startswith("/")  # absolute for Ray
    assert parse_spec("syncnet:/w.model") == ("syncnet", "/w.model")
    for bad in ("wav2lip:/x", "unisync:", "unisync"):
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert all(f"{n}:{c.weights_label}" in str(err.value) for n, c in SCORERS.items())


def test_sync_pass_command_help_and_bad_specs(tmp_path, capsys):
    from training.sync.sync_pass import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--scorer NAME:PATH" in shown and "'syncnet:WEIGHTS' or 'unisync:CHECKPOINT'" in shown
    assert "(default: auto)" in shown and "(default: None)" not in shown
    assert main(["--store", str(tmp_path), "--scorer", "wav2lip:/x"]) == 2  # before any Ray start
    assert "must be 'syncnet:WEIGHTS' or 'unisync:CHECKPOINT'" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "--scorer", f"syncnet:{tmp_path / 'absent.model'}"]) == 2
    assert "absent.model not found" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--fields", "mel", "sync"], ["--sync-scorer", "unisync:/x/best.pt"]])
def test_extract_sends_the_sync_pass_to_its_own_command(tmp_path, capsys, flags):
    from pipelines.extract import main

    rc = main(["--dataset", "folder", "--root", str(tmp_path), "--store", str(tmp_path / "s"), *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "python -m training.sync.sync_pass --store " in err and "--scorer unisync:" in err
    assert not (tmp_path / "s").exists()  # nothing was planned or extracted


def test_sync_pass_on_an_extracted_store_of_one_shard(tmp_path, capsys):
    """A real store of one shard (3 synthetic speakers, extracted in a local worker: one shard
    needs no Ray), scored by SyncNet through the store's reader (stored audio, landmarks and meta;
    the UniSync branch: the test above), again without Ray: every utterance scored, and the
    catalog rebuilt with the split settings the store was extracted with (store.json), not the
    sync pass's own; an option given overrides them."""
    import pyarrow.parquet as pq
    import ray

    from catalog.layout import read_store_json, table_path
    from catalog.splits import speaker_disjoint_splits
    from pipelines.extract import main as extract
    from pipelines.synthetic import generate_corpus
    from training.sync.sync_pass import main as sync_pass
    from training.sync.syncnet import save_random_weights

    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process (the runner would use it)")
    generate_corpus(tmp_path / "corpus", n_speakers=3, n_utterances=1, min_seconds=1.0, max_seconds=1.2,
                    size=128, progress=False)
    store = tmp_path / "store"
    assert extract(["--dataset", "folder", "--root", str(tmp_path / "corpus"), "--store", str(store),
                    "--fields", "audio", "mel", "landmarks", "meta", "--val", "0.34", "--test", "0.34",
                    "--split-seed", "5"]) == 0
    assert read_store_json(store)["splits"] == {"val": 0.34, "test": 0.34, "seed": 5}
    def splits() -> dict[str, str]:
        return {r["speaker_id"]: r["split"] for r in pq.read_table(table_path(store, "utterances")).to_pylist()}

    extracted = splits()
    assert extracted == speaker_disjoint_splits(list(extracted), 0.34, 0.34, seed=5)
    default = speaker_disjoint_splits(list(extracted))  # what the sync pass's own defaults would give
    assert default != extracted, "the test needs a seed whose split differs from the default one"
    weights = save_random_weights(tmp_path / "syncnet_v2.model", seed=1)
    capsys.readouterr()
    assert sync_pass(["--store", str(store), "--scorer", f"syncnet:{weights}"]) == 0
    [report] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["scored"] == 3 and report["failed_shards"] == [], report
    rows = pq.read_table(table_path(store, "utterances")).to_pylist()
    assert all(r["sync_scorer"].startswith("syncnet:") for r in rows)
    assert all(-15 <= r["sync_offset"] <= 15 and r["sync_confidence"] >= 0 for r in rows)
    assert splits() == extracted, "the rebuilt catalog keeps the store's splits"
    assert not ray.is_initialized(), "a store of one shard is scored without starting Ray"
    assert sync_pass(["--store", str(store), "--scorer", f"syncnet:{weights}", "--split-seed", "0"]) == 0
    assert splits() == speaker_disjoint_splits(list(extracted), 0.34, 0.34, seed=0), \
        "an option given replaces its recorded setting, the others stay"
