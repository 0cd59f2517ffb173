"""Small synthetic videos for the preprocessing and vmae-predict tests: moving shapes on a
gradient, so every crop, frame index and channel order shows in the pixels."""
from __future__ import annotations

import numpy as np


def frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB [count, height, width, 3]: a red square moving right, a green disc moving
    down, a blue bar sweeping, on a diagonal gradient that differs per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // max(width, 1), yy * 200 // max(height, 1), (xx + yy) * 100 // (width + height)], -1)
    out = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        img = base.copy() + rng.integers(0, 20, size=3)
        x0 = (t * 7) % max(width - 12, 1)
        img[height // 4: height // 4 + 12, x0: x0 + 12] = (250, 20, 20)
        cy, cx = (t * 5) % height, width // 2
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] = (20, 240, 30)
        bar = (t * 3) % width
        img[:, bar: bar + 3] = (10, 10, 245)
        out[t] = np.clip(img, 0, 255)
    return out


def write(path, video: np.ndarray, codec: str = "libx264", fps: int = 25) -> None:
    """Encode `video` (uint8 RGB [T, H, W, 3]) with PyAV; libx264 at crf 0 is lossless in yuv444."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = video.shape[1:3]
        if codec == "libx264":
            stream.pix_fmt, stream.options = "yuv444p", {"crf": "0"}
        else:
            stream.pix_fmt = "yuv420p"
        for img in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
