"""A 1-D convolutional β-VAE for diurnal profiles, shape (channels, bins).

Local time wraps at midnight, so every convolution pads circularly.  The
encoder sees the normalised profile (masked bins set to 0) together with the
observation mask, so it can tell "no data" from "average temperature"; the
reconstruction likelihood is evaluated only on observed bins.  Optionally the
decoder is conditioned on latitude, which sets the insolation: the latents
are then free to describe the surface (albedo, thermal inertia, slopes, rocks)
rather than spend capacity on where the pixel is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRESETS",
    "ProfileVAE",
    "VAEConfig",
    "bin_weights",
    "kl_per_latent",
    "load_checkpoint",
    "masked_sse",
    "mean_profile",
    "normalise",
]


@dataclass(frozen=True)
class VAEConfig:
    """Architecture hyper-parameters (everything needed to rebuild the model)."""

    channels: int = 1
    bins: int = 120
    latent_dim: int = 4
    width: int = 32
    depth: int = 3
    kernel: int = 5
    n_cond: int = 2  # decoder conditioning inputs (0 = none)
    #: "conv": overlapping stride-2 circular convs (kernel 4) down, nearest
    #: upsampling + circular convs up. "strided": Moseley et al. (2020)'s
    #: non-overlapping kernel-2 stride-2 layers down and their transposes up,
    #: computed as matrix products over pairs of neighbouring bins (2-3x faster
    #: on CPU than the same convolutions).
    layout: str = "conv"
    activation: str = "gelu"  # "gelu" or "relu" (Moseley 2020)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


#: Named architecture presets. ``moseley2020`` follows the paper's layout:
#: kernel-2 stride-2 layers with ReLU, transposed in the decoder, no
#: conditioning (≈ 17 k parameters at 120 bins: three halvings instead of the
#: paper's seven, as 120 bins are not a power of two).
PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "moseley2020": {"width": 32, "depth": 3, "kernel": 3, "n_cond": 0, "layout": "strided",
                    "activation": "relu"},
}
_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
LAYOUTS = ("conv", "strided")


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                     padding_mode="circular")


class _Transpose(nn.Module):
    """Swap channels and bins: (n, C, L) <-> (n, L, C)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.transpose(1, 2)


