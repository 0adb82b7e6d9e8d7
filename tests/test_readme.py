"""The README as a manual, checked against the code: its SQL and data-API examples run on the
store its "five commands" make, its commands use only flags the tools have, and it links to
nothing outside the repository.

Conventions the README keeps (and this file reads):
- every ```sql block is a list of statements, each ending with `;` and preceded by a `--` comment;
  a statement returns at least one row unless its comment says "(expect no rows)" (then none) or
  "(rows only ..." (then any number); "after a sync pass" runs it on the store after
  `unisync-sync-pass`;
- every `unisync-catalog sql --store S "..."` line of a ```bash block returns at least one row;
- every ```python block that opens the store (`open_store`, `webdataset_handler`) runs as it is,
  from the folder that holds the quickstart's `store/`.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from functools import lru_cache
from importlib.metadata import distribution
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import REPO, warm_local_worker

pytestmark = pytest.mark.slow  # the quickstart store is made by the real extraction job
README = REPO / "README.md"
TEXT = README.read_text()


# -- reading the README ------------------------------------------------------------------------------
def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", TEXT, flags=re.S | re.M)


def sql_statements() -> list[tuple[str, str]]:
    """(comment, statement) for every statement of every ```sql block."""
    out, comment, lines = [], "", []
    for block in code_blocks("sql"):
        for line in block.splitlines():
            if line.startswith("--"):
                comment = line
                continue
            lines.append(line)
            if line.rstrip().endswith(";"):
                out.append((comment, "\n".join(lines).rstrip().rstrip(";")))
                comment, lines = "", []
    assert not lines, f"a statement without its closing ';': {lines}"
    return out


def commands() -> list[list[str]]:
    """Every command line of every ```bash block, continuation lines joined, comments dropped."""
    out = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words:
                out.append(words)
    return out


def section(title: str) -> str:
    start = TEXT.index(f"\n## {title}")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start:end if end > 0 else None]


def quickstart_command(script: str) -> list[str]:
    block = re.search(r"```bash\n(.*?)```", section("Your own videos in five commands"), flags=re.S).group(1)
    lines = [shlex.split(line) for line in block.splitlines() if line.startswith(script + " ")]
    assert len(lines) == 1, f"the five commands should hold one {script} line"
    return lines[0]


# -- the store the five commands make ----------------------------------------------------------------
@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """A folder with videos/ (4 synthetic speakers x 2 clips, one file that is not a video) and
    the store/ the README's own unisync-extract line makes from it, run from that folder."""
    from pipelines.synthetic import generate_corpus

    home = tmp_path_factory.mktemp("quickstart")
    generate_corpus(home / "videos", n_speakers=4, n_utterances=2, min_seconds=1.2, max_seconds=1.6,
                    progress=False)
    (home / "videos" / "spk00" / "broken.mp4").write_text("not a video\n")  # an error row
    argv = quickstart_command("unisync-extract")
    assert "--root" in argv and "--store" in argv
    # the line through its entry point, in this process from that folder (as `synced` runs the sync
    # pass); a one-shard job, so its task runs in a local worker: the session's warm one (conftest)
    extract = console_script(argv[0])
    with contextlib.chdir(home), warm_local_worker():
        assert extract(argv[1:]) == 0
    assert (home / "store" / "catalog" / "utterances.parquet").exists()
    return home


@pytest.fixture(scope="module")
def synced(quickstart, tmp_path_factory) -> Path:
    """A copy of the quickstart store after `unisync-sync-pass` with a random UniSync checkpoint
    (the scores mean nothing; the columns are real)."""
    import torch

    from training.model import UniSync
    from training.runtime import save_checkpoint

    home = tmp_path_factory.mktemp("synced")
    shutil.copytree(quickstart / "store", home / "store", symlinks=True)
    torch.manual_seed(0)
    model = UniSync("mel_landmarks", width=0.25)
    save_checkpoint(home / "random.pt", model, torch.optim.Adam(model.parameters()), 0, {})
    sync_pass = console_script("unisync-sync-pass")  # in this process: torch is loaded already
    assert sync_pass(["--store", str(home / "store"), "--scorer", f"unisync:{home / 'random.pt'}",
                      "--ray", "never"]) == 0
    return home


def console_script(name: str):
    """The installed entry point's function (pyproject.toml [project.scripts])."""
    eps = {ep.name: ep for ep in distribution("unisync").entry_points if ep.group == "console_scripts"}
    assert name in eps, f"the README names {name}, which pyproject.toml does not install"
    return eps[name].load()


def rows_of(store: Path, query: str) -> int:
    from catalog.sql import run_sql

    return run_sql(store, query).num_rows


# -- the tests --------------------------------------------------------------------------------------
def test_every_sql_example_runs_on_the_quickstart_store(quickstart, synced):
    statements = sql_statements()
    assert len(statements) >= 8, "the README's SQL examples were not found"
    failures = []
    for comment, query in statements:
        assert comment, f"a statement without its `--` comment: {query}"
        store = (synced if "after a sync pass" in comment else quickstart) / "store"
        try:
            n = rows_of(store, query)
        except Exception as exc:  # noqa: BLE001 -- every failing example is listed at once
            failures.append(f"{comment}\n{query}\n  -> {type(exc).__name__}: {exc}")
            continue
        if "(expect no rows)" in comment and n != 0:
            failures.append(f"{comment}: {n} rows, none expected")
        elif "(expect no rows)" not in comment and "(rows only" not in comment and n == 0:
            failures.append(f"{comment}: no rows")
    assert not failures, "\n\n".join(failures)


