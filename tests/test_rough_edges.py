"""Rough edges a new user meets (issue 16): failed fits leave no run folder, the bar follows a time
budget, the preview answers a wrong id in one line, native-library noise is off unless asked for,
and the trainer's field names and window sizes come from the field registry."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_training import DATASET, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("edges") / "store", utts_per_speaker=2, n_frames=40,
                      broken=False)


def fit(store: Path, out: Path, *extra: str) -> int:
    from training.fit import main
    return main(["--combo", "mel_landmarks", "--store", str(store), "--out", str(out), "--width", "0.125",
                 "--steps", "2", "--eval-pairs", "32", "--offset-windows", "0", "--workers", "0",
                 "--threads", "1", "--no-progress", *extra])


# ---------------------------------------------------------------------------------------------
# fit.py: no empty run folders, a bar that follows --max-minutes
# ---------------------------------------------------------------------------------------------
def test_failed_fits_leave_no_run_folder(store, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert fit(tmp_path / "no-store", runs / "a") == 2  # no store
    no_field = shutil.copytree(store, tmp_path / "no-landmarks")
    shutil.rmtree(no_field / "shards" / DATASET / "landmarks")
    assert fit(no_field, runs / "b") == 2  # the combo's field is missing
    err = capsys.readouterr().err
    assert "no-store" in err and "landmarks" in err, err
    assert not runs.exists(), "a failed start made a run folder (or its parent)"

    bad = runs / "bad-resume"  # a checkpoint that is not one: refused, the folder left as it was
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert fit(store, bad, "--resume") == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    assert sorted(p.name for p in bad.iterdir()) == ["checkpoint.pt"]

    (tmp_path / "a-file").write_text("")
    assert fit(store, tmp_path / "a-file") == 2
    assert "is a file" in capsys.readouterr().err


def test_fit_bar_follows_the_time_budget(store, tmp_path, capsys):
    """Under --max-minutes the bar reads steps done and time left, not 2/20000 and hours."""
    from training.fit import main
    out = tmp_path / "run"
    rc = main(["--combo", "mel_landmarks", "--store", str(store), "--out", str(out), "--width", "0.125",
               "--steps", "3", "--max-minutes", "5", "--eval-pairs", "32", "--offset-windows", "0",
               "--workers", "0", "--threads", "1", "--resume"])
    err = capsys.readouterr().err
    assert rc == 0 and (out / "final.json").exists()
    assert "--resume: no" in err  # nothing to resume: said, and the run starts at step 0
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "step 3/3" in last and "(budget 05:00)" in last and "100%" in last, last


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bar_text(progress) -> str:
    progress.bar.refresh()
    return progress.bar.fp.getvalue().replace("\r", "\n").strip().splitlines()[-1]


def test_progress_ends_at_the_nearer_of_budget_and_steps():
    from training.progress import Progress
    clock = Clock()
    # 4 minutes for 20000 steps at 10 steps/s: the budget ends the run, 3:30 after the first 30 s
    p = Progress("mel_landmarks", 0, 20000, max_minutes=4, file=io.StringIO(), clock=clock, mininterval=0)
    clock.now = 30.0
    p.step(300)
    assert p.seconds_left() == pytest.approx(210.0)
    text = bar_text(p)
    assert "step 300/20000" in text and "03:30 left" in text and " 12%" in text, text
    # an hour for 400 steps at 10 steps/s: the steps end it, 10 s after the first 30
    p = Progress("mel_landmarks", 0, 400, max_minutes=60, file=io.StringIO(), clock=clock, mininterval=0)
    clock.now += 30.0
    p.step(300)
    p.note(loss="0.512")
    assert p.seconds_left() == pytest.approx(10.0)
    text = bar_text(p)
    assert "step 300/400" in text and "00:10 left" in text and " 75%" in text and "loss=0.512" in text, text
    # no budget: a bar over steps, resumed steps counted
    p = Progress("mel_landmarks", 100, 400, file=io.StringIO(), clock=clock, mininterval=0)
    p.step(101)
    assert "101/400" in bar_text(p)


# ---------------------------------------------------------------------------------------------
# the preview
# ---------------------------------------------------------------------------------------------
def preview(*args: str) -> int:
    from catalog.preview import main
    return main(list(args))


def png_height(path: Path) -> int:
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image[..., :3].std() > 0.05, "blank preview"
    return image.shape[0]


def test_preview_answers_in_one_line(store, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert preview("--store", str(store), "--utt", "0/9", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no utterance 0/9 in store {store}") and "did you mean" in err, err
    assert len(err.splitlines()) == 1 and "0/0" in err  # the nearest ids are named
    assert preview("--store", str(tmp_path / "nowhere"), "--utt", "0/0", "--out", str(out)) == 2
    assert "no store at" in capsys.readouterr().err
    assert preview("--store", str(tmp_path), "--utt", "0/0", "--out", str(out)) == 2
    assert "not an extracted store" in capsys.readouterr().err
    assert not out.exists()

    assert preview("--store", str(store), "--utt", "0/0", "--out", str(out)) == 0
    full = png_height(out)
    copy = shutil.copytree(store, tmp_path / "no-mel")
    shutil.rmtree(copy / "shards" / DATASET / "mel")  # the catalog says ok, the tars are gone
    assert preview("--store", str(copy), "--utt", "0/0", "--out", str(tmp_path / "q.png")) == 0
    assert "field 'mel' is missing" in capsys.readouterr().err
    assert png_height(tmp_path / "q.png") < full  # drawn without the mel row


# ---------------------------------------------------------------------------------------------
# MediaPipe's native warnings: off by default, UNISYNC_VERBOSE=1 keeps them
# ---------------------------------------------------------------------------------------------
TRACK = textwrap.dedent("""
    import os, sys
    from features.face import FaceTracker
    from features.media import VideoStream
    track = FaceTracker().track(VideoStream(sys.argv[1], 0, 0.4))
    os.write(2, b"after the graphs\\n")  # stderr still works once the graphs run
    print(len(track.landmarks))
