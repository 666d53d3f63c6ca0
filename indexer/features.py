"""Local features of a picture: RootSIFT keypoints on a bounded resize, stored as one blob.

SIFT (OpenCV) finds keypoints on the grey picture resized to at most `MAX_SIDE` pixels; each
descriptor becomes RootSIFT (Arandjelović & Zisserman, "Three things everyone should know to
improve object retrieval", 2012: L1-normalise, square root), so a dot product compares them as
the Hellinger kernel does. Indexed pictures keep at most `INDEX_KEYPOINTS` of the strongest
keypoints, a query `QUERY_KEYPOINTS`.

A blob holds: a header (magic, count, the picture's size), the keypoints as uint16 fractions of
the picture's width and height (exact to a sixty-thousandth of a side, whatever the draft size
it was decoded at), and the descriptors quantised to 4 bits per dimension (64 bytes a
keypoint). At 240 keypoints a blob is at most 16,334 bytes (16 GB at 1M pictures). An empty
blob body (count 0) means "looked, found nothing usable": flat, tiny or featureless pictures.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAX_SIDE = 512  # the longest side features are found at
MIN_SIDE = 24  # pictures whose shorter side (at that resize) is smaller get no features
INDEX_KEYPOINTS = 240
QUERY_KEYPOINTS = 1200  # measured: heavy text overlays need more than 800; unrelated pairs stay ≤ 4 inliers
DRAFT_SIDE = 320  # JPEGs decode at no less than this (see `decode_side`)
DESCRIPTOR_LEVELS = 15  # 4-bit codes 0..15
DESCRIPTOR_SCALE = 0.4  # a RootSIFT component of this value or more gets the top code
_MAGIC = b"LF1"
_HEADER = struct.Struct("<3sHII")  # magic, keypoint count, picture width, height


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of a `width`×`height` picture: `points` (N, 2) as fractions of its width and
    height, `descriptors` (N, 128) float32 RootSIFT vectors of unit length."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.points)

    def pixels(self) -> np.ndarray:
        """The keypoints in the picture's own pixels, (N, 2) float32."""
        return (self.points * np.array([self.width, self.height], np.float32)).astype(np.float32)


def empty(width: int, height: int) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), width, height)


def decode_side(draft_size: int) -> int:
    """The JPEG draft size to decode at when features are wanted as well as model inputs:
    large enough for both (a model with tiny inputs would otherwise draft a JPEG to 48 pixels)."""
    return max(draft_size, DRAFT_SIDE)


def extract(image, width: int | None = None, height: int | None = None,
            max_keypoints: int = INDEX_KEYPOINTS) -> LocalFeatures:
    """The local features of a Pillow `image` (possibly a draft-reduced decode of a
    `width`×`height` picture). Never raises for odd content: no features is an empty result."""
    import cv2
    from PIL import Image

    width, height = width or image.width, height or image.height
    grey = image.convert("L")
    factor = min(1.0, MAX_SIDE / max(grey.width, grey.height))
    if factor < 1.0:
        grey = grey.resize((max(1, round(grey.width * factor)), max(1, round(grey.height * factor))),
                           Image.BILINEAR)
    if min(grey.width, grey.height) < MIN_SIDE:
        return empty(width, height)
    pixels = np.asarray(grey)
    sift = cv2.SIFT_create(nfeatures=max_keypoints)
    keypoints, descriptors = sift.detectAndCompute(pixels, None)
    if descriptors is None or not keypoints:
        return empty(width, height)
    keypoints, descriptors = keypoints[:max_keypoints], descriptors[:max_keypoints]
    xy = np.array([kp.pt for kp in keypoints], np.float32)
    points = np.clip(xy / np.array([grey.width, grey.height], np.float32), 0.0, 1.0)
    return LocalFeatures(points, root_sift(descriptors), width, height)


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors → RootSIFT (L1-normalised, square-rooted: unit L2 length)."""
    d = np.asarray(descriptors, np.float32)
    d = d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(d)


def encode(features: LocalFeatures) -> bytes:
    """The blob of `features` (see the module's description)."""
    count = len(features)
    header = _HEADER.pack(_MAGIC, count, int(features.width), int(features.height))
    if not count:
        return header
    points = np.round(features.points * 65535).clip(0, 65535).astype("<u2")
    codes = np.round(features.descriptors / DESCRIPTOR_SCALE * DESCRIPTOR_LEVELS).clip(0, DESCRIPTOR_LEVELS)
    codes = codes.astype(np.uint8)
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
    return header + points.tobytes() + packed.tobytes()


def decode(blob: bytes) -> LocalFeatures:
    """The features a blob holds; ValueError for a blob that is not one."""
    if len(blob) < _HEADER.size:
        raise ValueError("local-feature blob too short")
    magic, count, width, height = _HEADER.unpack_from(blob)
    if magic != _MAGIC or len(blob) != _HEADER.size + count * (4 + 64):
        raise ValueError("not a local-feature blob of this version")
    if not count:
        return empty(width, height)
    at = _HEADER.size
    points = np.frombuffer(blob, "<u2", count * 2, at).reshape(count, 2).astype(np.float32) / 65535
    packed = np.frombuffer(blob, np.uint8, count * 64, at + count * 4).reshape(count, 64)
    codes = np.empty((count, 128), np.float32)
    codes[:, 0::2], codes[:, 1::2] = packed >> 4, packed & 15
    descriptors = codes * (DESCRIPTOR_SCALE / DESCRIPTOR_LEVELS)
    descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-7)
    return LocalFeatures(points, descriptors, width, height)


def mirrored_image(image):
    """The picture flipped left to right (its features are the mirrored query's)."""
    from PIL import Image

    return image.transpose(Image.FLIP_LEFT_RIGHT)
