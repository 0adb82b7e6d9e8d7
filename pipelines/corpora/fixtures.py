"""Small corpus trees in the exact published layouts of LRS2, LRS3, VoxCeleb2 and CN-CVS.

The corpora are licensed and not shipped, so tests and benchmarks build look-alike trees from
synthetic talking-face clips (pipelines/synthetic.py): same folders, file names, split lists,
transcript formats (word timings taken from the clip's real syllable timing) and separate audio
files where the corpus has them. Each builder returns the facts the adapter should recover:
{utt_id-before-segmenting: {"speaker_id", "official_split", "transcript", "audio"}}.

    python -m pipelines.corpora.fixtures --out fixtures/ --clips 8   # all four trees
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.cli import HelpFormatter

# Programme ids, video ids and identity ids shaped like the real ones.
LRS2_PROGRAMMES = ["5535415699068794046", "5536038039829982468", "6300370419826092098", "6114233217837279443"]
LRS3_VIDEOS = ["0akiEFwtkyA", "-8x1Y2Sa_3jQ", "Zx9o3nMvd1k"]
VOX_IDS = ["id00012", "id00015", "id00017"]
CNCVS_SPEAKERS = ["s00001", "s00002"]


@dataclass(frozen=True)
class Clip:
    path: Path
    words: list[tuple[str, float, float]]  # (word, start s, end s) from the synthetic syllables

    @property
    def text(self) -> str:
        return " ".join(w for w, _, _ in self.words)


def make_clips(out: Path, n: int = 8, seed: int = 0, min_seconds: float = 1.2, max_seconds: float = 2.0,
               size: int = 160) -> list[Clip]:
    """n synthetic clips (2 per speaker) with word timings; reused by every fixture tree."""
    from pipelines.synthetic import generate_corpus

    out = Path(out)
    n_speakers = max(1, (n + 1) // 2)
    paths = generate_corpus(out, n_speakers=n_speakers, n_utterances=2, seed=seed, min_seconds=min_seconds,
                            max_seconds=max_seconds, size=size, progress=False)[:n]
    return [Clip(p, _words(json.loads(p.with_suffix(".json").read_text()))) for p in paths]


def _words(truth: dict) -> list[tuple[str, float, float]]:
    by_word: dict[int, list[dict]] = {}
    for syl in truth.get("syllables", []):
        by_word.setdefault(syl["word"], []).append(syl)
    words = []
    for i, syls in sorted(by_word.items()):
        text = "".join("BDGKLMNPRST"[(i + j) % 11] + s["vowel"].upper() for j, s in enumerate(syls))
        words.append((text, round(syls[0]["start"], 2), round(syls[-1]["end"], 2)))
    return words


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def lrs_text(clip: Clip, conf: int = 3, ref: str | None = None, words: bool = False) -> str:
    """An LRS2/LRS3 transcript: `Text:  ...`, `Conf:  N` [, `Ref:`], then optional tables."""
    lines = [f"Text:  {clip.text}", f"Conf:  {conf}"]
    if ref is not None:  # LRS3 adds the YouTube reference and a face-track table
        lines += [f"Ref:   {ref}", "", "FRAME \tX \tY \tW \tH ", "000000 \t0.321 \t0.208 \t0.297 \t0.533 "]
    if words:
        lines += ["", "WORD START END ASDSCORE"] + [f"{w} {s:.2f} {e:.2f} {4.5:.1f}" for w, s, e in clip.words]
    return "\n".join(lines) + "\n"


def build_lrs2(root: Path, clips: list[Clip]) -> dict[str, dict]:
    """`root/mvlrs_v1/{main,pretrain}/<programme>/<NNNNN>.mp4|.txt` and `root/{pretrain,train,val,test}.txt`.

    Programme 0 is in train, test and pretrain, so the official splits overlap in programmes.
    """
    p = LRS2_PROGRAMMES
    layout = [  # (subset, programme, number, official split, test tag)
        ("main", p[0], "00001", "train", ""), ("main", p[0], "00002", "train", ""),
        ("main", p[1], "00001", "val", ""), ("main", p[2], "00001", "test", "NF"),
        ("main", p[0], "00003", "test", "MV"), ("pretrain", p[0], "00001", "pretrain", ""),
        ("pretrain", p[3], "00001", "pretrain", ""),
    ]
    base, expected, lists = Path(root) / "mvlrs_v1", {}, {"pretrain": [], "train": [], "val": [], "test": []}
    for i, (subset, prog, num, split, tag) in enumerate(layout):
        clip = clips[i % len(clips)]
        video = _copy(clip.path, base / subset / prog / f"{num}.mp4")
        video.with_suffix(".txt").write_text(lrs_text(clip, words=subset == "pretrain"))
        lists[split].append(f"{prog}/{num}" + (f" {tag}" if tag else ""))
        expected[f"{subset}/{prog}/{num}"] = {"speaker_id": prog, "official_split": split,
                                             "transcript": clip.text, "audio": None, "words": clip.words}
    for split, lines in lists.items():
        (Path(root) / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return expected


def build_lrs3(root: Path, clips: list[Clip]) -> dict[str, dict]:
    """`root/{pretrain,trainval,test}/<video_id>/<NNNNN>.mp4|.txt`; video 0 is in pretrain and trainval."""
    v = LRS3_VIDEOS
    layout = [("pretrain", v[0], "00001"), ("pretrain", v[0], "00002"), ("trainval", v[0], "50001"),
              ("trainval", v[1], "00001"), ("test", v[2], "00001")]
    expected = {}
    for i, (subset, vid, num) in enumerate(layout):
        clip = clips[(i + 1) % len(clips)]
        video = _copy(clip.path, Path(root) / subset / vid / f"{num}.mp4")
        video.with_suffix(".txt").write_text(lrs_text(clip, conf=4, ref=vid, words=True))
        expected[f"{subset}/{vid}/{num}"] = {"speaker_id": vid, "official_split": subset,
                                            "transcript": clip.text, "audio": None, "words": clip.words}
    return expected


def build_voxceleb2(root: Path, clips: list[Clip]) -> dict[str, dict]:
    """`root/{dev,test}/mp4/idNNNNN/<video>/<NNNNN>.mp4`; one clip is video-only with its audio
    in `root/dev/aac/idNNNNN/<video>/<NNNNN>.m4a`."""
    layout = [("dev", VOX_IDS[0], "21Uxsk56VDQ", "00001", False), ("dev", VOX_IDS[0], "2DLq_Kkc1r8", "00002", False),
              ("dev", VOX_IDS[1], "0fijmz4vTVU", "00001", True), ("test", VOX_IDS[2], "01dfn2spqyE", "00001", False)]
    expected = {}
    for i, (part, spk, vid, num, separate) in enumerate(layout):
        clip = clips[(i + 2) % len(clips)]
        video = Path(root) / part / "mp4" / spk / vid / f"{num}.mp4"
        audio = None
        if separate:
            audio = Path(root) / part / "aac" / spk / vid / f"{num}.m4a"
            split_streams(clip.path, video, audio)
        else:
            _copy(clip.path, video)
        expected[f"{spk}/{vid}/{num}"] = {"speaker_id": spk, "official_split": part, "transcript": "",
                                          "audio": audio}
    return expected


def build_cncvs(root: Path, clips: list[Clip]) -> dict[str, dict]:
    """`root/<subset>/sNNNNN/video/<name>.mp4` with `audio/<name>.wav` (video-only mp4) for news;
    the speech subset keeps the mp4's own audio and has no audio folder."""
    layout = [("news", CNCVS_SPEAKERS[0], "00001", True), ("news", CNCVS_SPEAKERS[0], "00002", True),
              ("speech", CNCVS_SPEAKERS[1], "00001", False)]
    expected = {}
    for i, (subset, spk, name, separate) in enumerate(layout):
        clip = clips[(i + 3) % len(clips)]
        video = Path(root) / subset / spk / "video" / f"{name}.mp4"
        audio = None
        if separate:
            audio = Path(root) / subset / spk / "audio" / f"{name}.wav"
            split_streams(clip.path, video, audio)
        else:
            _copy(clip.path, video)
        expected[f"{subset}/{spk}/{name}"] = {"speaker_id": spk, "official_split": "", "transcript": "",
                                             "audio": audio}
    return expected


