"""The official VideoMAE test-time pipeline, re-written for the tests from MCG-NJU/VideoMAE
(commit 14ef8d8) in its own shape: index lists built as `loadvideo_decord` builds them, the
clip as a list of frames through `functional.resize_clip` (cv2), the chunk/split slicing of
`__getitem__`, `ClipToTensor` (a float64 buffer, float32 tensor, / 255) and `Normalize`
(torch, in place). Decord is replaced by a plain PyAV loop. Nothing here is shared with
`tf_models.preprocessing`, so a change there that the official code would not make shows.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def decode_all(path) -> list[np.ndarray]:
    """Every frame, RGB uint8 (decord's `get_batch(...).asnumpy()` order and format)."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def resize_clip(clip, size):
    """functional.resize_clip for numpy frames and an int size (bilinear)."""
    im_h, im_w, _ = clip[0].shape
    if (im_w <= im_h and im_w == size) or (im_h <= im_w and im_h == size):
        return clip
    if im_w < im_h:
        ow, oh = size, int(size * im_h / im_w)
    else:
        oh, ow = size, int(size * im_w / im_h)
    return [cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR) for img in clip]


def to_normalised_tensor(buffer) -> np.ndarray:
    """ClipToTensor then Normalize; returned channels-last [T, H, W, C] for comparison."""
    t, h, w, c = buffer.shape
    np_clip = np.zeros([c, t, h, w])
    for i, img in enumerate(buffer):
        np_clip[:, i, :, :] = img.transpose(2, 0, 1)
    tensor = torch.div(torch.from_numpy(np_clip).float(), 255)
    mean = torch.as_tensor(MEAN, dtype=tensor.dtype)
    std = torch.as_tensor(STD, dtype=tensor.dtype)
    tensor.sub_(mean[:, None, None, None]).div_(std[:, None, None, None])
    return tensor.numpy().transpose(1, 2, 3, 0)


def _spatial(buffer, split_nb, num_crop, short_side_size):
    spatial_step = 1.0 * (max(buffer.shape[1], buffer.shape[2]) - short_side_size) / (num_crop - 1)
    spatial_start = int(split_nb * spatial_step)
    if buffer.shape[1] >= buffer.shape[2]:
        return buffer[:, spatial_start:spatial_start + short_side_size, :, :]
    return buffer[:, :, spatial_start:spatial_start + short_side_size, :]


def kinetics_test_views(frames, clip_len=16, frame_sample_rate=4, short_side_size=224,
                        test_num_segment=5, test_num_crop=3) -> list[np.ndarray]:
    """VideoClsDataset(mode='test'): every view in (chunk_nb, split_nb) order."""
    all_index = [x for x in range(0, len(frames), frame_sample_rate)]
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    buffer = np.stack(resize_clip([frames[i] for i in all_index], short_side_size), 0)
    views = []
    for chunk_nb in range(test_num_segment):
        for split_nb in range(test_num_crop):
            temporal_step = max(1.0 * (buffer.shape[0] - clip_len) / (test_num_segment - 1), 0)
            temporal_start = int(chunk_nb * temporal_step)
            clip = buffer[temporal_start:temporal_start + clip_len]
            views.append(to_normalised_tensor(_spatial(clip, split_nb, test_num_crop, short_side_size)))
    return views


def ssv2_test_views(frames, num_segment=16, short_side_size=224, test_num_segment=2,
                    test_num_crop=3) -> list[np.ndarray]:
    """SSVideoClsDataset(mode='test'): every view in (chunk_nb, split_nb) order."""
    tick = len(frames) / float(num_segment)
    all_index = list(np.array([int(tick / 2.0 + tick * x) for x in range(num_segment)]
                              + [int(tick * x) for x in range(num_segment)]))
    while len(all_index) < num_segment * test_num_segment:
        all_index.append(all_index[-1])
    all_index = list(np.sort(np.array(all_index)))
    buffer = np.stack(resize_clip([frames[i] for i in all_index], short_side_size), 0)
    views = []
    for chunk_nb in range(test_num_segment):
        for split_nb in range(test_num_crop):
            clip = buffer[chunk_nb::2]
            views.append(to_normalised_tensor(_spatial(clip, split_nb, test_num_crop, short_side_size)))
    return views


def centre_view(frames, clip_len=16, frame_sample_rate=4, size=224, segments=False) -> np.ndarray:
    """The single view the issue defines: clip start (frames - clip_len * rate) // 2 (segment
    middles for SSv2), then the official validation CenterCrop (Python round)."""
    if segments:
        tick = len(frames) / float(clip_len)
        index = [int(tick / 2.0 + tick * x) for x in range(clip_len)]
    else:
        start = max((len(frames) - clip_len * frame_sample_rate) // 2, 0)
        index = [start + i * frame_sample_rate for i in range(clip_len)]
    clip = resize_clip([frames[i] for i in index], size)
    im_h, im_w, _ = clip[0].shape
    x1, y1 = int(round((im_w - size) / 2.)), int(round((im_h - size) / 2.))
    clip = [img[y1:y1 + size, x1:x1 + size, :] for img in clip]
    return to_normalised_tensor(np.stack(clip, 0))
