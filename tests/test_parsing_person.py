"""Parsing with hair, neck and background: MediaPipe's selfie segmentation (packaged in the
mediapipe wheel, real weights) under the mesh regions, on a real clip; and never a silent
mesh-only map: a failed face pass or masks that do not fit the landmarks fail the utterance's
parsing (an unloadable segmenter, the job's: tests/test_representations.py, with adding parsing
to a store)."""
from __future__ import annotations

import numpy as np
import pytest

from features import landmarks as landmarks_field
from features import parsing, segmentation
from features.face import FaceTracker
from features.fields import FIELDS, Sources
from tests.conftest import noise_frames, write_video


@pytest.fixture(scope="module")
def clip(real_corpus) -> dict:
    if not segmentation.available():
        pytest.skip("mediapipe's selfie segmentation is not available here")
    path = str(real_corpus / "spk02" / "a.mp4")
    s = Sources({"utt_id": "spk02/a", "video_path": path}, FaceTracker, wanted=["parsing"])
    labels = parsing.decode(FIELDS["parsing"].extract(s))
    return {"labels": labels, "landmarks": np.asarray(s.landmarks, np.float32), "person": s.person_masks()}


def test_hair_above_the_face_neck_below_and_background_outside_the_person(clip):
    labels, lm, person = clip["labels"], clip["landmarks"], clip["person"]
    assert person is not None and person.shape == labels.shape == (len(lm), 96, 96)
    hair_above, bg_corners, neck_below = [], [], []
    for lab, pts, mask in zip(labels, lm, person):
        top = int(pts[10, 1]) - 1  # the forehead's top: the band above it, over the face's width
        x0, x1 = int(pts[234, 0]) + 8, int(pts[454, 0]) - 8
        band = lab[: max(top, 1), x0:x1]
        hair_above.append((band == parsing.HAIR).mean())
        corners = np.concatenate([lab[:8, :8].ravel(), lab[:8, -8:].ravel()])
        bg_corners.append((corners == parsing.BACKGROUND).mean())
        chin = int(pts[152, 1]) + 2  # under the chin, between the jaw points
        jaw = slice(int(pts[172, 0]) + 4, int(pts[397, 0]) - 4)
        if chin < 96:
            neck_below.append((lab[chin:, jaw] == parsing.NECK).mean())
        assert np.all(lab[~mask] <= parsing.L_LIP)  # outside the person: background or the mesh's face
        assert not (mask & (lab == parsing.BACKGROUND)).any()  # a person pixel is never background
    assert np.median(hair_above) >= 0.8, np.percentile(hair_above, [10, 50])
    assert np.mean(np.array(bg_corners) >= 0.5) >= 0.9, np.percentile(bg_corners, [10, 50])
    assert neck_below and np.median(neck_below) >= 0.8, np.percentile(neck_below, [10, 50])
    assert (labels == parsing.HAIR).mean() > 0.05 and (labels == parsing.BACKGROUND).mean() > 0.05


def test_without_a_person_mask_the_mesh_alone_is_drawn(clip):
    labels, lm = clip["labels"], clip["landmarks"]
    alone = np.stack([parsing.parse_frame(f) for f in lm[:10]])
    assert not np.isin(alone, [parsing.HAIR, parsing.NECK, parsing.CLOTH]).any()
    face = alone > parsing.BACKGROUND  # the mesh's regions are the same either way
    assert np.array_equal(alone[face], labels[:10][face])
    assert parsing.VERSION == "mesh-selfie-2"


def test_a_failed_face_pass_is_a_parsing_error_with_its_reason(clip, tmp_path):
    video = tmp_path / "noise.mp4"
    write_video(video, noise_frames(12, size=96))
    stored = {"landmarks": landmarks_field.encode(np.asarray(clip["landmarks"][:12], np.float16))}
    s = Sources({"utt_id": "noise", "video_path": str(video)}, FaceTracker, stored, wanted=["parsing"])
    with pytest.raises(segmentation.PersonMaskError) as err:
        FIELDS["parsing"].extract(s)
    assert "the face pass failed" in str(err.value) and err.value.stage == "face"


def test_masks_that_do_not_fit_the_landmarks_are_refused(clip):
    lm, person = clip["landmarks"].astype(np.float16), clip["person"]
    assert segmentation.fitted(person, lm, lm) is person
    with pytest.raises(segmentation.PersonMaskError, match="person masks"):
        segmentation.fitted(person[:-3], lm, lm)  # a count that differs from the landmarks
    with pytest.raises(segmentation.PersonMaskError, match="px from the stored landmarks"):
        segmentation.fitted(person, lm, lm + np.float16(3))  # stored landmarks of another track
    with pytest.raises(segmentation.PersonMaskError, match="no person masks"):
        segmentation.fitted(None, lm, lm)