BUILDERS = {"lrs2": build_lrs2, "lrs3": build_lrs3, "voxceleb2": build_voxceleb2, "cncvs": build_cncvs}


def split_streams(src: Path, video_out: Path, audio_out: Path) -> None:
    """A video-only copy of `src` (packets copied, timing kept) and its audio as a separate file:
    `.m4a` copies the AAC packets; `.wav` is 16-bit PCM starting at the first video frame."""
    import av

    video_out.parent.mkdir(parents=True, exist_ok=True)
    audio_out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp:
        first_pts = None
        with av.open(str(video_out), "w") as out:
            vin = inp.streams.video[0]
            vout = out.add_stream_from_template(vin)
            for pkt in inp.demux(vin):
                if pkt.dts is None:
                    continue
                if first_pts is None and pkt.pts is not None:
                    first_pts = float(pkt.pts * pkt.time_base)
                pkt.stream = vout
                out.mux(pkt)
    if audio_out.suffix == ".wav":
        import soundfile

        from features.media import decode_audio

        audio, _ = decode_audio(Path(src), start_s=first_pts or 0.0)
        soundfile.write(str(audio_out), np.clip(audio, -1, 1), 16000, subtype="PCM_16")
        return
    with av.open(str(src)) as inp, av.open(str(audio_out), "w", format="ipod") as out:
        ain = inp.streams.audio[0]
        aout = out.add_stream_from_template(ain)
        for pkt in inp.demux(ain):
            if pkt.dts is None:
                continue
            pkt.stream = aout
            out.mux(pkt)