class _PairDown(nn.Module):
    """A kernel-2 stride-2 convolution on channels-last input (n, L, C) -> (n, L/2, C').

    Neighbouring bins never overlap, so the convolution is one matrix product
    over the pairs (n·L/2, 2C) x (2C, C'): the form CPUs run fastest.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = nn.Linear(2 * c_in, c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.reshape(h.shape[0], h.shape[1] // 2, -1))


class _PairUp(nn.Module):
    """The transpose of :class:`_PairDown`: (n, L, C) -> (n, 2L, C'), channels last
    (with a bias per output bin of the pair, where a transposed conv shares one)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.linear = nn.Linear(c_in, 2 * c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).reshape(h.shape[0], 2 * h.shape[1], -1)


class ProfileVAE(nn.Module):
    """Convolutional β-VAE over cyclic profiles.

    ``forward(x, mask, cond)`` takes normalised profiles ``x`` (n, channels,
    bins) with masked bins zeroed, the mask (same shape, 1 = observed) and the
    conditioning vector ``cond`` (n, n_cond), and returns (reconstruction, μ,
    log σ²), the reconstruction in normalised units, shape (n, channels, bins).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        factor = 2**cfg.depth
        if cfg.bins % factor:
            raise ValueError(f"bins ({cfg.bins}) must be divisible by 2**depth ({factor}); "
                             f"choose profiles.bins or model.depth accordingly")
        if cfg.layout not in LAYOUTS:
            raise ValueError(f"layout {cfg.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {cfg.activation!r}: expected one of "
                             f"{', '.join(_ACTIVATIONS)}")
        self.cfg = cfg
        k = cfg.kernel
        act = _ACTIVATIONS[cfg.activation]
        # Channels per resolution level (0 = full resolution): half the width at
        # full resolution, the full width below. Convolutions at full resolution
        # dominate the cost, so this halves the training time at equal accuracy.
        widths = [max(cfg.width // 2, 4)] + [cfg.width] * cfg.depth
        self.reduced = cfg.bins // factor
        # Both layouts start and end with a circular conv at full resolution, so
        # the profile is seen across midnight. (Modules are created encoder,
        # latent layers, decoder, in this order: it fixes the initial weights.)
        strided = cfg.layout == "strided"
        layers: list[nn.Module] = [_conv(2 * cfg.channels, widths[0], k), act()]
        if strided:  # channels last in between
            layers.append(_Transpose())
        for level in range(cfg.depth):
            down = (_PairDown(widths[level], widths[level + 1]) if strided else
                    nn.Conv1d(widths[level], widths[level + 1], 4, stride=2, padding=1,
                              padding_mode="circular"))
            layers += [down, act()]
        self.encoder = nn.Sequential(*layers)
        self.to_latent = nn.Linear(cfg.width * self.reduced, 2 * cfg.latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(cfg.latent_dim + cfg.n_cond, cfg.width * self.reduced), act(),
            nn.Unflatten(1, (self.reduced, cfg.width) if strided else (cfg.width, self.reduced)))
        dec: list[nn.Module] = []
        for level in range(cfg.depth, 0, -1):
            if strided:
                dec += [_PairUp(widths[level], widths[level - 1]), act()]
            else:
                # Nearest upsampling + circular conv (overlapping transposed convs
                # cannot pad circularly and would leave a seam at midnight).
                dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                        _conv(widths[level], widths[level - 1], k), act()]
        if strided:
            dec.append(_Transpose())
        dec.append(_conv(widths[0], cfg.channels, k))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance, each (n, latent_dim)."""
        h = self.encoder(torch.cat([x * mask, mask], dim=1))
        mu, logvar = self.to_latent(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction (n, channels, bins) from latents (n, latent_dim)."""
        if self.cfg.n_cond:
            if cond is None:
                raise ValueError("this model is conditioned on latitude: pass cond")
            z = torch.cat([z, cond.to(z.dtype)], dim=1)
        return self.decoder(self.from_latent(z))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None,
                sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, mask)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode(z, cond), mu, logvar


def latitude_condition(lat_deg: torch.Tensor, n_cond: int) -> torch.Tensor:
    """Decoder conditioning from latitude (degrees): (sin lat, cos lat), shape (n, 2)."""
    if n_cond == 0:
        return torch.zeros(lat_deg.shape[0], 0, device=lat_deg.device)
    rad = torch.deg2rad(lat_deg.float())
    return torch.stack([torch.sin(rad), torch.cos(rad)], dim=1)[:, :n_cond]


def masked_sse(recon: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of squared errors over observed bins, per profile, shape (n,).

    ``weight`` is zero on unobserved bins; with ``weight = std² / σ²`` (see
    :func:`bin_weights`) and normalised ``recon`` and ``x`` this is
    Σ (ΔT / σ)², twice the Gaussian negative log-likelihood in nats.
    """
    return ((recon - x) ** 2 * weight).flatten(1).sum(dim=1)


def bin_weights(count: torch.Tensor, std: torch.Tensor, noise_k: float, floor_k: float
                ) -> torch.Tensor:
    """Likelihood precision of each bin in normalised units, shape of ``count``.

    A bin holding the mean of ``count`` observations of noise ``noise_k`` (K)
    has variance ``noise_k²/count + floor_k²`` (the floor stands for what the
    model cannot represent); dividing by it weighs every bin by how precisely it
    is measured, not by its share of the variance, so night bins count.
    ``std`` (kelvin) converts normalised errors back to kelvin.
    """
    count = count.float()
    var = noise_k**2 / count.clamp(min=1.0) + floor_k**2
    return torch.where(count > 0, std**2 / var, torch.zeros((), device=count.device))


def kl_per_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, 1)) per profile and latent, shape (n, latent_dim), nats."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)


