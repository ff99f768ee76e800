"""Statistics shared by several steps: the anomaly score and the ICA rotation.

Kept below the steps so that encode (which scores), evaluate (which scores the
baselines the same way) and maps (which maps the rotated latents) use one
definition each.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["MIN_BAND_PIXELS", "anomaly_z", "ica_components", "latitude_bands", "robust_z"]


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-score 0.6745·(x − median)/MAD; NaN stays NaN.

    With a zero MAD (more than half the values equal) the scale falls back to
    the mean absolute deviation so that the score stays finite.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, np.nan)
    med = np.median(finite)
    mad = np.median(np.abs(finite - med))
    if mad == 0:
        mad = np.mean(np.abs(finite - med)) / 0.7979 or 1.0
    return 0.6745 * (values - med) / mad


#: Fewest pixels a latitude band of :func:`anomaly_z` holds: a smaller band (the
#: polar caps of a coarse map) joins its equatorward neighbour, so that its
#: median and MAD rest on enough pixels.
MIN_BAND_PIXELS = 50


def latitude_bands(lat: np.ndarray, band_deg: float,
                   min_pixels: int = MIN_BAND_PIXELS) -> np.ndarray:
    """Band of every pixel: ``floor(|lat| / band_deg)``, both hemispheres together
    (the thermal environment depends on |latitude|), with bands of fewer than
    ``min_pixels`` pixels merged into their equatorward neighbour (and a small
    equatorial band into the next). ``lat`` (n,) in degrees; returns (n,) int."""
    # |lat| rounded to 1e-4° first: HEALPix rings lie exactly on some band edges
    # (30° at z = 1/2), and a pixel's band must not depend on whether its latitude
    # was stored as float32 or float64
    lat_abs = np.round(np.abs(np.asarray(lat, dtype=np.float64)), 4)
    raw = np.minimum(np.floor(lat_abs / band_deg), np.ceil(90.0 / band_deg) - 1)
    raw = raw.astype(np.int64)
    if raw.size == 0:
        return raw
    counts = np.bincount(raw)
    target = np.arange(counts.size)
    for b in range(counts.size - 1, 0, -1):
        if counts[b] < min_pixels:
            counts[b - 1] += counts[b]
            counts[b] = 0
            target[target == b] = b - 1
    occupied = np.flatnonzero(counts)
    if counts[0] < min_pixels and occupied.size > 1:
        target[target == 0] = occupied[1]
    return target[raw]


def anomaly_z(error: np.ndarray, lat: np.ndarray, band_deg: float) -> np.ndarray:
    """The anomaly score: robust z (:func:`robust_z`) of each pixel's error among
    the pixels of its |latitude| band (:func:`latitude_bands`), or over all
    pixels when ``band_deg`` is 0. A model fits the poles worse than the
    equator (fewer pixels, colder nights, larger errors everywhere there); scored
    against its own latitude a pixel is anomalous for its surface, not for
    where it lies. ``error`` and ``lat`` (deg) are (n,)."""
    if band_deg <= 0:
        return robust_z(error)
    bands = latitude_bands(lat, band_deg)
    score = np.empty(np.shape(error), np.float64)
    for b in np.unique(bands):
        members = bands == b
        score[members] = robust_z(np.asarray(error)[members])
    return score


def ica_components(code: np.ndarray, seed: int = 0) -> np.ndarray:
    """Independent components of the latent means, shape (n, latent_dim), unit variance.

    The Gaussian likelihood and prior of a VAE are unchanged by rotating the
    latent space, and with a likelihood this precise (hundreds of observed bins
    per profile) the KL term barely prefers one basis: the latents carry the
    physics but may mix it across axes. Independent generative processes are
    what disentanglement assumes, so FastICA's rotation to maximally
    independent components is the unsupervised way to recover them; no ground
    truth is used. The same ``seed`` gives the same rotation, so the ``icK``
    maps and the "VAE + ICA" scores describe one rotation. Inactive (constant)
    latents are left out; their places at the end hold zeros.
    """
    from sklearn.decomposition import FastICA
    from threadpoolctl import threadpool_limits

    code = np.asarray(code, dtype=np.float64)
    out = np.zeros(code.shape)
    # Inactive (constant) latents carry nothing to unmix and would make the
    # whitening divide by zero: they stay zero components.
    active = np.flatnonzero(code.std(axis=0) > 1e-9 * (1.0 + np.abs(code).max()))
    if active.size == 0 or code.shape[0] <= active.size:
        return out
    ica = FastICA(n_components=active.size, whiten="unit-variance", random_state=seed,
                  max_iter=2000, tol=1e-5)
    every = active.size == code.shape[1]
    # One BLAS thread: FastICA's iterations amplify the last-bit differences of a
    # multi-threaded reduction into a different rotation (|ρ| 0.245 or 0.262 for
    # the same PCA code), so a result must not depend on the machine's threads.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # convergence warnings: the result is still scored
        components = ica.fit_transform(code if every else code[:, active])
    if every:  # the array FastICA returns, as before (its layout sets BLAS's rounding)
        return components
    out[:, :active.size] = components
    return out