def concat_clips(sources: list[Path], out: Path, size: int = 360) -> list[tuple[float, float, str]]:
    """One long video with a shot cut between each pair of `sources` (real clips, say): each is
    decoded onto the 25 fps grid, scaled to size x size and appended with its own audio, so sync
    holds inside every shot. Frames stream into the encoder one clip at a time (an HD result is
    never held whole). Returns each source's (start_s, end_s, path) in the long video."""
    from fractions import Fraction

    import av
    import cv2

    from features.media import load_media

    spans, audio, t = [], [], 0
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        for src in sources:
            media = load_media(src)
            for img in media.frames:
                frame = av.VideoFrame.from_ndarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA),
                                                   format="rgb24")
                frame.pts = t
                frame.time_base = Fraction(1, 25)
                container.mux(video.encode(frame))
                t += 1
            audio.append(media.audio)
            spans.append((spans[-1][1] if spans else 0.0, t / 25, str(src)))
        container.mux(video.encode())
        samples = np.concatenate(audio).astype(np.float32)
        for i in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, i:i + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i, Fraction(1, 16000)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return spans


def build_all(out: Path, n_clips: int = 8, seed: int = 0, **clip_options) -> dict[str, tuple[Path, dict]]:
    """All four trees under out/<dataset>/ from one pool of clips in out/clips/."""
    out = Path(out)
    clips = make_clips(out / "clips", n_clips, seed, **clip_options)
    return {name: (out / name, build(out / name, clips)) for name, build in BUILDERS.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for clips/ and one tree per corpus")
    p.add_argument("--clips", type=int, default=8, help="synthetic clips in the shared pool")
    p.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    args = p.parse_args(argv)
    for name, (root, expected) in build_all(args.out, args.clips, args.seed).items():
        print(f"{name}: {root} ({len(expected)} clips)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
