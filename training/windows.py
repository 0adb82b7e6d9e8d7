"""Cut the 5-frame sync windows of a batch of pairs out of in-memory utterances, as model inputs.

Every field is sliced on the shared timebase (`features.timebase.window_slice`) by one small
function, `raw_window`, so the audio and visual windows of a positive pair cover exactly the same
0.2 s. Windows leave the loader as stored (uint8 pixels and class ids, float16 features): four
times fewer bytes to pin and copy than float32, and the conversion and normalisation run on the
device (`Batch.to`, `normalise`). Shapes per representation:

| field | raw window (loader) | model input (after Batch.to) |
|---|---|---|
| mel | (1, 80, 16) float16 | float32 as stored |
| hubert | (10, D) float16 | float32 as stored |
| rgb | (5, 48, 96, 3) uint8: lower halves of the 5 frames, as decoded | (15, 48, 96) float32 / 255, frames on channels |
| lip | (5, 96, 96) uint8 grayscale mouth ROIs | float32 / 255 |
| parsing | (5, 48, 96) uint8 class ids, lower half | uint8 (the model embeds the ids) |
| landmarks | (5, 1434) float16 crop pixels | (x - offset) * scale (`data.norm_of`) |
| tdmm | (5, 71) float32 | (x - offset) * scale (`data.norm_of`) |

Only the window's JPEGs are decoded (libjpeg-turbo, `features.codecs`), straight into the batch,
and of an rgb frame only its lower half: rgb frames carry a restart marker where that half
starts (rgb version jpeg95-rst-2), which makes the half a JPEG of its own
(`codecs.lower_half_jpeg`, about 1.7x cheaper than the whole frame; older stores decode whole
frames, with a warning). rgb and parsing windows can be cut at a lower resolution (`Utterance.image_scale`, fit.py --image-scale 0.5: 24 x 48):
rgb is then decoded at half size in the DCT domain, parsing class ids are subsampled; the
adapters are convolutional and the pool after them adaptive, so the same model takes them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from features.codecs import decode_jpeg_into, jpeg_sequence_frames, jpeg_size, lower_half_jpeg
from features.fields import FIELDS
from features.timebase import WINDOW, window_slice
from catalog import sync_correction
from training.data import Utterance, rate_of
from training.sampler import KINDS, Pair

# JPEG sequences (the `.jpgs` container: rgb, lip): uint8 pixels, / 255 on the device
IMAGE_FIELDS = tuple(name for name, f in FIELDS.items() if f.ext.endswith(".jpgs"))


def field_start(utt: Utterance, name: str, t: int) -> int:
    """The frame at which field `name`'s window of video frame t starts: t, unless the loader
    applied a sync correction (catalog/sync_correction.py: audio fields shifted by the offset)."""
    return sync_correction.field_start(utt, name, t)


def raw_window(utt: Utterance, name: str, t: int) -> np.ndarray:
    """One field's window starting at video frame t, as stored, in the model's layout."""
    if name in IMAGE_FIELDS:
        out = np.empty(*image_window_spec(utt, name))
        write_window(out, utt, name, t)
        return out
    return _array_window(utt, name, field_start(utt, name, t))


def write_window(out: np.ndarray, utt: Utterance, name: str, t: int) -> None:
    """Cut field `name`'s window at video frame t straight into `out` (a batch's row): JPEG
    frames (lip, and rgb's lower halves) are decoded into it and array windows copied in once,
    not stacked per window and again per batch."""
    if name == "rgb":
        _lower_frames_into(out, utt, utt.data[name], field_start(utt, name, t))
    elif name == "lip":
        t = field_start(utt, name, t)
        for k, jpeg in enumerate(jpeg_sequence_frames(utt.data[name], t, t + WINDOW)):
            decode_jpeg_into(jpeg, out[k], gray=True)
    else:
        out[...] = _array_window(utt, name, field_start(utt, name, t))


def image_window_spec(utt: Utterance, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an rgb / lip window, from the first JPEG's header (nothing decoded)."""
    h, w = jpeg_size(jpeg_sequence_frames(utt.data[name], 0, 1)[0])
    if name == "lip":
        return (WINDOW, h, w), np.dtype(np.uint8)
    step = _step(utt.image_scale)
    h, w = -(-h // step), -(-w // step)
    return (WINDOW, h - h // 2, w, 3), np.dtype(np.uint8)


def _array_window(utt: Utterance, name: str, t: int) -> np.ndarray:
    """An array field's window at frame t (already sync-shifted): a view where the layout allows."""
    value = utt.data[name]
    rows = window_slice(rate_of(name), t)
    if name == "mel":
        return value[None, :, rows]  # (1, 80, 16)
    if name == "parsing":
        step = _step(utt.image_scale)  # class ids are subsampled (nearest), never averaged
        return value[rows, value.shape[1] // 2::step, ::step]  # (5, 48, 96)
    x = value[rows]
    return x.reshape(WINDOW, -1) if name == "landmarks" else x  # (5, 1434), hubert (10, D), tdmm


def window_offset(utt: Utterance, name: str) -> np.ndarray | None:
    """The per-utterance offset subtracted on the device (landmarks / tdmm), flattened per row."""
    norm = utt.norm.get(name)
    return None if norm is None else np.asarray(norm[0], np.float32).reshape(-1)


def window_scale(utts: Sequence[Utterance], name: str) -> np.ndarray | None:
    """The field's normalisation scale (the same for every utterance: `data.norm_of`)."""
    for u in utts:
        norm = u.norm.get(name)
        if norm is not None:
            return np.asarray(norm[1], np.float32).reshape(-1)
    return None


def normalise(x: torch.Tensor, name: str, offset: torch.Tensor | None = None,
              scale: torch.Tensor | None = None) -> torch.Tensor:
    """Raw windows -> model inputs, on whatever device `x` is (see the module table)."""
    if name == "parsing":
        return x
    if name == "rgb":  # (B, 5, H, W, 3) -> (B, 15, H, W), channels-last in memory
        b, k, h, w, c = x.shape
        x = x.permute(0, 2, 3, 1, 4).reshape(b, h, w, k * c).permute(0, 3, 1, 2)
    if name in IMAGE_FIELDS:
        return x.float().mul_(1.0 / 255.0)
    x = x.float()
    if offset is not None:
        x = x - offset.float()[:, None, :]
    if scale is not None:
        x = x * scale.float()
    return x


def window(utt: Utterance, name: str, t: int) -> np.ndarray:
    """One model-ready window as float32 numpy (tests, notebooks): `raw_window` + `normalise`."""
    x = torch.from_numpy(np.array(raw_window(utt, name, t))[None])
    off, scale = window_offset(utt, name), window_scale([utt], name)
    off = None if off is None else torch.from_numpy(off[None])
    scale = None if scale is None else torch.from_numpy(scale)
    return normalise(x, name, off, scale)[0].numpy()


def _lower_frames_into(out: np.ndarray, utt: Utterance, data: bytes, t: int) -> None:
    """Lower halves of frames [t, t+5) into `out`: only these JPEGs are decoded; with the
    utterance's frame cache on (fit.py --cache-frames), each frame is decoded once and kept."""
    cache = utt.frame_cache
    scale = _step(utt.image_scale)
    jpegs = jpeg_sequence_frames(data, t, t + WINDOW)
    if cache is None:
        for k, jpeg in enumerate(jpegs):
            _decode_lower_half(jpeg, out[k], scale, utt)
        return
    for k, jpeg in enumerate(jpegs):
        if t + k not in cache:
            cache[t + k] = _decode_lower_half(jpeg, np.empty_like(out[k]), scale, utt)
        out[k] = cache[t + k]


def _decode_lower_half(jpeg: memoryview, out: np.ndarray, scale: int, utt: Utterance) -> np.ndarray:
    """The lower half of one rgb frame decoded into `out` (returned): alone when the frame has
    the half's restart marker (rgb jpeg95-rst-2, half the cost), else from the whole frame."""
    half = lower_half_jpeg(jpeg)
    if half is not None:
        decode_jpeg_into(half, out, scale=scale)
    else:
        _warn_whole_frames(utt)
        whole = decode_jpeg_into(jpeg, scale=scale)
        out[...] = whole[whole.shape[0] // 2:]
    return out


_WARNED: set[str] = set()


def _warn_whole_frames(utt: Utterance) -> None:
    """Once per dataset: its rgb frames predate the half-frame restart marker (rgb jpeg95-1)."""
    if utt.dataset not in _WARNED:
        _WARNED.add(utt.dataset)
        warnings.warn(f"rgb frames of {utt.utt_id} ({utt.dataset}) have no restart marker at the lower "
                      "half (rgb field version jpeg95-1): windows decode whole frames, about 1.7x "
                      "slower; re-extract the rgb field to get version jpeg95-rst-2", stacklevel=3)


def _step(scale: float) -> int:
    step = int(round(1 / scale))
    if scale <= 0 or abs(step * scale - 1) > 1e-6 or step not in (1, 2, 4, 8):
        raise ValueError(f"image scale {scale} is not 1, 1/2, 1/4 or 1/8")
    return step


@dataclass
class Batch:
    """A batch of pairs. From the loader: raw windows (uint8 / float16) and the per-pair
    normalisation offsets; after `to(device)`: model inputs on the device."""

    visual: torch.Tensor
    audio: torch.Tensor
    label: torch.Tensor  # float 0/1
    kind: torch.Tensor  # index into sampler.KINDS
    visual_name: str = ""
    audio_name: str = ""
    visual_offset: torch.Tensor | None = None
    audio_offset: torch.Tensor | None = None
    visual_scale: torch.Tensor | None = None
    audio_scale: torch.Tensor | None = None
    stream: int = 0  # the loader stream that drew it
    state: dict | None = None  # that stream's position after drawing it (resume)

    def tensors(self) -> list[str]:
        return [k for k in ("visual", "audio", "label", "kind", "visual_offset", "audio_offset",
                            "visual_scale", "audio_scale") if getattr(self, k) is not None]

    def pin_memory(self) -> "Batch":
        """Page-locked copies (DataLoader pin_memory=True calls this), for non_blocking copies."""
        return replace(self, **{k: getattr(self, k).pin_memory() for k in self.tensors()})

    def to(self, device: torch.device | str) -> "Batch":
        """Model inputs on `device`: copied as stored (non_blocking from pinned memory), then
        converted and normalised there; image-like float inputs go channels-last on a CPU, where
        oneDNN convolutions run about twice as fast in that layout (values are unchanged)."""
        device = torch.device(device)
        nb = device.type == "cuda"
        moved = {k: getattr(self, k).to(device, non_blocking=nb) for k in self.tensors()}
        visual = normalise(moved["visual"], self.visual_name, moved.get("visual_offset"),
                           moved.get("visual_scale"))
        audio = normalise(moved["audio"], self.audio_name, moved.get("audio_offset"),
                          moved.get("audio_scale"))
        return Batch(_layout(visual), _layout(audio), moved["label"], moved["kind"],
                     self.visual_name, self.audio_name, stream=self.stream, state=self.state)

    def __len__(self) -> int:
        return len(self.label)


def _layout(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


Alloc = Callable[[tuple[int, ...], np.dtype], torch.Tensor]


def new_tensor(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    """The default `Alloc`: a fresh CPU tensor (a loader worker passes its shared arena's)."""
    return torch.empty(shape, dtype=TORCH_DTYPES[np.dtype(dtype)])


TORCH_DTYPES = {np.dtype(n): getattr(torch, t) for n, t in
                (("uint8", "uint8"), ("float16", "float16"), ("float32", "float32"), ("int64", "int64"))}


def raw_windows(utts: Sequence[Utterance], name: str, starts: Sequence[tuple[int, int]],
                alloc: Alloc = new_tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Raw windows of field `name` at (utterance index, start frame) pairs, cut into one tensor
    from `alloc`, with the per-pair normalisation offsets and the field's scale (None where the
    field has none)."""
    first = utts[starts[0][0]]
    if name in IMAGE_FIELDS:
        shape, dtype = image_window_spec(first, name)
    else:
        probe = _array_window(first, name, field_start(first, name, starts[0][1]))
        shape, dtype = probe.shape, probe.dtype
    x = alloc((len(starts), *shape), dtype)
    rows = x.numpy()
    for j, (i, t) in enumerate(starts):
        write_window(rows[j], utts[i], name, t)
    off = None
    first_offset = window_offset(first, name)
    if first_offset is not None:
        off = alloc((len(starts), first_offset.size), np.dtype(np.float32))
        offsets = off.numpy()
        for j, (i, _) in enumerate(starts):
            offsets[j] = window_offset(utts[i], name)
    scale = window_scale([first], name)
    if scale is not None:
        scale_t = alloc(scale.shape, scale.dtype)
        scale_t.numpy()[...] = scale
        scale = scale_t
    return x, off, scale


def model_windows(utts: Sequence[Utterance], name: str, starts: Sequence[tuple[int, int]],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Model-ready windows on `device` (evaluation's per-utterance embedding)."""
    x, off, scale = raw_windows(utts, name, starts)
    device = torch.device(device)
    return _layout(normalise(x.to(device), name, None if off is None else off.to(device),
                             None if scale is None else scale.to(device)))


def stack_windows(utts: Sequence[Utterance], name: str, starts: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Model-ready windows on the CPU (callers move them: `stack_windows(...).to(device)`)."""
    return model_windows(utts, name, starts, "cpu")


def make_batch(pairs: Sequence[Pair], utts: Sequence[Utterance], pool: Sequence[Utterance],
               audio: str, visual: str, alloc: Alloc = new_tensor) -> Batch:
    """The raw windows of `pairs` (visual from `utts`, audio from the sampler's `pool`), every
    tensor from `alloc` (a loader worker's shared arena: one hand-off for many batches)."""
    v, v_off, v_scale = raw_windows(utts, visual, [(p.v_utt, p.v_t) for p in pairs], alloc)
    a, a_off, a_scale = raw_windows(pool, audio, [(p.a_utt, p.a_t) for p in pairs], alloc)
    label = alloc((len(pairs),), np.dtype(np.float32))
    label.numpy()[:] = [p.label for p in pairs]
    kind = alloc((len(pairs),), np.dtype(np.int64))
    kind.numpy()[:] = [KINDS.index(p.kind) for p in pairs]
    return Batch(v, a, label, kind, visual, audio, v_off, a_off, v_scale, a_scale)
