"""Decoding for :class:`~hf_transfer.data.decoded.DecodedImages`: one image to RGB at its storage shape (the
stock eval geometry, or the split's one train storage shape), chunks of rows decoded in worker threads, and the
image sizes read from the headers before anything is decoded. Module-level functions, so that worker processes can
run them and tests can patch them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hf_transfer.data.images import to_rgb
from hf_transfer.data.load import IMAGE_ERRORS
from hf_transfer.data.transforms import DataConfig, eval_geometry
from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image
    from torchvision.transforms import InterpolationMode

#: one decoded chunk: (its first row, uint8 ``[n, 3, Hs, Ws]`` pixels, int32 ``[n, 2]`` original sizes)
Chunk = tuple[int, np.ndarray, np.ndarray]


def _pil_interpolation(name: str) -> InterpolationMode:
    from torchvision.transforms import InterpolationMode

    return {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }.get(name, InterpolationMode.BILINEAR)  # the stock transforms' fallback


def _to_rgb(value: Any) -> Image.Image:
    """A decoded ``Image`` cell (PIL image, ``{"bytes", "path"}`` dict or array) as an RGB PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            img = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            img = Image.open(value["path"])
        else:
            raise TransferConfigError("An image cell has neither bytes nor a path.")
    elif isinstance(value, np.ndarray):
        img = Image.fromarray(value)
    else:
        raise TransferConfigError(f"Cannot read an image from a {type(value).__name__}.")
    return to_rgb(img)  # exactly what the stock make_batch_transform does


def _prepare(
    img: Image.Image,
    kind: str,
    size: int,
    crop_pct: float,
    interpolation: str,
    storage_hw: tuple[int, int],
    crop_mode: str = "center",
    mean: tuple[float, float, float] = DataConfig.mean,
) -> np.ndarray:
    """One RGB PIL image -> uint8 ``[3, h, w]`` storage array (see the module doc)."""
    from torchvision.transforms import functional as TF

    interp = _pil_interpolation(interpolation)
    if kind == "eval":  # the stock eval transform's own geometry, every crop_mode
        cfg = DataConfig(
            (3, size, size),
            (mean[0], mean[1], mean[2]),
            interpolation=interpolation,
            crop_pct=crop_pct,
            crop_mode=crop_mode,
        )
        img = eval_geometry(cfg)(img)
    else:
        hs, ws = storage_hw
        if (img.height, img.width) != (hs, ws):
            img = TF.resize(img, [hs, ws], interpolation=interp)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _cells(dataset: Dataset, start: int, stop: int, image_column: str) -> list[Any]:
    """The image cells of rows ``[start, stop)``; an undecodable one is an error that names its row."""
    try:
        return dataset[start:stop][image_column]
    except IMAGE_ERRORS:  # decoded by datasets: find the row
        for i in range(start, stop):
            try:
                dataset[i][image_column]
            except IMAGE_ERRORS as err:
                raise _bad_row(i, err) from err
        raise


def _bad_row(i: int, err: Exception) -> TransferConfigError:
    return TransferConfigError(f"Row {i}: the image cannot be decoded ({type(err).__name__}: {err}).")


