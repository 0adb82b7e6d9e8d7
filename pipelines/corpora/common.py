"""Shared pieces of the corpus adapters: transcript files, word timings, segmenting long utterances."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.adapters import Utterance

# Lips move slightly before the sound and close after it: a segment keeps this much context on
# each side of its words, never reaching past the midpoint of the gap to a neighbouring word.
SEGMENT_PAD_S = 0.2
WORD_HEADER = ("WORD", "START", "END", "ASDSCORE")


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    score: float | None = None


@dataclass
class Transcript:
    """An LRS2/LRS3 `.txt`: `Text:  ...`, `Conf:  N` (LRS3 adds `Ref:`), optional tables."""

    text: str = ""
    header: dict = field(default_factory=dict)  # every `Key:  value` line, e.g. Conf, Ref
    words: list[Word] = field(default_factory=list)  # the WORD START END ASDSCORE table, if any


def read_transcript(path: Path) -> Transcript:
    """Parse a transcript file; a missing file gives an empty Transcript.

    Header lines are `Key: value` (LRS uses two spaces); a line whose tokens are
    `WORD START END ASDSCORE` opens the word table, any other all-caps header line (LRS3's
    `FRAME X Y W H`) opens a table that is skipped.
    """
    out = Transcript()
    path = Path(path)
    if not path.exists():
        return out
    table = None
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line:
            table = None if table == "other" else table  # the word table is the last section
            continue
        tokens = line.split()
        if tuple(tokens) == WORD_HEADER:
            table = "words"
            continue
        if table is None:
            m = re.match(r"^([A-Za-z][A-Za-z ]*?):\s*(.*)$", line)
            if m:
                out.header[m.group(1)] = m.group(2).strip()
                continue
            if all(t.isupper() for t in tokens):  # e.g. "FRAME X Y W H"
                table = "other"
            continue
        if table == "words" and len(tokens) >= 3:
            try:
                score = float(tokens[3]) if len(tokens) > 3 else None
                out.words.append(Word(tokens[0], float(tokens[1]), float(tokens[2]), score))
            except ValueError:
                pass  # a malformed row: keep the rest
    out.text = " ".join(out.header.get("Text", "").split())
    return out


def word_segments(words: list[Word], max_seconds: float, pad: float = SEGMENT_PAD_S
                  ) -> list[tuple[float, float, list[Word]]]:
    """Greedy runs of consecutive words, each (start_s, end_s, words) spanning <= max_seconds.

    A segment spans its first word's start minus `pad` to its last word's end plus `pad`,
    clipped at 0 and at the midpoints of the gaps to the neighbouring words, so segments never
    overlap and never cut a word. A single word longer than max_seconds is a segment of its own.
    """
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    words = sorted(words, key=lambda w: (w.start, w.end))
    runs: list[list[Word]] = []
    for w in words:
        if runs and (w.end + pad) - max(0.0, runs[-1][0].start - pad) <= max_seconds:
            runs[-1].append(w)
        else:
            runs.append([w])
    out = []
    for i, run in enumerate(runs):
        lo = 0.0 if i == 0 else (runs[i - 1][-1].end + run[0].start) / 2
        hi = None if i == len(runs) - 1 else (run[-1].end + runs[i + 1][0].start) / 2
        start = max(lo, run[0].start - pad)
        end = run[-1].end + pad if hi is None else min(hi, run[-1].end + pad)
        out.append((round(start, 3), round(end, 3), run))
    return out


def segment(utt: Utterance, words: list[Word], max_seconds: float | None) -> list[Utterance]:
    """The utterance itself, or, when its words run past max_seconds, its word-boundary segments.

    Segments are utterances `<utt_id>_segNN` with start_s/end_s and the segment's words as the
    transcript. An utterance without word timings is never cut.
    """
    if max_seconds is None or not words or max(w.end for w in words) + SEGMENT_PAD_S <= max_seconds:
        return [utt]
    return [replace(utt, utt_id=f"{utt.utt_id}_seg{k:02d}", start_s=start, end_s=end,
                    transcript=" ".join(w.word for w in run))
            for k, (start, end, run) in enumerate(word_segments(words, max_seconds))]


def read_list(path: Path) -> dict[str, list[str]]:
    """A split list: one `<folder>/<NNNNN>` per line, optionally followed by tags (LRS2 test: NF, MV)."""
    out: dict[str, list[str]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        tokens = line.split()
        if tokens:
            out[tokens[0].strip("/")] = tokens[1:]
    return out


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} is not a directory ({what})")
    return root
