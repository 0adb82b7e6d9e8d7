"""Reading a store's tars with plain `webdataset`, and the `.jpgs` container it needs decoded.

Every field is its own tar series, `<store>/shards/<dataset>/<field>/<dataset>-NNNNNN.tar`, whose
members are `<key>.<ext>` (features/fields.py): one sample per utterance and per field, in the
shard plan's order in every series. Plain webdataset reads any of them:

    import webdataset as wds
    from catalog import webdataset_handler

    url = "store/shards/lrs2/rgb/lrs2-000000.tar"
    ds = (wds.WebDataset(url, shardshuffle=False)
          .select(lambda s: "error.json" not in s)        # failure placeholders
          .decode(webdataset_handler))
    for sample in ds:
        sample["__key__"], sample["rgb.jpgs"]             # (T, 96, 96, 3) uint8

The handler decodes `.jpgs` (rgb: (T, 96, 96, 3) uint8 RGB; lip: (T, 96, 96) uint8 grey) and
`.flac` (16 kHz float32 samples) and any other member of the field registry; webdataset's own
handlers, which `.decode` keeps after it, do `.npy` (mel, landmarks, hubert, fbank, tdmm,
tdmm_id), `.npy.gz` (parsing: gunzip, then npy) and `.json` (meta, placeholders). A field whose
utterance failed holds a placeholder member `<key>.error.json` instead (so the series stay
aligned); its catalog row says why. To read several fields of an utterance together, in step and
checked against the plan, use `catalog.open_store` (catalog/store.py).

The `.jpgs` container (features/codecs.py `encode_jpeg_sequence`; `.rgb.jpgs`, `.lip.jpgs`)
--------------------------------------------------------------------------------------------
One member holds one utterance's frames, 25 per second, as independent JPEG files:

    offset 0          uint32 little-endian N, the number of frames
    offset 4          N x uint32 little-endian L[0..N-1], each frame's JPEG length in bytes
    offset 4 + 4N     the N JPEGs back to back: frame i starts at 4 + 4N + L[0] + ... + L[i-1]

The index up front lets a reader decode only the frames it needs (`decode_jpgs(data, start,
stop)`; `features.codecs.jpeg_sequence_frames` gives the JPEG bytes without decoding). Each frame
is a baseline JPEG (quality 95, 4:2:0 chroma, written by OpenCV) that any decoder reads:

- rgb: the aligned 96 x 96 face crop, RGB. Since rgb version jpeg95-rst-2 each frame carries a
  restart interval (DRI) equal to its upper half's MCUs, so a restart marker sits exactly where
  the lower half starts; the trainer decodes that half alone (`codecs.lower_half_jpeg`). The
  marker changes no pixel for an ordinary decoder.
- lip: the 96 x 96 grey mouth ROI, stored as a 3-channel JPEG of a grey image; decoded, its
  first channel is the ROI.
"""
from __future__ import annotations

import numpy as np

from features.codecs import decode_jpeg_sequence
from features.fields import FIELDS

JPGS = "jpgs"


def decode_jpgs(data: bytes, start: int = 0, stop: int | None = None, gray: bool = False) -> np.ndarray:
    """Frames [start, stop) of a `.jpgs` member: (k, H, W, 3) uint8 RGB, or (k, H, W) with
    `gray` (lip); only those JPEGs are decoded."""
    frames = decode_jpeg_sequence(data, start, stop)
    return frames[..., 0] if gray else frames


def _field_of(key: str):
    """The registry field whose member extension ends `key` (".rgb.jpgs" -> rgb), or None."""
    key = key.lower()
    for f in FIELDS.values():
        if key.endswith("." + f.ext):
            return f
    return None


def webdataset_handler(key: str, data: bytes):
    """A webdataset decoder handler (`wds.WebDataset(url).decode(webdataset_handler)`): decodes a
    member of any store field by the field registry, any other `.jpgs` as RGB frames; None for
    the rest (webdataset's default handlers: .npy, .json, ...)."""
    field = _field_of(key)
    if field is not None:
        return field.decode(data)
    if key.lower().endswith("." + JPGS):
        return decode_jpgs(data)
    return None
