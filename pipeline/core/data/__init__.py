"""Stamp sets: the real HiTS pickle (restricted unpickler), the synthetic twin, splits and
statistics."""
