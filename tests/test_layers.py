"""Layers run one way: features -> catalog -> pipelines (write) and training (read) -> benchmarks.

An import of a later layer's package (or of a sibling layer's, pipelines <-> training) fails this
test, except the two orchestrators named in SIDEWAYS, which the README lists as departures.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"features": 0, "catalog": 1, "pipelines": 2, "training": 2, "benchmarks": 3}
# pipelines/demo.py runs the whole demo (extract, then train); pipelines/sync_pass.py scores a
# store with training's experts to write the sync columns. Both are documented in the README.
SIDEWAYS = {("pipelines/demo.py", "training"), ("pipelines/sync_pass.py", "training")}


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
