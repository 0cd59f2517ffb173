"""From a video file to model inputs, as the official VideoMAE test protocol prepares them.

numpy, PyAV and OpenCV only (no torch, no tensorflow), so a server can run it anywhere.
Each step follows one piece of the official code (MCG-NJU/VideoMAE, commit 14ef8d8):

- Decoding: `kinetics.py` / `ssv2.py` `loadvideo_decord` read every frame with decord,
  RGB, at the file's own size: `datasets.build_dataset` passes `keep_aspect_ratio=True`, so
  decord's own resize (`VideoReader(width=320, height=256)`, which would stretch) is never
  used and all resizing is the cv2 step below. Here PyAV (FFmpeg, the library
  decord wraps, with maintained wheels for every platform; decord's are unmaintained) decodes
  the frames in presentation order, converted to RGB24 by FFmpeg's swscale as decord does.
- Frame sampling, dense (Kinetics, UCF101; `VideoClsDataset`, mode `test`): every
  `sampling_rate`-th frame from 0 (padded with the last one up to 16), then clip `c` of
  `clips` starts at `int(c * (len - 16) / (clips - 1))` in that list (`__getitem__`).
- Frame sampling, segments (SSv2; `SSVideoClsDataset`, mode `test`): 16 segments of
  `tick = frames / 16`; clip 0 takes each segment's first frame `int(tick * x)`, clip 1 its
  middle `int(tick / 2 + tick * x)` (the official code sorts both lists together and takes
  every other one, which gives exactly these).
- Resize (`video_transforms.Resize(short_side_size, 'bilinear')` -> `functional.resize_clip`):
  short side to 224, long side `int(224 * long / short)`, `cv2.resize(..., INTER_LINEAR)`;
  a frame whose short side is already 224 is left alone. The same cv2 call is used here,
  so the pixels are the official ones, not a re-implementation's approximation. The resize
  is applied as each frame is decoded (it acts per frame, so the order does not matter) to
  keep a long video's memory at 224-pixel frames.
- Crops (`__getitem__`, mode `test`): `crops` windows of the full short side along the long
  side, window `s` starting at `int(s * (long - 224) / (crops - 1))`.
- Normalisation (`volume_transforms.ClipToTensor` then `video_transforms.Normalize`):
  float32 `x / 255`, then `(x - mean) / std` with ImageNet's mean and std, in float32.
- Views (`engine_for_finetuning.merge`): softmax of each view's logits, then their mean.

Where this differs, and why: the official code has no single-view test (`test_num_crop=1`
divides by zero; its validation mode samples at random), so `views=(1, 1)` takes one clip
centred in the video (`start = (frames - 16 * rate) // 2`, floored at 0; for SSv2 the segment
middles) with the official validation `CenterCrop` (`x = round((long - 224) / 2)`). A video
shorter than one clip is refused where the official loader pads it with its last frame: a
classification of a clip that is mostly one repeated frame would look valid and not be.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_FRAMES = 16
IMAGE_SIZE = 224


class VideoError(ValueError):
    """A video this pipeline cannot turn into a clip (unreadable, too short, no video stream)."""


def _require(module: str):
    """The optional decoding/resizing libraries, or one actionable line instead of a traceback."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise VideoError(f"{module} is not installed: pip install 'vmae-convert[predict]'") from None


@dataclass(frozen=True)
class Protocol:
    """The official test protocol of one dataset (`scripts/*/finetune.sh` of the official repo)."""

    sampling: str  # "dense" (every rate-th frame) or "segments" (one frame per 1/16 of the video)
    sampling_rate: int  # dense only
    clips: int  # --test_num_segment
    crops: int  # --test_num_crop


PROTOCOLS = {
    "k400": Protocol("dense", 4, 5, 3),
    "k710": Protocol("dense", 4, 5, 3),  # VideoMAE V2 evaluates its K710 heads as K400
    "ucf101": Protocol("dense", 4, 5, 3),
    "ssv2": Protocol("segments", 2, 2, 3),
    # VideoMAE V2 scripts/finetune/vit_g_k710_it_{k600,hmdb51}_ft.sh
    "k600": Protocol("dense", 4, 5, 3),
    "hmdb51": Protocol("dense", 2, 5, 3),
}


def protocol_for(dataset: str) -> Protocol:
    try:
        return PROTOCOLS[dataset.lower()]
    except KeyError:
        raise ValueError(f"no test protocol for dataset {dataset!r}; known: {', '.join(PROTOCOLS)}") from None


