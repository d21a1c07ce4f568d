"""``make_stamps``: plan the kinds, render them in batches, retry the faint ones, label."""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from pipeline.core.data.synthetic.config import (
    CHANNELS,
    REAL_KIND,
    STAMP_SIZE,
    GeneratorConfig,
    bogus_shares,
    resolve_config,
)
from pipeline.core.data.synthetic.kinds import RENDERERS
from pipeline.core.data.synthetic.observation import (
    canvas_size,
    new_batch,
    observe,
    render_static_scene,
)

MIN_STAMP_SIZE = 11
# Stamps rendered at once for the default canvas; larger canvases get proportionally
# fewer, so that a batch's arrays stay near the same memory (the default is unchanged).
_CHUNK = 1024
_MAX_ATTEMPTS = 50


def make_stamps(
    n: int,
    seed: int = 0,
    preset: str = "default",
    *,
    stamp_size: int = STAMP_SIZE,
    channels: tuple[str, ...] = CHANNELS,
    progress: bool = False,
    **overrides,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate ``n`` HiTS-like candidate stamps, half real and half bogus.

    Parameters
    ----------
    n : number of stamps (>= 1).
    seed : seed of the generator; the same (n, seed, preset, stamp_size, overrides) gives
        the same output, and ``channels`` only selects among the same four channels.
    preset : ``hits``, ``default`` or ``hard`` (see ``PRESETS``).
    stamp_size : side S of the square stamps in px, odd and >= 11 (HiTS: 21); the stamp
        is cut around the candidate, whose pixel is the centre (S - 1) / 2.
    channels : names out of ``CHANNELS`` (template, science, difference, snr_difference),
        in the order wanted, without repeats.
    progress : show a progress bar of accepted stamps (on stderr).
    **overrides : any ``GeneratorConfig`` field, e.g. ``snr_scale=0.7``.

    Returns
    -------
    images : (n, S, S, C) float32 in [0, 1], C = len(channels), each channel min-max
        normalised per stamp (a constant channel becomes 0).
    labels : (n,) int64, 1 = real, 0 = bogus (after label noise).
    meta : dict of per-stamp arrays:
        ``kind`` (n,) str, one of ``KINDS``; ``snr`` (n,) float32 signed SNR of the
        candidate (per-pixel, see ``observation``); ``fwhm_template``, ``fwhm_science``
        (n,) float32 px; ``host`` (n,) bool; ``evidence`` (n, S, S) bool, pixels of the
        transient or artifact itself; ``event_x``, ``event_y`` (n,) float32, where the
        event was put, in stamp pixels (column, row; the centre pixel is (S - 1) / 2, i.e.
        10, 10 for S = 21); ``label_flipped`` (n,) bool.

    Raises
    ------
    ValueError : for a bad ``n``, ``preset``, ``stamp_size``, ``channels`` or override.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    cfg = resolve_config(preset, **overrides)
    stamp_size = _check_stamp_size(stamp_size)
    channel_index = _channel_indices(channels)
    rng = np.random.default_rng(seed)

    n_real = n // 2
    counts = _exact_counts(n - n_real, bogus_shares(cfg))
    plan = np.array([REAL_KIND] * n_real + [k for k, c in counts.items() for _ in range(c)])
    plan = plan[rng.permutation(n)]

    out = _allocate(n, stamp_size, len(channel_index))
    chunk = max(64, _CHUNK * canvas_size(STAMP_SIZE) ** 2 // canvas_size(stamp_size) ** 2)
    pending = np.arange(n)
    bar = tqdm(total=n, unit="stamp", desc="synthetic stamps", disable=not progress,
               mininterval=1.0)
    for _attempt in range(_MAX_ATTEMPTS):
        for start in range(0, len(pending), chunk):
            idx = pending[start : start + chunk]
            batch = _render(rng, plan[idx], cfg, stamp_size, channel_index)
            for key, value in batch.items():
                out[key][idx] = value
            bar.update(int(batch["accepted"].sum()))
        pending = pending[~out["accepted"][pending]]
        if len(pending) == 0:
            break
    else:
        bar.close()
        raise RuntimeError(
            f"{len(pending)} stamps never reached |SNR| >= {cfg.min_snr}; the config is "
            "too faint to simulate"
        )

    bar.close()
    real = plan == REAL_KIND
    flipped = rng.random(n) < cfg.label_noise
    labels = np.where(real ^ flipped, 1, 0).astype(np.int64)
    meta = {
        "kind": plan.astype("<U16"),
        "snr": out["snr"],
        "fwhm_template": out["fwhm_template"],
        "fwhm_science": out["fwhm_science"],
        "host": out["host"],
        "evidence": out["evidence"],
        "event_x": out["event_x"],
        "event_y": out["event_y"],
        "label_flipped": flipped,
    }
    return out["images"], labels, meta


def _check_stamp_size(stamp_size) -> int:
    """``stamp_size`` as an int; odd so that the candidate has a centre pixel."""
    if (isinstance(stamp_size, bool | np.bool_)
            or not isinstance(stamp_size, int | np.integer)
            or stamp_size < MIN_STAMP_SIZE or stamp_size % 2 == 0):
        raise ValueError(
            f"stamp_size must be an odd integer >= {MIN_STAMP_SIZE}, got {stamp_size!r}")
    return int(stamp_size)


def _channel_indices(channels) -> tuple[int, ...]:
    """Indices into ``CHANNELS`` of the requested channel names, in the requested order."""
    if isinstance(channels, str):  # a lone name would otherwise be read letter by letter
        raise ValueError(f"channels must be a sequence of names, got the string {channels!r}")
    try:
        names = tuple(channels)
    except TypeError:
        raise ValueError(f"channels must be a sequence of names, got {channels!r}") from None
    if not names:
        raise ValueError(f"channels must name at least one of {CHANNELS}")
    unknown = [c for c in names if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown} in channels; choose from {CHANNELS}")
    if len(set(names)) != len(names):
        raise ValueError(f"channels must not repeat a name, got {names}")
    return tuple(CHANNELS.index(c) for c in names)


def _exact_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``total`` into integer counts by largest remainder, so shares hold exactly."""
    raw = {k: total * s for k, s in shares.items()}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    leftover = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:leftover]:
        counts[k] += 1
    return counts


def _allocate(n: int, s: int, c: int) -> dict[str, np.ndarray]:
    """Zeroed outputs for ``n`` stamps of side ``s`` with ``c`` channels."""
    return {
        "images": np.zeros((n, s, s, c), np.float32),
        "snr": np.zeros(n, np.float32),
        "fwhm_template": np.zeros(n, np.float32),
        "fwhm_science": np.zeros(n, np.float32),
        "host": np.zeros(n, bool),
        "evidence": np.zeros((n, s, s), bool),
        "event_x": np.zeros(n, np.float32),
        "event_y": np.zeros(n, np.float32),
        "accepted": np.zeros(n, bool),
    }


def _render(rng: np.random.Generator, kinds: np.ndarray, cfg: GeneratorConfig,
            stamp_size: int, channels: tuple[int, ...]) -> dict:
    """Render a batch of stamps of the given kinds; see ``observe`` for the outputs."""
    batch = new_batch(rng, kinds, cfg, stamp_size)
    # Kinds first adjust conditions (misregistration, kernel error), then the static scene
    # is drawn, then the events themselves.
    for kind, (prepare, _render_event) in RENDERERS.items():
        idx = np.flatnonzero(kinds == kind)
        if len(idx) and prepare is not None:
            prepare(batch, idx)
    render_static_scene(batch)
    for kind, (_prepare, render_event) in RENDERERS.items():
        idx = np.flatnonzero(kinds == kind)
        if len(idx):
            render_event(batch, idx)
    return observe(batch, channels)
