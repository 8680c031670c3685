"""Resolution in microns per pixel: choose the pyramid level for a target mpp."""

from __future__ import annotations

from dataclasses import dataclass

from .defaults import DEFAULT_TARGET_MPP
from .reader import SlideError, SlideReader

#: a level up to this much coarser than the target still counts as "at the target" (rounding in
#: pyramid sizes makes downsamples like 16.004)
LEVEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class LevelChoice:
    level: int
    mpp0: tuple[float, float]  # µm/px of level 0 (x, y)
    level_mpp: tuple[float, float]
    target_mpp: float

    @property
    def downsample0(self) -> tuple[float, float]:
        """Level-0 pixels per target pixel (x, y)."""
        return (self.target_mpp / self.mpp0[0], self.target_mpp / self.mpp0[1])

    @property
    def scale(self) -> tuple[float, float]:
        """Level pixels per target pixel (x, y): >= 1 means the level is resized down."""
        return (self.target_mpp / self.level_mpp[0], self.target_mpp / self.level_mpp[1])


def slide_mpp(reader: SlideReader, override: float | None = None) -> tuple[float, float]:
    """The slide's level-0 mpp: the override if given, else the file's, else a SlideError."""
    if override is not None:
        if not override > 0:
            raise SlideError(reader.path, f"mpp must be positive, got {override}")
        return (float(override), float(override))
    if reader.mpp is None:
        raise SlideError(
            reader.path,
            "slide has no microns-per-pixel metadata; give it with --mpp (or an mpp column in the manifest)",
        )
    return reader.mpp


def choose_level(reader: SlideReader, target_mpp: float = DEFAULT_TARGET_MPP, mpp: float | None = None) -> LevelChoice:
    """The coarsest level at or finer than ``target_mpp`` (level 0 if even that is coarser)."""
    mpp0 = slide_mpp(reader, mpp)
    best = 0
    for i, ds in enumerate(reader.level_downsamples):
        if max(mpp0) * ds <= target_mpp * (1 + LEVEL_TOLERANCE):
            best = i
    ds = reader.level_downsamples[best]
    choice = LevelChoice(best, mpp0, (mpp0[0] * ds, mpp0[1] * ds), float(target_mpp))
    if min(choice.scale) < 1 - LEVEL_TOLERANCE:
        raise SlideError(
            reader.path,
            f"slide resolution {mpp0[0]:.3g} µm/px is coarser than the "
            f"target {target_mpp:g} µm/px; upsampling would invent detail",
        )
    return choice
