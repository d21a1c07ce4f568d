"""The stamp geometry, defined once: height, width, channel names, class names and the [0, 1]
range of the values.

Every shape in the project follows from one ``StampGeometry``: model inputs
(height, width, channels), map shapes (height, width), decoders' grid sizes, plots'
panels, the pyfunc signature. It is data, not a constant: ``prepare`` writes the channel
names beside the stamps, and each stage reads the geometry back from the prepared split
(``from_stamps``), so a 31x31 three-channel survey runs through the same code as HiTS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# HiTS2013's four channels, in the pickle's order.
HITS_CHANNELS = ("template", "science", "difference", "snr_difference")
# Output index 0 is bogus, 1 is real, as the HiTS labels are.
CLASS_NAMES = ("bogus", "real")


@dataclass(frozen=True)
class StampGeometry:
    """The shape of a stamp set: ``height`` x ``width`` pixels, ``channels`` named planes
    (in array order), and the classifier's ``classes`` (output index order)."""

    height: int = 21
    width: int = 21
    channels: tuple[str, ...] = HITS_CHANNELS
    classes: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self):
        if int(self.height) != self.height or int(self.width) != self.width \
                or min(self.height, self.width) < 1:
            raise ValueError(f"stamp height and width must be positive integers, got "
                             f"{self.height}x{self.width}")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"stamp channels must be distinct names, got {self.channels}")
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {self.classes}")
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels): one stamp."""
        return self.height, self.width, len(self.channels)

    @property
    def map_shape(self) -> tuple[int, int]:
        """(height, width): one occlusion map."""
        return self.height, self.width

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def centre(self) -> tuple[float, float]:
        """(row, column) of the stamp's centre, in pixels: (10, 10) on 21x21."""
        return (self.height - 1) / 2, (self.width - 1) / 2

    def channel_indices(self, channels) -> tuple[int, ...]:
        """Indices of ``channels`` (names of ``self.channels`` or integer indices, mixed
        allowed); ``ValueError`` naming the unknown one."""
        indices = []
        for channel in channels:
            if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
                if not 0 <= channel < len(self.channels):
                    raise ValueError(f"channel index {channel} is outside the stamps' "
                                     f"{len(self.channels)} channels {list(self.channels)}")
                indices.append(int(channel))
            elif channel in self.channels:
                indices.append(self.channels.index(channel))
            else:
                raise ValueError(f"unknown channel {channel!r}; the stamps have "
                                 f"{list(self.channels)}")
        if not indices or len(set(indices)) != len(indices):
            raise ValueError(f"channels must be a non-empty list without repeats, got "
                             f"{list(channels)}")
        return tuple(indices)

    @classmethod
    def from_stamps(cls, stamps: np.ndarray, channels=None) -> StampGeometry:
        """The geometry of ``stamps`` (N, H, W, C); ``channels`` names the C planes (None:
        HiTS's four names when C is 4, else ``channel_0`` ...)."""
        shape = np.shape(stamps)
        if len(shape) != 4:
            raise ValueError(f"stamps must have shape (N, H, W, C), got {tuple(shape)}")
        count = shape[-1]
        if channels is None or len(channels) == 0:
            channels = HITS_CHANNELS if count == len(HITS_CHANNELS) else tuple(
                f"channel_{i}" for i in range(count))
        if len(channels) != count:
            raise ValueError(f"{len(channels)} channel names {list(channels)} for stamps "
                             f"with {count} channels")
        return cls(int(shape[1]), int(shape[2]), tuple(str(c) for c in channels))

    @classmethod
    def from_input_shape(cls, input_shape, channels=None) -> StampGeometry:
        """The geometry a model's input (None, H, W, C) takes."""
        _, height, width, count = tuple(input_shape)
        return cls.from_stamps(np.zeros((0, height, width, count)), channels)


HITS = StampGeometry()


# Stamps are per-stamp min-max normalised: values beyond [0, 1] by more than float
# rounding are another scaling (0-255 images, raw ADU) whose maps would be meaningless.
RANGE_TOLERANCE = 1e-5


def check_unit_range(array: np.ndarray, source: str) -> None:
    """``ValueError`` naming ``source``, how many values and stamps and where the first
    is, when ``array`` (N, ...) finite holds values outside [0, 1] beyond rounding."""
    outside = (array < -RANGE_TOLERANCE) | (array > 1.0 + RANGE_TOLERANCE)
    if not outside.any():
        return
    per_stamp = outside.reshape(len(array), -1).any(axis=1)
    first = int(np.flatnonzero(per_stamp)[0])
    raise ValueError(
        f"{source}: {int(outside.sum())} values in {int(per_stamp.sum())} of {len(array)} "
        f"stamps lie outside [0, 1] (first in stamp {first}; values range "
        f"[{float(array.min()):.6g}, {float(array.max()):.6g}]): stamps must be min-max "
        "normalised per stamp and channel, as HiTS2013's are")
