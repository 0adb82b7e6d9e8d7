"""`python -m catalog`: speakers, splits, overlap, sql, verify (and summary), on an LRS2-layout
store; verify names the shard and field of a truncated, missing, reordered or altered tar."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.__main__ import main as catalog_main
from catalog.layout import tar_path
from catalog.queries import overlap, speakers, splits
from catalog.tars import iter_members, tar_bytes
from catalog.verify import verify
from pipelines.corpora.fixtures import LRS2_PROGRAMMES, build_lrs2, make_clips
from tests.conftest import REPO, extract_here

pytestmark = pytest.mark.slow  # the store fixture runs the extraction job (in this process, without Ray)
FIELDS = ["audio", "mel", "meta"]  # no face fields: this file tests the catalog, not the extractors
P0, P1, P2, P3 = LRS2_PROGRAMMES


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("catalog")
    clips = make_clips(tmp / "clips", n=4, min_seconds=0.8, max_seconds=1.2, size=128)
    build_lrs2(tmp / "lrs2", clips)
    store = tmp / "store"
    extract_here("--dataset", "lrs2", "--root", tmp / "lrs2", "--store", store, "--shard-size", "2",
                 "--fields", *FIELDS).ok()
    return store


def cli(capsys, *argv: str) -> tuple[int, object]:
    """python -m catalog ARGV --json, in process; returns (exit code, parsed JSON)."""
    capsys.readouterr()
    code = catalog_main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_speakers_are_programmes_with_their_official_splits(store, capsys):
    code, rows = cli(capsys, "speakers", "--store", str(store))
    assert code == 0
    by_id = {r["speaker_id"]: r for r in rows}
    assert set(by_id) == {P0, P1, P2, P3}
    assert by_id[P0]["n_utterances"] == 4 and by_id[P0]["official_splits"] == "pretrain,test,train"
    assert all("programme" in r["speaker_source"] for r in rows)
    assert [r["speaker_id"] for r in speakers(store, official_split="val")] == [P1]


def test_splits_official_and_speaker_disjoint(store, capsys, tmp_path):
    code, s = cli(capsys, "splits", "--store", str(store))
    assert code == 0
    official = s["official"]["lrs2"]
    assert {k: v["utterances"] for k, v in official.items()} == {"pretrain": 2, "train": 2, "val": 1, "test": 2}
    disjoint = s["speaker_disjoint"]["datasets"]["lrs2"]
    assert sum(v["speakers"] for v in disjoint.values()) == 4 and set(disjoint) == {"train", "val", "test"}
    # recomputed with other ratios and a seed: deterministic, and only --write stores it
    a = splits(store, val=0.25, test=0.25, seed=7)
    assert a == splits(store, val=0.25, test=0.25, seed=7) and a["speaker_disjoint"]["recomputed"]
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    code, w = cli(capsys, "splits", "--store", str(copy), "--val", "0.25", "--test", "0.25", "--seed", "7", "--write")
    assert code == 0 and w["speaker_disjoint"]["written"]
    assert splits(copy)["speaker_disjoint"]["datasets"] == a["speaker_disjoint"]["datasets"]


def test_overlap_reports_lrs2_official_splits_honestly(store, capsys):
    code, o = cli(capsys, "overlap", "--store", str(store))
    assert code == 0
    pairs = {(p["a"], p["b"]): p for p in o["datasets"]["lrs2"]["pairs"]}
    assert len(pairs) == 6  # every pair of the four official splits, zero or not
    for pair in [("pretrain", "test"), ("pretrain", "train"), ("test", "train")]:
        assert pairs[pair]["speakers"] == [P0], pair  # the programme shared by these official lists
    assert all(p["shared_speakers"] == 0 for k, p in pairs.items() if "val" in k)
    assert o["overlapping_pairs"] == 3
    assert catalog_main(["overlap", "--store", str(store), "--fail-on-overlap"]) == 1
    by_speaker = overlap(store, by="speaker")  # the computed split is speaker-disjoint by construction
    assert by_speaker["overlapping_pairs"] == 0 and len(by_speaker["datasets"]["lrs2"]["pairs"]) == 3


def test_sql_over_the_catalog_views(store, capsys):
    code, rows = cli(capsys, "sql", "--store", str(store),
                     "SELECT utt_id, official_split FROM utterances WHERE dataset = 'lrs2' "
                     "AND official_split IN ('train', 'test') AND n_frames > 0 ORDER BY utt_id")
    assert code == 0
    assert [r["utt_id"] for r in rows] == [f"main/{P0}/00001", f"main/{P0}/00002", f"main/{P0}/00003",
                                           f"main/{P2}/00001"]
    code, n = cli(capsys, "sql", "--store", str(store),
                  "SELECT count(*) AS n FROM utterances WHERE starts_with(utt_id, 'pretrain/')")
    assert n == [{"n": 2}]
    code, groups = cli(capsys, "sql", "--store", str(store),
                       "SELECT official_split, count(*) AS n FROM utterances GROUP BY 1")
    assert {g["official_split"]: g["n"] for g in groups} == {"pretrain": 2, "train": 2, "val": 1, "test": 2}
    code, fields = cli(capsys, "sql", "--store", str(store), "SELECT * FROM fields WHERE field = 'mel'")
    assert len(fields) == 4  # 7 utterances in shards of 2
    # every view joins: utterances per speaker-disjoint split agree with the speakers table
    code, joined = cli(capsys, "sql", "--store", str(store),
                       "SELECT s.split, sum(s.n_utterances) AS n FROM speakers s GROUP BY 1 ORDER BY 1")
    assert sum(r["n"] for r in joined) == 7
    capsys.readouterr()
    assert catalog_main(["sql", "--store", str(store), "--csv",
                         "SELECT utt_id, n_frames FROM utterances ORDER BY utt_id LIMIT 2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "utt_id,n_frames" and len(out) == 3
    assert catalog_main(["sql", "--store", str(store), "SELECT no_such_column FROM utterances"]) == 2
    assert "SQL error" in capsys.readouterr().err


def test_summary_and_verify_from_the_command_line(store):
    for command in ("summary", "verify"):
        proc = subprocess.run([sys.executable, "-m", "catalog", command, "--store", str(store), "--json"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        if command == "verify":
            assert out["ok"] and out["checked"]["tars"] == 4 * 3 and out["checked"]["members"] == 7 * 3
            assert out["n_lost"] == 0 and out["n_duplicated"] == 0 and out["checked"]["walked"] == 0
            deep = verify(store, deep=True)
            assert deep["ok"] and deep["checked"]["walked"] == 4 * 3 and deep["checked"]["members"] == 7 * 3
        else:
            assert out["utterances"] == 7 and out["ok"] == 7
            assert {f: (v["ok"], v["utterances"], v["shards"]) for f, v in out["fields"].items()} == {
                f: (7, 7, 4) for f in FIELDS}


# ---------------------------------------------------------------- verify against a damaged store
def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _missing(path: Path):
    path.unlink()


def _reorder(path: Path):
    members = list(iter_members(path))
    path.write_bytes(tar_bytes([members[1], members[0], *members[2:]]))


def _alter_same_size(path: Path):
    members = list(iter_members(path))
    name, data = members[0]
    members[0] = (name, data[:-1] + bytes([data[-1] ^ 0xFF]))
    path.write_bytes(tar_bytes(members))


def _alter_size(path: Path):
    members = list(iter_members(path))
    members[1] = (members[1][0], members[1][1] + b"extra")
    path.write_bytes(tar_bytes(members))


def _duplicate(path: Path):
    members = list(iter_members(path))
    path.write_bytes(tar_bytes([members[0], members[0], *members[1:]]))


@pytest.mark.parametrize("damage, field, expected", [
    (_truncate, "audio", {"size mismatch", "checksum mismatch", "unreadable tar"}),
    (_missing, "mel", {"missing tar"}),
    (_reorder, "meta", {"checksum mismatch", "members out of order"}),
    (_alter_same_size, "mel", {"checksum mismatch"}),
    (_alter_size, "audio", {"checksum mismatch", "member altered"}),  # tar padding can keep the size
    (_duplicate, "meta", {"duplicated members", "count mismatch"}),
])
def test_verify_names_shard_and_field_of_damage(store, tmp_path, capsys, damage, field, expected):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    damage(tar_path(copy, "lrs2", field, 1))
    report = verify(copy)
    assert not report["ok"]
    assert report["problems"] == verify(copy, deep=True)["problems"]  # the fast path hides nothing
    kinds = {p["problem"] for p in report["problems"]}
    assert expected <= kinds, report["problems"]
    assert {(p["shard"], p["field"]) for p in report["problems"]} == {("lrs2-000001", field)}
    if damage is _missing:
        assert report["n_lost"] == 2 and {x["field"] for x in report["lost"]} == {field}
    if damage is _duplicate:
        assert report["n_duplicated"] == 1
    capsys.readouterr()
    assert catalog_main(["verify", "--store", str(copy)]) == 1
    assert f"lrs2-000001 field {field}:" in capsys.readouterr().out


def test_verify_flags_a_tar_outside_the_plan(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    shutil.copy(tar_path(copy, "lrs2", "mel", 0), tar_path(copy, "lrs2", "mel", 9))
    report = verify(copy)
    assert not report["ok"] and report["n_duplicated"] == 2  # shard 0's utterances now appear twice
    assert any(p["problem"] == "unexpected tar" and p["shard"] == "lrs2-000009" for p in report["problems"])


def test_verify_groups_multi_member_samples_like_webdataset():
    from catalog.verify import _samples

    members = [("a.tdmm.npy", 1, "x"), ("a.tdmm_id.npy", 1, "y"), ("b.error.json", 1, "z"), ("c.tdmm.npy", 1, "w")]
    assert [(k, [m[0] for m in g]) for k, g in _samples(members)] == [
        ("a", ["a.tdmm.npy", "a.tdmm_id.npy"]), ("b", ["b.error.json"]), ("c", ["c.tdmm.npy"])]
