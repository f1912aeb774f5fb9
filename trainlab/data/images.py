"""Users' images (a folder per class, or MNIST-format IDX files) and the augmentation of image batches."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import PositiveInt

from trainlab import registry
from trainlab.config import ImageTable
from trainlab.errors import UserError, first_line


class ImageFolderData(ImageTable):
    source: Literal["image_folder"] = "image_folder"
    path: str = ""  # the root: one sub-folder per class
    image_size: PositiveInt = 28  # images are resized to image_size x image_size
    grayscale: bool = True  # one channel instead of three


class IDXData(ImageTable):
    source: Literal["idx"] = "idx"
    path: str = ""  # the images file (MNIST's IDX format, plain or gzipped)
    labels_path: str = ""  # the labels file


@registry.source("image_folder", ImageFolderData, provides={"features", "images", "labels"})
def build_image_folder(cfg: ImageFolderData):
    """Your images, one sub-folder per class, resized to data.image_size."""
    from trainlab.data import from_arrays

    if not cfg.path:
        raise UserError("data.source = 'image_folder' needs data.path", "add data.path=/path/to/your/images")
    return from_arrays(cfg, *load_image_folder(cfg.path, cfg.image_size, cfg.grayscale))


@registry.source("idx", IDXData, provides={"features", "images", "labels"})
def build_idx(cfg: IDXData):
    """MNIST-format IDX files (images and labels), plain or gzipped."""
    from trainlab.data import from_arrays

    if not cfg.path:
        raise UserError("data.source = 'idx' needs data.path", "add data.path=/path/to/train-images-idx3-ubyte.gz")
    return from_arrays(cfg, *load_idx(cfg.path, cfg.labels_path))

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image(f: str | Path, size: int, grayscale: bool) -> np.ndarray:
    """One image file as a (channels, size, size) float array in [0, 1]: the preprocessing of training and of
    `trainlab predict`."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            im = im.convert("L" if grayscale else "RGB").resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except Image.DecompressionBombError:  # not an OSError: PIL refuses images of more than ~179 M pixels
        raise UserError(f"image {f} is too large to decode safely (a decompression bomb?)",
                        "remove the file, or shrink it below 179 million pixels") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unreadable, truncated or malformed files
        raise UserError(f"cannot read image {f}: {first_line(e)}", "remove or replace the file") from None
    return a[None] if grayscale else a.transpose(2, 0, 1)



def load_image_folder(root: str, size: int, grayscale: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """root/<class name>/<image>: classes are the sub-folder names in sorted order; images resized to size x size."""
    r = Path(root)
    if not r.is_dir():
        raise UserError(f"image folder {root} does not exist", "set data.path to a folder with one sub-folder per class")
    classes = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders", "put each class's images in root/<class>/")
    xs, ys = [], []
    for k, name in enumerate(classes):
        for f in sorted((r / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            xs.append(load_image(f, size, grayscale))
            ys.append(k)
    if not xs:
        raise UserError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                        "put image files in the class sub-folders")
    return np.stack(xs), np.array(ys), {"task": "classification", "class_names": classes}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format): magic 0x0000 + type code + rank, then big-endian dims, then the data."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"IDX file {path} does not exist", "check data.path / data.labels_path")
    try:
        raw = (gzip.open if p.suffix == ".gz" else open)(p, "rb").read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut gzip ends in EOFError
        raise UserError(f"cannot read IDX file {path}: {first_line(e)}",
                        "give the file as it was downloaded (a .gz name must hold gzip data)") from None
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise UserError(f"{path} is not an IDX file (bad magic number)", "give MNIST-format IDX files")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    dt = np.dtype(dtypes[raw[2]])
    start, count = 4 + 4 * rank, math.prod(dims)
    if len(raw) - start != count * dt.itemsize:
        raise UserError(f"{path} is truncated: the header promises {dims} values", "download or copy the file again")
    return np.frombuffer(raw, dtype=dt, offset=start).reshape(dims)


def load_idx(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if not labels_path:
        raise UserError("data.source = 'idx' needs data.labels_path", "add data.labels_path=/path/to/labels-idx1-ubyte")
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.ndim != 3 or y.ndim != 1:
        raise UserError(f"expected images of rank 3 and labels of rank 1, got {x.ndim} and {y.ndim}",
                        "data.path is the images file, data.labels_path the labels file")
    if len(x) != len(y):
        raise UserError(f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels",
                        "give the matching pair of files")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return (x.astype(np.float32) / scale)[:, None], y.astype(np.int64), {"task": "classification"}


class RandomAffine:
    """Shift each image by up to shift_px pixels and rotate it by up to `degrees`. The random parameters are
    drawn for a whole global batch and applied to any slice of it (each process augments only its share)."""

    def __init__(self, shift_px: float, degrees: float):
        self.shift_px, self.degrees = shift_px, degrees

    def draw(self, n: int, g: torch.Generator) -> torch.Tensor:
        """(n, 3): angle in radians, x and y shifts in pixels."""
        angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(self.degrees)
        tx = (torch.rand(n, generator=g) * 2 - 1) * self.shift_px
        ty = (torch.rand(n, generator=g) * 2 - 1) * self.shift_px
        return torch.stack([angle, tx, ty], 1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape  # x: (B, C, H, W)
        angle, tx, ty = params.unbind(1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # affine_grid works in normalized coordinates [-1, 1]: one pixel is 2/W wide.
        theta = torch.stack([torch.stack([cos, -sin, tx * 2 / w], 1), torch.stack([sin, cos, ty * 2 / h], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_affine(x: torch.Tensor, g: torch.Generator, shift_px: float, degrees: float) -> torch.Tensor:
    aug = RandomAffine(shift_px, degrees)
    return aug.apply(x, aug.draw(len(x), g))