def iter_frames(path) -> Iterator[np.ndarray]:
    """Decoded frames of the first video stream, RGB uint8 [H, W, 3], in presentation order."""
    av = _require("av")

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"cannot read {path}: {_reason(err)}") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode {path}: {_reason(err)}") from None


def _reason(err) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__


def resize_short_side(frame: np.ndarray, size: int) -> np.ndarray:
    """`functional.resize_clip` for one uint8 frame: short side to `size`, bilinear (cv2)."""
    cv2 = _require("cv2")

    h, w = frame.shape[:2]
    if min(h, w) == size:
        return frame
    if w < h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def load_video(path, short_side: int = IMAGE_SIZE,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Every frame of `path`, resized to `short_side`: uint8 [N, H, W, 3]."""
    frames = []
    for frame in iter_frames(path):
        frames.append(resize_short_side(frame, short_side))
        if progress is not None and len(frames) % 100 == 0:
            progress(len(frames))
    if not frames:
        raise VideoError(f"{path} has no decodable frame")
    return np.stack(frames)


def min_frames(protocol: Protocol, num_frames: int = NUM_FRAMES) -> int:
    """Frames one clip needs: the span of 16 frames at the sampling rate, or 16 segments."""
    if protocol.sampling == "dense":
        return (num_frames - 1) * protocol.sampling_rate + 1
    return num_frames


def clip_indices(total: int, protocol: Protocol, clips: int, num_frames: int = NUM_FRAMES) -> list[np.ndarray]:
    """Frame indices of each of `clips` temporal clips of a `total`-frame video."""
    if total < min_frames(protocol, num_frames):
        span = (f"{num_frames} frames at sampling rate {protocol.sampling_rate}" if protocol.sampling == "dense"
                else f"{num_frames} segments")
        raise VideoError(f"video too short: {total} frames, one clip needs {min_frames(protocol, num_frames)} "
                         f"({span})")
    if protocol.sampling == "dense":
        rate = protocol.sampling_rate
        if clips == 1:
            start = max(0, (total - num_frames * rate) // 2)
            return [start + rate * np.arange(num_frames)]
        strided = np.arange(0, total, rate)  # never shorter than num_frames here: no padding
        step = max((len(strided) - num_frames) / (clips - 1), 0.0)
        return [strided[int(c * step): int(c * step) + num_frames] for c in range(clips)]
    tick = total / num_frames
    starts = np.array([int(tick * x) for x in range(num_frames)])
    middles = np.array([int(tick / 2.0 + tick * x) for x in range(num_frames)])
    if clips == 1:
        return [middles]
    if clips == 2:
        return [starts, middles]
    raise ValueError(f"segment sampling has 1 or 2 clips per video, not {clips}")


def crop_offsets(height: int, width: int, crops: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of each `size` x `size` crop of a frame whose short side is `size`."""
    long_side = max(height, width)
    if crops == 1:
        offsets = [int(round((long_side - size) / 2.0))]  # CenterCrop: Python round, as upstream
    else:
        step = (long_side - size) / (crops - 1)
        offsets = [int(s * step) for s in range(crops)]
    return [(o, 0) if height >= width else (0, o) for o in offsets]


def sample_views(video: np.ndarray, protocol: Protocol, clips: int, crops: int,
                 num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 views [clips * crops, T, size, size, 3], clip-major as the official test order."""
    h, w = video.shape[1:3]
    if min(h, w) != size:
        raise ValueError(f"frames must have a short side of {size} (resize_short_side), not {min(h, w)}")
    views = []
    for indices in clip_indices(len(video), protocol, clips, num_frames):
        clip = video[indices]
        for top, left in crop_offsets(h, w, crops, size):
            views.append(clip[:, top:top + size, left:left + size])
    return np.stack(views)


def normalise(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 `(x / 255 - mean) / std`, in float32 as the official transforms."""
    x = frames.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def preprocess(path, dataset: str = "k400", views: tuple[int, int] | None = None,
               num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The model inputs of one video file: float32 [V, T, size, size, 3], V = clips x crops
    (the dataset's official protocol unless `views` says otherwise; (1, 1): centred clip)."""
    protocol = protocol_for(dataset)
    clips, crops = views or (protocol.clips, protocol.crops)
    video = load_video(path, size, progress)
    return normalise(sample_views(video, protocol, clips, crops, num_frames, size))


def average_softmax(logits: np.ndarray) -> np.ndarray:
    """`merge`: softmax of each view's logits [V, C], then the mean over views -> [C]."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).mean(axis=0)
