"""Optics of the simulated camera: PSFs, PSF-matching kernels, convolution, resampling.

All images are square canvases of ``size`` x ``size`` pixels (the caller's canvas, larger
than the stamp); coordinates are (x, y) = (column, row) at pixel centres, float32. Batched
functions take per-stamp parameters as (k,) arrays and return (k, size, size) float32.
"""

from __future__ import annotations

import math

import numpy as np

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
LANCZOS_ORDER = 3


def rotated(x0, y0, angle, size: int):
    """Canvas coordinates relative to (x0, y0), rotated by ``angle``: two (k, N, N) arrays.

    ``x0``, ``y0``, ``angle`` are (k,); N = ``size``.
    """
    coords = np.arange(size, dtype=np.float32)
    dx = coords[None, None, :] - np.asarray(x0, np.float32)[:, None, None]
    dy = coords[None, :, None] - np.asarray(y0, np.float32)[:, None, None]
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    return dx * c + dy * s, -dx * s + dy * c


def moffat(x0, y0, fwhm, beta, ellipticity, angle, size: int) -> np.ndarray:
    """(k, N, N) float32 unit-flux elliptical Moffat profiles sampled at pixel centres."""
    beta = np.asarray(beta, np.float32)[:, None, None]
    alpha = (np.asarray(fwhm, np.float32)[:, None, None]
             / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)))
    q = (1.0 - np.asarray(ellipticity, np.float32))[:, None, None]
    u, v = rotated(x0, y0, angle, size)
    r2 = (u * u + (v / q) ** 2) / (alpha * alpha)
    norm = (beta - 1.0) / (np.pi * alpha * alpha * q)
    return (norm * np.exp(-beta * np.log1p(r2))).astype(np.float32)


def moffat_peak(fwhm, beta, ellipticity) -> np.ndarray:
    """Central value of the unit-flux Moffat profile (same shape as the inputs)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return (beta - 1.0) / (np.pi * alpha**2 * (1.0 - ellipticity))


def matching_sigma(fwhm: np.ndarray) -> np.ndarray:
    """(B,) Gaussian width (px) that blurs the sharper epoch to the broader one.

    ``fwhm`` is (2, B) px, epoch 0 = template, 1 = science.
    """
    sigma = fwhm * FWHM_TO_SIGMA
    return np.sqrt(np.maximum(sigma.max(axis=0) ** 2 - sigma.min(axis=0) ** 2, 0.0))


def gaussian_taps(sigma: np.ndarray, size: int) -> np.ndarray:
    """(B, 2N-1) unit-sum 1-D Gaussian taps at offsets -(N-1)..N-1; sigma -> 0 gives the
    identity kernel. N = ``size``, so the taps cover every offset within the canvas."""
    offsets = np.arange(-size + 1, size, dtype=np.float32)
    s = np.maximum(np.asarray(sigma, np.float32), 1e-3)[:, None]
    taps = np.exp(-0.5 * (offsets[None, :] / s) ** 2)
    taps /= taps.sum(axis=1, keepdims=True)
    # Far taps are denormal floats, which make matrix products ~10x slower.
    return np.where(taps < 1e-12, 0.0, taps).astype(np.float32)


def gaussian_kernel_sq_sum(sigma: np.ndarray, size: int) -> np.ndarray:
    """(B,) sum of squares of the discrete unit-sum 2-D Gaussian kernel with width ``sigma``
    (the factor by which convolution scales the variance of white noise)."""
    taps = gaussian_taps(sigma, size)
    return np.sum(taps**2, axis=-1) ** 2


def toeplitz(taps: np.ndarray) -> np.ndarray:
    """(B, N, N) matrices M with M[i, j] = taps[j - i] from (B, 2N-1) taps: M @ X convolves
    X's columns."""
    n = (taps.shape[-1] + 1) // 2
    index = np.arange(n)[None, :] - np.arange(n)[:, None] + n - 1
    return np.ascontiguousarray(taps[:, index])


def convolve(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Separable convolution of (B, N, N) images with a symmetric kernel, zero padding.

    ``matrix`` is symmetric (a symmetric kernel's Toeplitz matrix), so M X M^T = M X M,
    which keeps both products on contiguous arrays (a transposed view is ~10x slower).
    """
    return matrix @ images.astype(np.float32, copy=False) @ matrix


def lanczos_resample(images: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Lanczos interpolation of (B, N, N) images at sub-pixel offsets ``fraction`` (2, B) in
    [0, 1) along x and y, the weights normalised to unit sum as HiTS does; the outermost
    rows/columns wrap (they are cropped away). Done as two batched matrix products."""
    a, n, b = LANCZOS_ORDER, images.shape[-1], images.shape[0]
    taps = np.arange(1 - a, a + 1)
    pixels = np.arange(n)
    matrices = []
    for f in fraction:  # x, then y
        dist = f[None, :] - taps[:, None]  # (2a, B)
        weights = np.sinc(dist) * np.sinc(dist / a)
        weights = (weights / weights.sum(axis=0)).astype(np.float32)
        matrix = np.zeros((b, n, n), np.float32)  # out[i] = sum_k w_k in[i + k]
        for k, w in zip(taps, weights, strict=True):
            matrix[:, pixels, (pixels + k) % n] = w[:, None]
        matrices.append(matrix)
    along_x = images @ np.ascontiguousarray(matrices[0].transpose(0, 2, 1))
    return matrices[1] @ along_x
