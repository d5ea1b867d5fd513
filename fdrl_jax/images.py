"""Pictures of samples as PNG files: image grids, and 2-D scatter plots for the toy sets."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

TITLE_LINE = 12  # pixels of the title band above a figure


def tile(rows: np.ndarray, *, pad: int = 1, min_size: int = 32) -> np.ndarray:
  """Tiles images (R, C, H, W, ch) with values in [-1, 1] as R rows of C columns into one uint8
  RGB array with ``pad``-pixel white borders.

  Images smaller than ``min_size`` pixels are enlarged by an integer factor s = ⌈min_size /
  max(H, W)⌉ (nearest neighbour), so the picture is R·(sH + pad) + pad by C·(sW + pad) + pad.
  """
  rows = np.asarray(rows, np.float32)
  if rows.ndim != 5:
    raise ValueError(f"tile needs images of shape (rows, columns, H, W, C), got {rows.shape}.")
  num_rows, num_cols, h, w, c = rows.shape
  scale = max(1, math.ceil(min_size / max(h, w)))
  rows = rows.repeat(scale, axis=2).repeat(scale, axis=3)
  if c == 1:
    rows = rows.repeat(3, axis=4)
  h, w = h * scale, w * scale
  out = np.ones((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, 3), np.float32)
  for r in range(num_rows):
    for col in range(num_cols):
      top, left = pad + r * (h + pad), pad + col * (w + pad)
      out[top : top + h, left : left + w] = rows[r, col]
  return np.round((np.clip(out, -1, 1) + 1) * 127.5).astype(np.uint8)


def grid(images: np.ndarray, *, pad: int = 1, min_size: int = 32) -> np.ndarray:
  """Tiles N images (N, H, W, C) in [-1, 1] in ⌈√N⌉ columns (``tile``; empty cells white)."""
  images = np.asarray(images, np.float32)
  cols = math.ceil(math.sqrt(len(images)))
  rows = math.ceil(len(images) / cols)
  blank = np.ones((rows * cols - len(images), *images.shape[1:]), np.float32)
  cells = np.concatenate([images, blank]).reshape(rows, cols, *images.shape[1:])
  return tile(cells, pad=pad, min_size=min_size)


def scatter(
  points: np.ndarray,
  reference: np.ndarray | None = None,
  *,
  size: int = 256,
  extent: float | None = None,
) -> np.ndarray:
  """Rasterises 2-D points (red) over optional reference points (grey) into a uint8 RGB array."""
  sets = [np.asarray(points)] + ([np.asarray(reference)] if reference is not None else [])
  if extent is None:
    extent = 1.1 * max(float(np.abs(s).max()) for s in sets) + 1e-6
  canvas = np.full((size, size, 3), 255, np.uint8)
  for pts, colour in zip(sets[::-1], ([170, 170, 170], [200, 30, 30])[-len(sets) :]):
    ij = np.round((pts / extent + 1) / 2 * (size - 1)).astype(int)
    keep = np.all((ij >= 0) & (ij < size), axis=1)
    canvas[size - 1 - ij[keep, 1], ij[keep, 0]] = colour
  return canvas


def titled(picture: np.ndarray, title: str) -> np.ndarray:
  """``picture`` (uint8 RGB) under a ``TITLE_LINE``-pixel white band holding ``title`` in
  Pillow's default font; the canvas is widened (white, picture at the left) if the title is longer
  than the picture is wide."""
  font_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title)) + 4
  height, width = picture.shape[:2]
  canvas = Image.new("RGB", (max(width, font_width), height + TITLE_LINE), "white")
  canvas.paste(Image.fromarray(np.asarray(picture, np.uint8)), (0, TITLE_LINE))
  ImageDraw.Draw(canvas).text((2, 0), title, fill="black")
  return np.asarray(canvas)


def save_png(array: np.ndarray, path: str) -> str:
  """Writes a uint8 (H, W, 3) array as PNG, creating the folder; returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def samples_picture(samples: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
  """A picture of samples: a grid for images (N, H, W, C), a scatter plot for 2-D points (over
  ``reference`` points, if given)."""
  samples = np.asarray(samples)
  return grid(samples) if samples.ndim == 4 else scatter(samples, reference)


def save_samples(samples: np.ndarray, path: str, reference: np.ndarray | None = None) -> str:
  """Writes ``samples_picture(samples, reference)`` as PNG."""
  return save_png(samples_picture(samples, reference), path)