def _decode_chunk(
    dataset: Dataset,
    start: int,
    stop: int,
    image_column: str,
    kind: str,
    size: int,
    crop_pct: float,
    interpolation: str,
    storage_hw: tuple[int, int],
    crop_mode: str = "center",
    mean: tuple[float, float, float] = DataConfig.mean,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` -> (uint8 ``[n, 3, Hs, Ws]``, int32 original ``[n, 2]`` (H, W))."""
    cells = _cells(dataset, start, stop, image_column)
    out = np.empty((stop - start, 3, *storage_hw), dtype=np.uint8)
    sizes = np.empty((stop - start, 2), dtype=np.int32)
    for k, cell in enumerate(cells):
        try:
            img = _to_rgb(cell)
        except IMAGE_ERRORS as err:
            raise _bad_row(start + k, err) from err
        sizes[k] = (img.height, img.width)
        out[k] = _prepare(img, kind, size, crop_pct, interpolation, storage_hw, crop_mode, mean)
    return out, sizes


class DecodeChunks(torch.utils.data.Dataset):
    """Chunk ``k`` of the source dataset, decoded: lets a DataLoader decode with worker processes."""

    def __init__(self, dataset: Dataset, chunk_size: int, **kwargs: Any) -> None:
        self.dataset, self.chunk_size, self.kwargs = dataset, chunk_size, kwargs
        self.n = len(dataset)

    def __len__(self) -> int:
        return (self.n + self.chunk_size - 1) // self.chunk_size

    def __getitem__(self, k: int) -> Chunk:
        start = k * self.chunk_size
        stop = min(self.n, start + self.chunk_size)
        arr, sizes = _decode_chunk(self.dataset, start, stop, **self.kwargs)
        return start, arr, sizes


def in_threads(chunks: DecodeChunks, threads: int) -> Iterator[Chunk]:
    """The decoded chunks in order, decoded by ``threads`` threads a few chunks ahead of the consumer.

    Threads, not processes: PIL releases the GIL while it decodes and resizes, and threads cost no
    start-up or pickling (worker processes were slower than one process on 2 cores). The window bounds
    the RAM held by decoded chunks that wait for their turn. Same bytes as one thread (tested)."""
    if threads <= 1 or len(chunks) <= 1:
        yield from (chunks[k] for k in range(len(chunks)))
        return
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hf_transfer-decode") as pool:
        pending: deque[Future[Chunk]] = deque()
        try:
            for k in range(len(chunks)):
                pending.append(pool.submit(chunks.__getitem__, k))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a failed chunk (or a consumer that stops) cancels the chunks not started yet
            for future in pending:
                future.cancel()


def _storage_shape(hw: tuple[int, int], storage_size: int) -> tuple[int, int]:
    """``hw`` with its short side brought down to ``storage_size`` (never up)."""
    h, w = hw
    short = min(h, w)
    if short <= storage_size:
        return int(h), int(w)  # already small: keep native resolution
    scale = storage_size / short
    hs = storage_size if h == short else max(storage_size, round(h * scale))
    ws = storage_size if w == short else max(storage_size, round(w * scale))
    return hs, ws


def split_storage_shape(sizes: np.ndarray, storage_size: int) -> tuple[int, int]:
    """The train storage shape of a split: its majority size (if > half the images) or a square.

    A property of the whole split, so no single image decides how the others are stored."""
    if len(sizes):
        values, counts = np.unique(np.asarray(sizes).reshape(-1, 2), axis=0, return_counts=True)
        best = int(np.argmax(counts))
        if 2 * counts[best] > len(sizes):
            return _storage_shape((int(values[best][0]), int(values[best][1])), storage_size)
    return storage_size, storage_size


def _header_size(cell: Any) -> tuple[int, int]:
    """``(H, W)`` of an undecoded image cell from its header, as datasets would decode it (EXIF rotation)."""
    from PIL import Image

    if not isinstance(cell, dict):  # already decoded (a PIL image or an array)
        img = _to_rgb(cell)
        return img.height, img.width
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
    if source is None:
        raise TransferConfigError("An image cell has neither bytes nor a path.")
    with Image.open(source) as img:
        w, h = img.size
        rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # Orientation: transposed by exif_transpose
    return (w, h) if rotated else (h, w)


def header_sizes(dataset: Dataset, image_column: str) -> np.ndarray:
    """``[N, 2]`` original sizes read from the image headers (no pixel is decoded)."""
    import datasets

    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    sizes = np.zeros((len(dataset), 2), dtype=np.int64)
    for i, cell in enumerate(dataset[image_column]):
        try:
            sizes[i] = _header_size(cell)
        except IMAGE_ERRORS as err:
            raise _bad_row(i, err) from err
    return sizes


# --------------------------------------------------------------------------------------------
# the decoded dataset


def encode_jpeg_rows(pixels: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode uint8 ``[n, 3, H, W]`` rows as JPEG files: (their bytes concatenated, uint8; int64 ``[n]`` lengths).

    torchvision's libjpeg-turbo encoder at ``quality`` (1-100), 4:2:0 chroma subsampling; its decoder gives the
    same pixels for the same bytes every time, so a cache of these files trains as deterministically as raw
    pixels."""
    from torchvision.io import encode_jpeg

    if len(pixels) == 0:
        return np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.int64)
    files = encode_jpeg([torch.from_numpy(np.ascontiguousarray(p)) for p in pixels], quality=quality)
    lengths = np.array([len(f) for f in files], dtype=np.int64)
    return torch.cat(files).numpy(), lengths


def decode_jpeg_rows(files: list[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """Decode JPEG files (uint8 1-D tensors of one image shape) into uint8 ``[n, 3, H, W]`` on ``device``.

    One batched call of torchvision's decoder (nvjpeg on a CUDA ``device``, libjpeg-turbo on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    return torch.stack(images)
