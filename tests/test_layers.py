"""Layers run one way: features -> catalog -> pipelines (write) and training (read) -> benchmarks.

An import of a later layer's package (or of a sibling layer's, pipelines <-> training) fails this
test, except the orchestrator named in SIDEWAYS, which the README lists as a departure. Inside
training/, the trainer (training/*.py) never imports the sync wing (training/sync/).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"features": 0, "catalog": 1, "pipelines": 2, "training": 2, "benchmarks": 3}
# pipelines/demo.py runs the whole demo (extract, then train); documented in the README.
SIDEWAYS = {("pipelines/demo.py", "training")}
WING = "training.sync"


def imported_packages(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops & set(LAYER)


def test_no_module_imports_a_later_or_sibling_layer():
    bad = []
    for package in ("features", "catalog", "pipelines", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for top in imported_packages(path):
                if top != package and LAYER[top] >= LAYER[package] and (rel, top) not in SIDEWAYS:
                    bad.append(f"{rel} imports {top}")
    assert not bad, "imports against the layers: " + "; ".join(bad)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from catalog.tars import TarWriter\nimport training.fit as f\n")
    assert imported_packages(probe) == {"catalog", "training"}


def sync_wing_imports(path: Path) -> list[str]:
    """The imports of `path` (a module directly in training/) that reach training.sync."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            hits += [a.name for a in node.names if a.name == WING or a.name.startswith(WING + ".")]
        elif isinstance(node, ast.ImportFrom):
            base = "training" if node.level == 1 else ""  # `.` of a module directly in training/
            module = ".".join(part for part in (base, node.module or "") if part)
            if module == WING or module.startswith(WING + "."):
                hits.append(module)
            elif module == "training":
                hits += [f"training.{a.name}" for a in node.names if a.name == "sync"]
    return hits


def test_the_trainer_never_imports_the_sync_wing():
    bad = [f"{path.relative_to(ROOT).as_posix()} imports {m}"
           for path in sorted((ROOT / "training").glob("*.py")) for m in sync_wing_imports(path)]
    assert (ROOT / "training" / "sync" / "__init__.py").is_file()
    assert not bad, "the trainer imports the sync wing: " + "; ".join(bad)


def test_the_wing_check_sees_every_spelling(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import training.sync.scorers\nfrom training.sync.loss import SyncLoss\n"
                     "from training import sync\nfrom .sync import score\nfrom . import sync as s\n"
                     "from training import data\nimport training.sync_correction\nfrom .data import x\n")
    assert sync_wing_imports(probe) == ["training.sync.scorers", "training.sync.loss", "training.sync",
                                        "training.sync", "training.sync"]