def test_every_catalog_sql_command_returns_rows(quickstart):
    queries = [next(w for w in words[2:] if "SELECT" in w.upper())
               for words in commands() if words[:2] == ["unisync-catalog", "sql"]]
    assert queries, "no `unisync-catalog sql` example found"
    empty = [q for q in queries if rows_of(quickstart / "store", q) == 0]
    assert not empty, empty


def test_the_quickstart_store_holds_what_the_five_commands_promise(quickstart):
    """The summary's promise, checked on the data: every clip ok but the broken file, split by speaker."""
    from catalog import open_store

    store = open_store(quickstart / "store")
    rows = store.select(status=None)
    status = {r["utt_id"]: r["status"] for r in rows}
    assert status.pop("spk00/broken") == "error" and set(status.values()) == {"ok"} and len(status) == 8
    splits = {r["speaker_id"]: r["split"] for r in rows}
    assert sorted(splits.values()).count("train") == 2 and {"val", "test"} <= set(splits.values())
    preview_utt = quickstart_command("unisync-preview")
    assert "--utt" in preview_utt and "--out" in preview_utt


def test_the_data_api_examples_run_on_the_quickstart_store(quickstart, monkeypatch):
    blocks = [b for b in code_blocks("python") if "open_store" in b or "webdataset_handler" in b]
    assert len(blocks) >= 2, "the data API and webdataset examples were not found"
    monkeypatch.chdir(quickstart)
    checked = 0
    for block in blocks:
        ns: dict = {"__name__": "readme_example"}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 -- the README's own example
        if "rgb" in ns and "mel" in ns:  # the last batch of the DataLoader loop
            assert tuple(ns["rgb"].shape[1:]) == (5, 96, 96, 3) and str(ns["rgb"].dtype) == "torch.uint8"
            assert tuple(ns["mel"].shape[1:]) == (80, 16) and len(ns["utt_ids"]) == len(ns["rgb"])
            checked += 1
        if "frames" in ns:  # the last sample of the webdataset loop
            assert ns["frames"].shape[1:] == (96, 96, 3) and ns["key"] == "spk03__u01"
            checked += 1
    assert checked == 2, "the examples no longer name rgb / mel / frames as the README says"


@lru_cache(maxsize=None)
def help_text(script: str, *sub: str) -> str:
    """`script [sub] --help`, through the installed entry point, in this process."""
    main = console_script(script)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        with contextlib.suppress(SystemExit):
            main([*sub, "--help"])
    return buf.getvalue()


def script_of(words: list[str]) -> tuple[str, list[str]] | None:
    """(console script, its arguments) of a README command, whichever way it is spelt."""
    eps = {ep.value.split(":")[0]: ep.name for ep in distribution("unisync").entry_points
           if ep.group == "console_scripts"}
    if "python" in words:  # python -m MOD ..., python path/to/file.py ..., ray job submit -- python ...
        rest = words[words.index("python") + 1:]
        module = rest[1] if rest[:1] == ["-m"] else rest[0].removesuffix(".py").replace("/", ".")
        args = rest[2:] if rest[:1] == ["-m"] else rest[1:]
        assert module.startswith("benchmarks.") or module in eps, f"README runs unknown module {module}"
        assert find_spec(module) is not None, f"README runs {module}, which does not exist"
        return (eps[module], args) if module in eps else None
    if words[0] == "torchrun":
        script = next(w for w in words if w.endswith(".py"))
        return eps[script.removesuffix(".py").replace("/", ".")], words[words.index(script) + 1:]
    if words[0].startswith("unisync-"):
        return words[0], words[1:]
    return None


def test_every_command_uses_flags_its_tool_has():
    unknown, seen = [], 0
    for words in commands():
        found = script_of(words)
        if found is None:
            continue
        script, args = found
        sub = (args[0],) if script in ("unisync-catalog", "unisync-checkpoint") else ()
        text = help_text(script, *sub)
        assert "usage:" in text, f"{script} {' '.join(sub)} --help printed no usage:\n{text[-800:]}"
        for flag in {f for a in args for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", a)}:
            seen += 1
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                unknown.append(f"{script} {' '.join(sub)} {flag}")
    assert seen > 50, "the README's commands were not found"
    assert not unknown, f"flags the tools do not have: {unknown}"


def test_no_link_or_path_outside_the_repository():
    assert "../" not in TEXT, [line for line in TEXT.splitlines() if "../" in line]
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", TEXT, flags=re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", TEXT):
        assert not re.match(r"[a-z]+:", target), f"a link outside the repository: {target}"
        if target.startswith("#"):
            assert target[1:] in anchors, f"no heading for the link {target}"
        else:
            assert (REPO / target.split("#")[0]).exists(), f"a link to a missing file: {target}"
