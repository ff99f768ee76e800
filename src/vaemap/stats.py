"""Statistics shared by several steps: the anomaly score, exact medians of a map
read in parts, and the ICA rotation.

Kept below the steps so that encode (which scores), evaluate (which scores the
baselines the same way) and maps (which maps the rotated latents) use one
definition each.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["ICA_BLOCK_ROWS", "ICA_FIT_ROWS", "MIN_BAND_PIXELS", "BandScales", "IcaRotation",
           "anomaly_z", "ica_components", "ica_sample", "latitude_bands", "robust_z",
           "streamed_median"]


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-score 0.6745·(x − median)/MAD; NaN stays NaN.

    With a zero MAD (more than half the values equal) the scale falls back to
    the mean absolute deviation so that the score stays finite.
    """
    values = np.asarray(values, dtype=np.float64)
    lat = np.zeros(values.shape)  # (one band: latitude does not enter)
    return BandScales.of([(values, lat)], 0.0).score(values, lat)


#: Fewest pixels a latitude band of :func:`anomaly_z` holds: a smaller band (the
#: polar caps of a coarse map) joins its equatorward neighbour, so that its
#: median and MAD rest on enough pixels.
MIN_BAND_PIXELS = 50


def _raw_bands(lat: np.ndarray, band_deg: float) -> np.ndarray:
    """``floor(|lat| / band_deg)`` of every pixel (0 everywhere for ``band_deg`` 0)."""
    lat = np.asarray(lat, dtype=np.float64)
    if band_deg <= 0:
        return np.zeros(lat.shape, np.int64)
    # |lat| rounded to 1e-4° first: HEALPix rings lie exactly on some band edges
    # (30° at z = 1/2), and a pixel's band must not depend on whether its latitude
    # was stored as float32 or float64
    lat_abs = np.round(np.abs(lat), 4)
    return np.minimum(np.floor(lat_abs / band_deg), np.ceil(90.0 / band_deg) - 1
                      ).astype(np.int64)


def _merged_bands(counts: np.ndarray, min_pixels: int) -> np.ndarray:
    """Band each raw band joins, from every raw band's pixel count: bands of fewer
    than ``min_pixels`` merge into their equatorward neighbour (and a small
    equatorial band into the next)."""
    counts = counts.copy()
    target = np.arange(counts.size)
    for b in range(counts.size - 1, 0, -1):
        if counts[b] < min_pixels:
            counts[b - 1] += counts[b]
            counts[b] = 0
            target[target == b] = b - 1
    occupied = np.flatnonzero(counts)
    if counts.size and counts[0] < min_pixels and occupied.size > 1:
        target[target == 0] = occupied[1]
    return target


def latitude_bands(lat: np.ndarray, band_deg: float,
                   min_pixels: int = MIN_BAND_PIXELS) -> np.ndarray:
    """Band of every pixel: ``floor(|lat| / band_deg)``, both hemispheres together
    (the thermal environment depends on |latitude|), with bands of fewer than
    ``min_pixels`` pixels merged into their equatorward neighbour (and a small
    equatorial band into the next). ``lat`` (n,) in degrees; returns (n,) int."""
    raw = _raw_bands(lat, band_deg)
    if raw.size == 0:
        return raw
    return _merged_bands(np.bincount(raw), min_pixels)[raw]


