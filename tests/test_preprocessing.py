"""Golden tests: tf_models.preprocessing against the official test transforms, re-written in
tests/official_transforms.py, element-wise, on synthetic videos of odd sizes."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import synthetic_video
from official_transforms import centre_view, decode_all, kinetics_test_views, ssv2_test_views

from tf_models import preprocessing as P

SIZE = 32  # short side and crop: the official 224, scaled down to keep the tests fast


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Landscape 41x46 (mp4, 90 frames: 5 distinct clips at rate 4) and portrait 59x43
    (webm/VP8, 47 frames). Sizes chosen so that every rounding of the official code matters:
    the long sides become 35.9 -> 35 and 43.9 -> 43 (int, not round), crop steps 1.5 and 5.5, the
    centre crop offset 1.5 -> 2 (Python's round)."""
    root = tmp_path_factory.mktemp("videos")
    wide, tall = root / "wide.mp4", root / "tall.webm"
    synthetic_video.write(wide, synthetic_video.frames(90, 41, 46, seed=1))
    synthetic_video.write(tall, synthetic_video.frames(47, 59, 43, seed=2), codec="libvpx")
    return {"wide": wide, "tall": tall}


def _same(ours, official):
    assert ours.shape == official.shape
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["wide", "tall"])
def test_kinetics_protocol_matches_official_views(videos, name):
    ours = P.preprocess(videos[name], "k400", size=SIZE) if name == "wide" else None
    frames = decode_all(videos[name])
    if name == "tall":  # 47 frames: too short for 16 x rate 4; rate 2 keeps the protocol's arithmetic
        protocol = P.Protocol("dense", 2, 5, 3)
        ours = P.normalise(P.sample_views(P.load_video(videos[name], SIZE), protocol, 5, 3, 16, SIZE))
        official = kinetics_test_views(frames, 16, 2, SIZE)
    else:
        official = kinetics_test_views(frames, 16, 4, SIZE)
    assert len(official) == 15
    _same(ours, np.stack(official))


@pytest.mark.parametrize("name", ["wide", "tall"])
def test_ssv2_protocol_matches_official_views(videos, name):
    ours = P.preprocess(videos[name], "ssv2", size=SIZE)
    official = ssv2_test_views(decode_all(videos[name]), 16, SIZE)
    assert len(official) == 6
    _same(ours, np.stack(official))


@pytest.mark.parametrize("dataset", ["k400", "ssv2"])
def test_single_view_is_the_centred_clip_with_centre_crop(videos, dataset):
    ours = P.preprocess(videos["wide"], dataset, views=(1, 1), size=SIZE)
    official = centre_view(decode_all(videos["wide"]), 16, 4, SIZE, segments=dataset == "ssv2")
    _same(ours, official[None])


def test_views_differ_from_each_other(videos):
    """The 15 views are 5 different clips x 3 different crops: a sampler that repeated one
    view would pass a comparison against itself, not this."""
    views = P.preprocess(videos["wide"], "k400", size=SIZE)
    flat = views.reshape(len(views), -1)
    assert len({v.tobytes() for v in flat}) == 15


def test_too_short_video_is_refused_with_the_frame_count(videos):
    with pytest.raises(P.VideoError, match="video too short: 47 frames, one clip needs 61"):
        P.preprocess(videos["tall"], "k400", size=SIZE)


def test_unreadable_and_missing_files_are_video_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(P.VideoError, match="cannot read"):
        P.preprocess(junk)
    with pytest.raises(P.VideoError, match="cannot read"):
        P.preprocess(tmp_path / "missing.mp4")


def test_average_softmax_is_the_mean_of_per_view_softmax():
    """One confident view against two moderate ones: averaging logits would follow the
    confident view (class 0), the official merge averages probabilities (class 1)."""
    logits = np.array([[20.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 5.0, 0.0]])
    per_view = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(P.average_softmax(logits), per_view.mean(0), rtol=1e-12)
    assert P.average_softmax(logits).argmax() == 1 and logits.mean(0).argmax() == 0


def test_missing_decoder_library_is_one_actionable_line(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # what an install without the predict extra sees
    with pytest.raises(P.VideoError, match=r"av is not installed: pip install 'vmae-convert\[predict\]'"):
        P.preprocess(videos["wide"])
