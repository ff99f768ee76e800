"""Statistics shared by several steps: the anomaly score and the ICA rotation.

Kept below the steps so that encode (which scores), evaluate (which scores the
baselines the same way) and maps (which maps the rotated latents) use one
definition each.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["ica_components", "robust_z"]


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the result is still scored
        components = ica.fit_transform(code if every else code[:, active])
    if every:  # the array FastICA returns, as before (its layout sets BLAS's rounding)
        return components
    out[:, :active.size] = components
    return out
