"""Pictures of samples as PNG files: image grids, and 2-D scatter plots for the toy sets."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def grid(images: np.ndarray, *, pad: int = 1, min_size: int = 32) -> np.ndarray:
  """Tiles images (N, H, W, C) with values in [-1, 1] into one uint8 RGB array.

  Images smaller than ``min_size`` pixels are enlarged by an integer factor (nearest neighbour).
  """
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  scale = max(1, math.ceil(min_size / max(h, w)))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  if c == 1:
    images = images.repeat(3, axis=3)
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  h, w = h * scale, w * scale
  out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.float32)
  for i, img in enumerate(images):
    r, col = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
  return np.round((np.clip(out, -1, 1) + 1) * 127.5).astype(np.uint8)


def scatter(points: np.ndarray, reference: np.ndarray | None = None, *, size: int = 256,
            extent: float | None = None) -> np.ndarray:
  """Rasterises 2-D points (red) over optional reference points (grey) into a uint8 RGB array."""
  sets = [np.asarray(points)] + ([np.asarray(reference)] if reference is not None else [])
  if extent is None:
    extent = 1.1 * max(float(np.abs(s).max()) for s in sets) + 1e-6
  canvas = np.full((size, size, 3), 255, np.uint8)
  for pts, colour in zip(sets[::-1], ([170, 170, 170], [200, 30, 30])[-len(sets):]):
    ij = np.round((pts / extent + 1) / 2 * (size - 1)).astype(int)
    keep = np.all((ij >= 0) & (ij < size), axis=1)
    canvas[size - 1 - ij[keep, 1], ij[keep, 0]] = colour
  return canvas


def save_png(array: np.ndarray, path: str) -> str:
  """Writes a uint8 (H, W, 3) array as PNG, creating the folder; returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def save_samples(samples: np.ndarray, path: str, reference: np.ndarray | None = None) -> str:
  """A picture of samples: a grid for images (N, H, W, C), a scatter plot for 2-D points."""
  samples = np.asarray(samples)
  picture = grid(samples) if samples.ndim == 4 else scatter(samples, reference)
  return save_png(picture, path)
