"""Deep-zoom tiles of a slide, read through ``slide_tiling``'s readers, and the caches behind them.

Deep-zoom levels halve the slide from level ``max_level`` (level 0's full size) down to 1 px; a
tile is ``TILE`` px a side (less at the right and bottom edges), read from the slide level whose
downsample is the largest not above the tile's, resized, and JPEG-encoded. Readers stay open (a
few, least recently used closed first); encoded tiles are kept in a byte-bounded LRU cache.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from idcmap.slide_tiling import SlideReader, open_slide

TILE = 256
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Pyramid:
    """The deep-zoom geometry of a slide of ``width`` x ``height`` level-0 px."""

    width: int
    height: int

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height))))

    def downsample(self, level: int) -> int:
        return 2 ** (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        d = self.downsample(level)
        return max(1, math.ceil(self.width / d)), max(1, math.ceil(self.height / d))

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of a tile in pixels of deep-zoom ``level``, or None outside the slide."""
        if not 0 <= level <= self.max_level or col < 0 or row < 0:
            return None
        lw, lh = self.level_size(level)
        x, y = col * TILE, row * TILE
        if x >= lw or y >= lh:
            return None
        return x, y, min(TILE, lw - x), min(TILE, lh - y)


def read_tile(reader: SlideReader, pyramid: Pyramid, level: int, col: int, row: int) -> np.ndarray | None:
    """The RGB pixels of a deep-zoom tile (None outside the slide)."""
    box = pyramid.tile_box(level, col, row)
    if box is None:
        return None
    x, y, w, h = box
    d = pyramid.downsample(level)
    source = max(i for i, ds in enumerate(reader.level_downsamples) if ds <= d * 1.001 or i == 0)
    ds = reader.level_downsamples[source]
    sw, sh = max(1, round(w * d / ds)), max(1, round(h * d / ds))
    pixels = reader.read_region(source, x * d, y * d, sw, sh)
    if (sw, sh) != (w, h):
        pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
    return pixels


def encode_jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


class ByteLRU:
    """A thread-safe LRU mapping whose values are bytes, bounded by their total size."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.size += len(value)
            while self.size > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


class _Open:
    """An open reader, the lock its reads take (readers are not safe to share between threads),
    and whether it was closed (evicted) since it was handed out."""

    def __init__(self, reader: SlideReader):
        self.reader, self.lock, self.closed = reader, threading.Lock(), False

    def close(self) -> None:
        with self.lock:
            self.reader.close()
            self.closed = True


class SlideTiles:
    """Tiles of many slides: open readers (at most ``max_open``) and encoded tiles cached."""

    def __init__(self, max_open: int = 8, cache_bytes: int = 256 << 20):
        self.max_open = max_open
        self.cache = ByteLRU(cache_bytes)
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._lock = threading.Lock()

    def _reader(self, source: str) -> _Open:
        with self._lock:
            if source in self._open:
                self._open.move_to_end(source)
                return self._open[source]
        opened = _Open(open_slide(source))  # raises SlideError with its one-line reason
        with self._lock:
            if source in self._open:  # another thread opened it meanwhile
                opened.close()
                return self._open[source]
            self._open[source] = opened
            evicted = [self._open.popitem(last=False)[1] for _ in range(len(self._open) - self.max_open)]
        for old in evicted:
            old.close()
        return opened

    def pyramid(self, source: str) -> Pyramid:
        return Pyramid(*self._reader(source).reader.dimensions)

    def tile(self, source: str, level: int, col: int, row: int) -> bytes | None:
        """A JPEG tile, or None when (level, col, row) is outside the slide."""
        key = (source, level, col, row)
        if (data := self.cache.get(key)) is not None:
            return data
        while True:
            opened = self._reader(source)
            with opened.lock:
                if not opened.closed:  # else evicted meanwhile: open it again
                    pixels = read_tile(opened.reader, Pyramid(*opened.reader.dimensions), level, col, row)
                    break
        if pixels is None:
            return None
        data = encode_jpeg(pixels)
        self.cache.put(key, data)
        return data

    def close(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), OrderedDict()
        for o in opened:
            o.close()