def _sortable(x: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as the float64 values ``x`` do (finite values)."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def _from_sortable(key: np.ndarray) -> np.ndarray:
    positive = (key >> np.uint64(63)).astype(bool)
    bits = np.where(positive, key & np.uint64((1 << 63) - 1), ~key)
    return np.ascontiguousarray(bits, dtype=np.uint64).view(np.float64)


def _order_statistics(parts: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                      n_bands: int, ranks: np.ndarray) -> np.ndarray:
    """The exact values of rank ``ranks[b, j]`` (0-based, ascending) among the
    values of band ``b``, where ``parts()`` yields (values, band) arrays (finite
    float64 values; called once per pass, so the values may be read from files
    a part at a time). Radix selection on the values' sortable 64-bit keys, 16
    bits a pass: four passes, memory of a histogram of 65,536 counts per band
    and rank, whatever the number of values. Returns (n_bands, ranks) float64."""
    m = ranks.shape[1]
    prefix = np.zeros((n_bands, m), np.uint64)
    remaining = ranks.astype(np.int64).copy()
    digits = 1 << 16
    for shift in (48, 32, 16, 0):
        hist = np.zeros((m, n_bands * digits), np.int64)
        for values, band in parts():
            if not values.size:
                continue
            key = _sortable(values)
            digit = ((key >> np.uint64(shift)) & np.uint64(digits - 1)).astype(np.int64)
            flat = band * digits + digit
            for j in range(m):
                if shift == 48:
                    hist[j] += np.bincount(flat, minlength=n_bands * digits)
                else:
                    match = (key >> np.uint64(shift + 16)) == prefix[band, j]
                    hist[j] += np.bincount(flat[match], minlength=n_bands * digits)
        for j in range(m):
            cum = np.cumsum(hist[j].reshape(n_bands, digits), axis=1)
            d = np.minimum((cum <= remaining[:, j:j + 1]).sum(axis=1), digits - 1)
            remaining[:, j] -= np.where(d > 0, cum[np.arange(n_bands), np.maximum(d - 1, 0)], 0)
            prefix[:, j] = (prefix[:, j] << np.uint64(16)) | d.astype(np.uint64)
    return _from_sortable(prefix)


def _medians(parts, n_bands: int, counts: np.ndarray) -> np.ndarray:
    """Median of each band's values (as ``np.median``: the middle value, or the
    mean of the two middle ones); NaN for a band without values."""
    ranks = np.stack([np.maximum(counts - 1, 0) // 2, counts // 2], axis=1)
    low, high = _order_statistics(parts, n_bands, ranks).T
    with np.errstate(invalid="ignore"):
        median = np.where(ranks[:, 0] == ranks[:, 1], low, np.mean([low, high], axis=0))
    return np.where(counts > 0, median, np.nan)


def streamed_median(parts: Callable[[], Iterable[np.ndarray]]) -> float:
    """Exact median (as ``np.median`` in float64) of the finite values of arrays
    that ``parts()`` yields one at a time (called five times); NaN when none."""
    def finite():
        for values in parts():
            values = np.asarray(values, dtype=np.float64)
            values = values[np.isfinite(values)]
            yield values, np.zeros(values.size, np.int64)

    count = np.array([sum(v.size for v, _ in finite())])
    return float(_medians(finite, 1, count)[0])


class BandScales:
    """The anomaly score's reference: the median and MAD of the error within each
    |latitude| band (:func:`latitude_bands`), exact, computed from parts of the
    map read one at a time (tiles: no job holds every pixel) or from one array.

    ``BandScales.of(parts, band_deg)`` takes an iterable (or a callable returning
    a fresh one, for parts read from files) of ``(error, lat)`` pairs of (n,)
    arrays (kelvin or the metric's unit; degrees). Nine passes read them: the
    band counts, four for the medians and four for the MADs. The result does not
    depend on how the pixels are split into parts, except the mean absolute
    deviation that stands in for a zero MAD (a sum, added in another order).
    """

    def __init__(self, band_deg: float, target: np.ndarray, median: np.ndarray,
                 mad: np.ndarray):
        self.band_deg, self.target, self.median, self.mad = band_deg, target, median, mad

    @classmethod
    def of(cls, parts, band_deg: float, min_pixels: int = MIN_BAND_PIXELS) -> BandScales:
        read = parts if callable(parts) else (lambda: parts)
        n_raw = 1 if band_deg <= 0 else int(np.ceil(90.0 / band_deg))
        # one pass: every raw band's pixels (which bands merge) and finite errors
        counts = np.zeros(n_raw, np.int64)
        finite_raw = np.zeros(n_raw, np.int64)
        for error, lat in read():
            raw = _raw_bands(lat, band_deg)
            counts += np.bincount(raw, minlength=n_raw)
            finite_raw += np.bincount(raw[np.isfinite(error)], minlength=n_raw)
        target = (np.zeros(n_raw, np.int64) if band_deg <= 0
                  else _merged_bands(counts, min_pixels))
        n_finite = np.bincount(target, weights=finite_raw, minlength=n_raw).astype(np.int64)

        def finite(transform=None):
            def passes():
                for error, lat in read():
                    error = np.asarray(error, dtype=np.float64)
                    band = target[_raw_bands(lat, band_deg)]
                    ok = np.isfinite(error)
                    values, band = error[ok], band[ok]
                    yield (values if transform is None else transform(values, band)), band
            return passes

        median = _medians(finite(), n_raw, n_finite)
        deviation = finite(lambda values, band: np.abs(values - median[band]))
        mad = _medians(deviation, n_raw, n_finite)
        zero = mad == 0
        if zero.any():  # more than half the values equal: the mean absolute deviation
            total = np.zeros(n_raw)
            for values, band in deviation():
                total += np.bincount(band, weights=values, minlength=n_raw)
            mean = total / np.maximum(n_finite, 1)
            mad = np.where(zero, np.where(mean > 0, mean / 0.7979, 1.0), mad)
        return cls(band_deg, target, median, mad)

    def score(self, error: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Robust z 0.6745·(x − median)/MAD of ``error`` (n,) within each pixel's
        band; NaN stays NaN (a band without finite errors scores NaN)."""
        band = self.target[_raw_bands(lat, self.band_deg)]
        error = np.asarray(error, dtype=np.float64)
        return 0.6745 * (error - self.median[band]) / self.mad[band]


def anomaly_z(error: np.ndarray, lat: np.ndarray, band_deg: float) -> np.ndarray:
    """The anomaly score: robust z (:func:`robust_z`) of each pixel's error among
    the pixels of its |latitude| band (:func:`latitude_bands`), or over all
    pixels when ``band_deg`` is 0. A model fits the poles worse than the
    equator (fewer pixels, colder nights, larger errors everywhere there); scored
    against its own latitude a pixel is anomalous for its surface, not for
    where it lies. ``error`` and ``lat`` (deg) are (n,). A map in parts (tiles)
    gets the same score from :class:`BandScales` over its parts."""
    return BandScales.of([(error, lat)], band_deg).score(error, lat)


#: The most pixels FastICA's rotation is fitted on; a larger map's rotation is
#: fitted on a seeded sample of this many and applied to every pixel, so that
#: neither the fit nor the map holds every pixel's latents (at nside 4096, 2·10⁸
#: pixels: tens of GiB). Measured on 2·10⁶ pixels of five mixed non-Gaussian
#: sources: the sample's components correlate with the whole fit's at
#: ≥ 0.9998 each, fitted 16× faster. Every map up to this size is fitted on
#: all its pixels, as before.
ICA_FIT_ROWS = 250_000
#: Rows the sampled rotation is applied to at a time; fixed, so that the
#: components are the same bits whether the code is read whole or in blocks.
ICA_BLOCK_ROWS = 1 << 20


def ica_sample(n: int, seed: int = 0, rows: int | None = None) -> np.ndarray | None:
    """Sorted indices of the pixels a rotation of ``n`` pixels' code is fitted on:
    ``rows`` (default :data:`ICA_FIT_ROWS`) drawn without replacement from
    ``seed``; ``None`` (every pixel) when ``n ≤ rows``."""
    rows = ICA_FIT_ROWS if rows is None else rows
    if n <= rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))


def _active_latents(code: np.ndarray) -> np.ndarray:
    # Inactive (constant) latents carry nothing to unmix and would make the
    # whitening divide by zero: they stay zero components.
    return np.flatnonzero(code.std(axis=0) > 1e-9 * (1.0 + np.abs(code).max()))


def _fast_ica(n_components: int, seed: int):
    from sklearn.decomposition import FastICA

    return FastICA(n_components=n_components, whiten="unit-variance", random_state=seed,
                   max_iter=2000, tol=1e-5)


class IcaRotation:
    """FastICA's unmixing of latent means fitted once (:meth:`fit`) and applied
    to any rows (:meth:`transform`): the rotation of a map too large to hold."""

    def __init__(self, active: np.ndarray, mean: np.ndarray, unmixing: np.ndarray, dim: int):
        self.active, self.mean, self.unmixing, self.dim = active, mean, unmixing, dim

    @classmethod
    def fit(cls, sample: np.ndarray, seed: int = 0) -> IcaRotation:
        """The rotation of a sample of latent means (m, latent_dim)."""
        from threadpoolctl import threadpool_limits

        sample = np.asarray(sample, dtype=np.float64)
        active = _active_latents(sample)
        dim = sample.shape[1]
        if active.size == 0 or sample.shape[0] <= active.size:
            return cls(active[:0], np.zeros(0), np.zeros((0, 0)), dim)
        ica = _fast_ica(active.size, seed)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")  # (as in ica_components)
            ica.fit(sample[:, active])
        return cls(active, ica.mean_, ica.components_, dim)

    def transform(self, code: np.ndarray) -> np.ndarray:
        """Components (m, latent_dim) float64 of latent means (m, latent_dim),
        inactive latents' places zero; computed :data:`ICA_BLOCK_ROWS` rows at a
        time, so any block-aligned part of a code gets the same bits."""
        from threadpoolctl import threadpool_limits

        code = np.asarray(code, dtype=np.float64)
        out = np.zeros((code.shape[0], self.dim))
        if self.active.size:
            with threadpool_limits(limits=1):
                for a in range(0, code.shape[0], ICA_BLOCK_ROWS):
                    part = code[a:a + ICA_BLOCK_ROWS, self.active] - self.mean
                    out[a:a + ICA_BLOCK_ROWS, :self.active.size] = part @ self.unmixing.T
        return out


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
    latents are left out; their places at the end hold zeros. Beyond
    :data:`ICA_FIT_ROWS` pixels the rotation is fitted on a seeded sample of
    them (:func:`ica_sample`, :class:`IcaRotation`), as the maps of a code too
    large to hold are.
    """
    from threadpoolctl import threadpool_limits

    code = np.asarray(code, dtype=np.float64)
    sample = ica_sample(code.shape[0], seed)
    if sample is not None:
        return IcaRotation.fit(code[sample], seed).transform(code)
    out = np.zeros(code.shape)
    active = _active_latents(code)
    if active.size == 0 or code.shape[0] <= active.size:
        return out
    ica = _fast_ica(active.size, seed)
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