def total_correlation(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Minibatch estimate of the total correlation of q(z), nats (a scalar).

    TC = E[log q(z) − Σ_j log q(z_j)], the dependence between latents that a
    β-TCVAE penalises (Chen et al. 2018); q is estimated from the batch's
    posteriors at one sample z ~ q(z|x) per profile (the minibatch estimator,
    biased upwards by a fraction of a nat when posteriors are much narrower
    than the spread of the batch).
    """
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    # log N(z_i,d; mu_j,d, sigma_j,d) for every pair (i, j): (n, n, latent_dim)
    log_qzd = -0.5 * (math.log(2 * math.pi) + logvar[None] +
                      (z[:, None] - mu[None]) ** 2 * torch.exp(-logvar[None]))
    log_qz = torch.logsumexp(log_qzd.sum(dim=2), dim=1)
    log_prod = torch.logsumexp(log_qzd, dim=1).sum(dim=1)
    n, d = mu.shape
    return (log_qz - log_prod).mean() + (d - 1) * math.log(n)


def mean_profile(lat_deg: torch.Tensor, norm_lat: torch.Tensor, norm_mean: torch.Tensor
                 ) -> torch.Tensor:
    """The normalisation mean profile of each pixel, kelvin, shape (n, channels, bins).

    ``norm_mean`` (K, channels, bins) holds mean profiles at the K absolute
    latitudes ``norm_lat`` (degrees, increasing); pixels between two of them are
    interpolated linearly in |latitude| (K = 1: one mean for every pixel).
    """
    if norm_mean.shape[0] == 1:
        return norm_mean.expand(lat_deg.shape[0], *norm_mean.shape[1:])
    a = lat_deg.abs().float().clamp(norm_lat[0], norm_lat[-1])
    hi = torch.searchsorted(norm_lat, a).clamp(1, norm_lat.numel() - 1)
    lo = hi - 1
    w = ((a - norm_lat[lo]) / (norm_lat[hi] - norm_lat[lo]))[:, None, None]
    return (1 - w) * norm_mean[lo] + w * norm_mean[hi]


def normalise(profile: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised profile with masked (NaN) bins zeroed, and the mask.

    ``profile`` is kelvin, (n, channels, bins), NaN where unobserved; ``mean``
    broadcasts to it (see :func:`mean_profile`) and ``std`` to (channels, bins).
    Returns float32 ``(x, mask)``.
    """
    mask = torch.isfinite(profile)
    x = torch.where(mask, (profile - mean) / std, torch.zeros((), dtype=profile.dtype,
                                                              device=profile.device))
    return x.float(), mask.float()


def build_model(arch: dict[str, int]) -> ProfileVAE:
    """Rebuild a model from the ``arch`` dict stored in a checkpoint."""
    known = VAEConfig.__dataclass_fields__
    unknown = sorted(set(arch) - set(known))
    if unknown:
        raise ValueError(f"checkpoint architecture has unknown keys {unknown}; "
                         f"it was written by an incompatible vaemap version")
    return ProfileVAE(VAEConfig(**arch))


def load_checkpoint(path, device: str | torch.device = "cpu") -> tuple[ProfileVAE, dict[str, Any]]:
    """Load ``model.pt`` (``weights_only=True``) and return (model in eval mode, checkpoint).

    Raises ValueError naming the file when the checkpoint does not match the
    architecture it declares.
    """
    ckpt = torch.load(path, map_location=device, weights_only=True)
    for key in ("state_dict", "arch", "norm_lat", "norm_mean", "norm_std"):
        if key not in ckpt:
            raise ValueError(f"{path}: not a vaemap model checkpoint (missing {key!r})")
    model = build_model(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the declared architecture "
                         f"{ckpt['arch']}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), ckpt
