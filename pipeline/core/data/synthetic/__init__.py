"""A statistically faithful synthetic twin of the HiTS2013 real/bogus stamps.

The real set cannot be downloaded on the build machines, so this package simulates the
HiTS difference-imaging pipeline end to end, vectorised over a batch of stamps:

1. observing conditions per epoch (Moffat PSF, seeing, sky, gain, read noise);
2. a static scene (optional host galaxy, sparse field stars) seen through both PSFs, the
   science epoch slightly misregistered;
3. the event of the stamp's *kind* (a transient, or one of the bogus artifacts), added to
   one or both epochs;
4. Poisson + read noise, saturation, then PSF matching: the sharper epoch is convolved to
   the broader one with a Gaussian kernel that is a few percent wrong, its variance
   propagated; difference = science - template; SNR = difference / sqrt(variance);
5. the candidate is the pixel of largest |SNR| near the centre; the stamp (21x21 by
   default) is cut around it and kept when that |SNR| >= ``min_snr``;
6. each channel of each stamp is min-max normalised on its own, as Deep-HiTS does.

Everything is pure numpy and deterministic for a seed; nothing here touches files.
The facts the numbers come from are in ``shared/design/hits-synthetic.md``; why the
candidate SNR is a per-pixel SNR is explained in ``observation``.

Modules: ``config`` (presets, kinds and their shares, camera constants), ``optics``
(PSF, matching kernels, convolution, resampling), ``observation`` (one batch: conditions,
static scene, noise, matching, difference, centring, crop, normalisation), ``kinds`` (one
module per kind of stamp and their registry), ``generator`` (``make_stamps``).
"""

from pipeline.core.data.synthetic.config import (
    BOGUS_SHARES,
    CHANNELS,
    GAIN_E_PER_ADU,
    KINDS,
    NAN_FILL_ADU,
    PRESETS,
    READ_NOISE_E,
    REAL_KIND,
    SATURATION_ADU,
    STAMP_SIZE,
    GeneratorConfig,
    accuracy_ceiling,
    bogus_shares,
    resolve_config,
)
from pipeline.core.data.synthetic.generator import MIN_STAMP_SIZE, make_stamps
from pipeline.core.data.synthetic.observation import EVIDENCE_FRACTION, minmax_normalise

__all__ = [
    "BOGUS_SHARES",
    "CHANNELS",
    "EVIDENCE_FRACTION",
    "GAIN_E_PER_ADU",
    "KINDS",
    "MIN_STAMP_SIZE",
    "NAN_FILL_ADU",
    "PRESETS",
    "READ_NOISE_E",
    "REAL_KIND",
    "SATURATION_ADU",
    "STAMP_SIZE",
    "GeneratorConfig",
    "accuracy_ceiling",
    "bogus_shares",
    "make_stamps",
    "minmax_normalise",
    "resolve_config",
]
