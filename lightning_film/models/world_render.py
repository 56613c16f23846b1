"""PNG sheets of world-model frames: grids of uint8 frames, written atomically with Pillow.

Legend: H, W frame height and width, C channels (1 or 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_film.io import atomic_path

__all__ = ["frame_grid", "label_columns", "save_png"]


def _hwc(frame: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) tensor or (H, W, C) array, uint8 -> (H, W, 3) uint8 array."""
    if isinstance(frame, Tensor):
        frame = frame.detach().cpu()
        if frame.dtype != torch.uint8:
            raise ValueError(f"frame_grid expects uint8 frames, got {frame.dtype}")
        frame = frame.permute(1, 2, 0).numpy()
    if frame.dtype != np.uint8 or frame.ndim != 3:
        raise ValueError(f"frame_grid expects uint8 (H, W, C) frames, got {frame.dtype} {frame.shape}")
    return np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame


def frame_grid(
    rows: Sequence[Sequence[Tensor | np.ndarray | None]], scale: int = 4, pad: int = 2, background: int = 255
) -> np.ndarray:
    """Rows of frames -> one (H', W', 3) uint8 image; ``None`` leaves a cell blank.

    Every frame must have the same size; each is enlarged ``scale`` times (nearest), so that
    32 x 32 frames are readable, and cells are separated by ``pad`` pixels of ``background``.
    """
    cells = [[None if f is None else _hwc(f) for f in row] for row in rows]
    sizes = {c.shape for row in cells for c in row if c is not None}
    if len(sizes) != 1:
        raise ValueError(f"frame_grid needs frames of one size, got {sorted(sizes) or 'none'}")
    h, w, _ = sizes.pop()
    ch, cw = h * scale, w * scale
    n_rows, n_cols = len(cells), max(len(row) for row in cells)
    out = np.full((n_rows * (ch + pad) + pad, n_cols * (cw + pad) + pad, 3), background, dtype=np.uint8)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if cell is not None:
                y, x = pad + i * (ch + pad), pad + j * (cw + pad)
                out[y : y + ch, x : x + cw] = cell.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def label_columns(
    image: np.ndarray, labels: Sequence[str], cell: int, pad: int = 2, height: int = 14, background: int = 255
) -> np.ndarray:
    """A :func:`frame_grid` image (H', W', 3) with a header row of ``height`` pixels naming its
    columns (``cell`` pixels wide each, ``pad`` apart), in Pillow's built-in font."""
    from PIL import Image, ImageDraw, ImageFont

    header = Image.new("RGB", (image.shape[1], height), (background,) * 3)
    draw, font = ImageDraw.Draw(header), ImageFont.load_default()
    for j, label in enumerate(labels):
        draw.text((pad + j * (cell + pad) + 2, 1), label, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(header, dtype=np.uint8), image])


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, via a temporary file and ``os.replace``."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path