""")
NOISE = ("W0000", "XNNPACK", "absl::InitializeLog")


def track_stderr(clip: Path, verbose: bool) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UNISYNC_VERBOSE", "GLOG_minloglevel")}
    if verbose:
        env["UNISYNC_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", TRACK, str(clip)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_mediapipe_noise_is_off_unless_verbose(real_corpus):
    clip = sorted(real_corpus.glob("*/*.mp4"))[0]
    out, quiet = track_stderr(clip, verbose=False)
    assert int(out) == 10  # 0.4 s at 25 fps: the face was tracked
    assert not [ln for ln in quiet.splitlines() if any(n in ln for n in NOISE)], quiet
    assert "after the graphs" in quiet
    _, loud = track_stderr(clip, verbose=True)
    assert sum(any(n in ln for n in NOISE) for ln in loud.splitlines()) >= 3, loud


def test_stderr_off_is_nestable_and_restores_fd2(capfd):
    from features.quiet import native_stderr_off
    with native_stderr_off():
        os.write(2, b"hidden-1\n")
        with native_stderr_off():
            os.write(2, b"hidden-2\n")
        os.write(2, b"hidden-3\n")
    os.write(2, b"shown\n")
    err = capfd.readouterr().err
    assert "hidden" not in err and "shown" in err


# ---------------------------------------------------------------------------------------------
# names and sizes from the registry
# ---------------------------------------------------------------------------------------------
def test_combo_names_are_registry_fields_and_windows_follow_their_rates():
    from features.fields import FIELDS
    from features.timebase import CROP_SIZE, FPS, WINDOW
    from training.combos import AUDIO, VISUAL
    from training.model import SEQUENCE_DIMS, input_shape, window_rows
    from training.windows import IMAGE_FIELDS

    assert set(AUDIO + VISUAL) | set(SEQUENCE_DIMS) | set(IMAGE_FIELDS) <= set(FIELDS)
    assert {n: window_rows(n) for n in ("mel", "hubert", "rgb")} == {
        "mel": FIELDS["mel"].rate * WINDOW // FPS, "hubert": FIELDS["hubert"].rate * WINDOW // FPS, "rgb": WINDOW}
    assert input_shape("mel") == (1, 80, 16) and input_shape("hubert", 768) == (10, 768)
    assert input_shape("rgb") == (15, CROP_SIZE // 2, CROP_SIZE) and input_shape("landmarks") == (5, 478 * 3)
