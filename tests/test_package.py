"""The project installs the way Python tools install (`make install`: requirements with
constraints, then the project editable), and nothing depends on the repository being the
current directory or on sys.path / PYTHONPATH plumbing.

Everything here runs from a temporary directory with PYTHONPATH removed: the console scripts
(--help of every one, in parallel), the imports, a script run as a file, and a wheel built from a
copy of the tree that must hold every subpackage.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("features", "catalog", "pipelines", "training")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
BIN = Path(sys.executable).parent
NOISE = re.compile(r"\(default: (None|False|\[\])\)")


def clean_env() -> dict[str, str]:
    """The caller's environment without PYTHONPATH: imports must come from the install."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def package_dirs() -> list[Path]:
    """Every folder of the four packages that holds Python source (each must be a package)."""
    found = set()
    for package in PACKAGES:
        found |= {p.parent for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(found)


def test_every_cli_module_has_a_console_script():
    """A module with a `__main__` guard is a user-facing tool: pyproject names it, with a main()."""
    targets = {value.split(":")[0]: value.split(":")[1] for value in SCRIPTS.values()}
    missing = []
    for folder in package_dirs():
        for path in sorted(folder.glob("*.py")):
            source = path.read_text()
            if '__name__ == "__main__"' not in source:
                continue
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            functions = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
            if targets.get(module) not in functions:
                missing.append(module)
    assert not missing, f"CLI modules without a console script naming their main(): {missing}"


# Every installed entry point's main(["--help"]) in one interpreter (torch and Ray load once),
# started in a temp dir with -I: the scripts come from the installed metadata, not the tree.
HELP_ALL = """
import contextlib, io, json
from importlib.metadata import distribution
out = {}
for ep in distribution("unisync").entry_points:
    if ep.group != "console_scripts":
        continue
    buf, code = io.StringIO(), None
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            ep.load()(["--help"])
        except SystemExit as exc:
            code = exc.code
    out[ep.name] = {"target": ep.value, "code": code, "help": buf.getvalue()}
print(json.dumps(out))
"""


def test_every_console_script_is_installed_and_prints_its_help(tmp_path):
    """Each script of pyproject is in the venv's bin/ and installed with the same target; its
    --help exits 0, shows its usage, the defaults that say something and none of the empty ones."""
    absent = [name for name in SCRIPTS if not (BIN / name).exists()]
    assert not absent, f"{absent} not in {BIN}: run `make install` (installs the project editable)"
    run = subprocess.run([sys.executable, "-I", "-c", HELP_ALL], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    installed = json.loads(run.stdout.splitlines()[-1])
    assert {n: i["target"] for n, i in installed.items()} == SCRIPTS, "the install is stale: run `make install`"
    failed = {n: i["help"][-1500:] for n, i in installed.items() if i["code"] != 0 or "usage:" not in i["help"]}
    assert not failed, failed
    noisy = {n: NOISE.findall(i["help"]) for n, i in installed.items() if NOISE.search(i["help"])}
    assert not noisy, f"--help shows empty defaults: {noisy}"
    for name in ("unisync-extract", "unisync-fit", "unisync-score"):  # defaults that say something stay
        assert "(default: " in installed[name]["help"], installed[name]["help"][-1500:]


def test_console_scripts_run_from_another_directory(tmp_path):
    """The bin/ wrappers themselves, from a temp dir without PYTHONPATH (a light, a Ray and a torch one)."""
    names = ("unisync-catalog", "unisync-extract", "unisync-fit")
    procs = {name: subprocess.Popen([str(BIN / name), "--help"], cwd=tmp_path, env=clean_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in names}
    outputs = {name: proc.communicate(timeout=120)[0] for name, proc in procs.items()}
    failed = {name: out[-1500:] for name, out in outputs.items()
              if procs[name].returncode != 0 or "usage:" not in out}
    assert not failed, failed


def test_imports_and_module_runs_from_another_directory(tmp_path):
    """`-I` ignores PYTHONPATH and leaves the current directory off sys.path: only the install counts."""
    code = ("import catalog, features, training, pipelines.corpora.lrs2, training.sync; "
            "print(catalog.__file__); print(pipelines.corpora.lrs2.__file__)")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(Path(line).is_file() for line in out.stdout.split()), out.stdout
    run = subprocess.run([sys.executable, "-m", "catalog", "--help"], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "summary" in run.stdout, run.stderr[-2000:]


def test_a_script_run_as_a_file_imports_the_installed_packages(tmp_path):
    """`python pipelines/extract.py` (how `ray job submit` runs it) finds catalog and features
    without inserting the repository into sys.path."""
    run = subprocess.run([sys.executable, str(REPO / "pipelines" / "extract.py"), "--help"], cwd=tmp_path,
                         env=clean_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--dataset" in run.stdout, run.stderr[-2000:]


def test_no_path_plumbing_left():
    """No module edits sys.path or hands PYTHONPATH on. Exceptions, on purpose: benchmarks/memory.py's
    --code runs another checkout of the code; the two reference benchmarks' driver scripts run
    syncnet_python's own files, in its own venv, from its checkout."""
    allowed = {("benchmarks/memory.py", "sys.path.insert(0, str(args.code.resolve()))"),
               ("benchmarks/sync_reference.py", "sys.path.insert(0, sys.argv[1])"),
               ("benchmarks/sync_s3fd_reference.py", "sys.path.insert(0, os.getcwd())")}
    found = []
    for folder in (*PACKAGES, "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "tests/test_package.py":
                continue
            for line in path.read_text().splitlines():
                if ("sys.path.insert" in line or "PYTHONPATH" in line) and (rel, line.strip()) not in allowed:
                    found.append(f"{rel}: {line.strip()}")
    assert not found, found


def test_pyproject_dependencies_are_the_direct_requirements():
    """pyproject's dependencies name the same packages as requirements.txt (pins live in constraints.txt)."""
    def name(spec: str) -> str:
        return re.split(r"[\[<>=!~;\s]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")

    lines = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    wanted = {name(ln) for ln in lines if ln} - {"pytest"}
    declared = {name(d) for d in PYPROJECT["project"]["dependencies"]}
    assert declared == wanted, (sorted(declared - wanted), sorted(wanted - declared))


def test_wheel_holds_every_subpackage(tmp_path):
    """A wheel built from a copy of the tree holds every package folder's modules and the scripts."""
    missing_init = [d.relative_to(REPO).as_posix() for d in package_dirs() if not (d / "__init__.py").exists()]
    assert not missing_init, f"source folders without __init__.py are left out of the wheel: {missing_init}"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                           cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("unisync-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix() for d in package_dirs() for p in d.glob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert {"pipelines/corpora/lrs2.py", "training/sync/__init__.py", "catalog/__main__.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/")) or "__pycache__" in n]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    listed = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{script} = {target}" in listed for script, target in SCRIPTS.items()), listed
