"""A 1-D convolutional β-VAE for diurnal profiles, shape (channels, bins).

Local time wraps at midnight, so every convolution pads circularly.  The
encoder sees the normalised profile (masked bins set to 0) together with the
observation mask, so it can tell "no data" from "average temperature"; the
reconstruction likelihood is evaluated only on observed bins.  It is a
Gaussian whose variance per channel and local-time bin is learned with the
model (:class:`ObservationNoise`, ``likelihood: calibrated``): a bin that
averages ``n`` observations has variance ``v_obs/n + v_floor``, so the loss
weighs each bin by how much it really scatters (a few kelvin at night, ten or
more by day, where a footprint sees one of a pixel's sub-pixel surfaces)
instead of by an assumed instrument noise.  Optionally the
decoder is conditioned on latitude, which sets the insolation: the latents
are then free to describe the surface (albedo, thermal inertia, slopes, rocks)
rather than spend capacity on where the pixel is.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaemap.presets import PRESETS

__all__ = [
    "CHECKPOINT_FORMAT",
    "DECODERS",
    "LIKELIHOODS",
    "PRESETS",
    "CheckpointError",
    "Normaliser",
    "ObservationNoise",
    "PhysicsRenderer",
    "ProfileVAE",
    "VAEConfig",
    "channel_weights",
    "condition_latitude",
    "fixed_noise_logvar",
    "gaussian_nll",
    "initial_noise_logvar",
    "kl_per_latent",
    "load_checkpoint",
    "mean_profile",
    "normalise",
    "physics_regularisers",
    "reconstruction_errors",
    "refine_physical",
    "resolve_device",
    "sample_latent",
    "save_checkpoint",
    "tensors_checksum",
    "torch_load",
    "torch_save",
    "vae_loss",
    "weights_checksum",
]

#: Version of the model.pt layout; :func:`load_checkpoint` refuses other versions.
#: 3: the observation noise of the likelihood (``noise.log_var``) is part of the
#: weights; 2: adds ``channels`` and ``nside`` as required keys (1: vaemap 0.1).
CHECKPOINT_FORMAT = 3


class CheckpointError(ValueError):
    """A model checkpoint that cannot be used; the message names the file and why."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device.

    Raises RuntimeError when CUDA is asked for but not present.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name} requested but CUDA is not available "
                           f"(use device: auto or cpu)")
    return torch.device(name)


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
    #: "calibrated": the observation variance per channel and bin is learned;
    #: "fixed": it is ``noise_k²/n + floor_k²`` as configured (vaemap ≤ 0.3).
    likelihood: str = "calibrated"
    #: "network": the latents decoded by the convolutional network; "physics":
    #: the first five are physical parameters (:data:`vaemap.forward_model.PHYSICAL_LATENTS`)
    #: rendered by the thermal-model emulator, and the others, with the latitude,
    #: feed the network, which adds what the physics does not explain.
    decoder: str = "network"
    #: The profiles' channel numbers (which bands the physics renders).
    channel_ids: tuple[int, ...] = ()
    #: The emulator's architecture (physics decoder; its weights are the model's).
    emulator_width: int = 256
    emulator_layers: int = 3
    #: |latitude| bands of the normaliser the physics decoder holds (to put the
    #: emulator's kelvin into the model's normalised units).
    norm_bands: int = 1
    #: Times per local-time bin the emulator's temperatures are averaged over.
    substeps: int = 2
    #: Whether the physics term renders the solar channels too (reflectance:
    #: albedo × cos incidence, :func:`vaemap.forward_model.reflectance_profiles`);
    #: a physics model trained before it could holds False: its physics term
    #: is 0 there, and is decoded so.
    solar_physics: bool = False
    #: The thermal channels' noise the physics term renders, × each channel's NER
    #: (0: the scene's temperature; > 0: what the instrument reports, censored
    #: below detection, :func:`vaemap.forward_model.reported_temperature`).
    physics_noise: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
LAYOUTS = ("conv", "strided")
LIKELIHOODS = ("calibrated", "fixed")
DECODERS = ("network", "physics")


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
        if cfg.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {cfg.likelihood!r}: expected one of "
                             f"{', '.join(LIKELIHOODS)}")
        if cfg.decoder not in DECODERS:
            raise ValueError(f"decoder {cfg.decoder!r}: expected one of {', '.join(DECODERS)}")
        physics = cfg.decoder == "physics"
        from vaemap.forward_model import PHYSICAL_LATENTS

        if physics:
            from vaemap.instrument import THERMAL_CHANNELS

            if cfg.latent_dim < len(PHYSICAL_LATENTS):
                raise ValueError(f"latent_dim {cfg.latent_dim}: the physics decoder needs at "
                                 f"least {len(PHYSICAL_LATENTS)} ({', '.join(PHYSICAL_LATENTS)})")
            if cfg.n_cond != 2:
                raise ValueError("the physics decoder needs the latitude: set "
                                 "model.condition_on_latitude true")
            if len(cfg.channel_ids) != cfg.channels or not any(
                    c in THERMAL_CHANNELS for c in cfg.channel_ids):
                raise ValueError(f"channels {list(cfg.channel_ids)}: the physics decoder needs "
                                 f"the channel numbers, at least one thermal "
                                 f"({min(THERMAL_CHANNELS)}-{max(THERMAL_CHANNELS)})")
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
        # the physics decoder's network sees the free latents only: given the
        # physical ones it could explain the profile without the physics
        self.n_physical = len(PHYSICAL_LATENTS) if physics else 0
        self.from_latent = nn.Sequential(
            nn.Linear(cfg.latent_dim - self.n_physical + cfg.n_cond, cfg.width * self.reduced),
            act(),
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
        self.noise = ObservationNoise(cfg.channels, cfg.bins,
                                      learned=cfg.likelihood == "calibrated")
        self.physics = PhysicsRenderer(cfg) if physics else None

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance, each (n, latent_dim)."""
        h = self.encoder(torch.cat([x * mask, mask], dim=1))
        mu, logvar = self.to_latent(h.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction (n, channels, bins) from latents (n, latent_dim)."""
        physics, network = self.decode_parts(z, cond)
        return network if physics is None else physics + network

    def decode_parts(self, z: torch.Tensor, cond: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(physics, network)``: the physics decoder's two terms of the
        reconstruction, each (n, channels, bins) normalised — the emulator's
        profile of the physical latents and what the network adds — or
        ``(None, reconstruction)`` for the network decoder."""
        if self.cfg.n_cond:
            if cond is None:
                raise ValueError("this model is conditioned on latitude: pass cond")
            free = torch.cat([z[:, self.n_physical:], cond.to(z.dtype)], dim=1)
        else:
            free = z
        network = self.decoder(self.from_latent(free))
        if self.physics is None:
            return None, network
        return (self.physics(z[:, :self.n_physical], condition_latitude(cond))
                .to(network.dtype), network)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None,
                sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, mask)
        z = sample_latent(mu, logvar) if sample else mu
        return self.decode(z, cond), mu, logvar


def physics_regularisers(model: ProfileVAE, physics: torch.Tensor, network: torch.Tensor,
                         x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
                         variance: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three terms that keep a physics decoder's network from explaining what
    the physics should (Takeishi & Kalousis 2021), each a scalar:

    ``physics``: the Gaussian NLL of the physics term alone (nats per profile),
    so the physical latents must fit the profile without the network;
    ``least_action``: the mean square of the network's term over observed bins
    (normalised units²), so it adds only what the physics cannot;
    ``augmentation``: profiles rendered from physical latents drawn from the
    prior, with the likelihood's noise and the batch's observation masks, must
    be encoded back to those latents (mean square error in latent units): the
    encoder learns to invert the physics on data whose parameters are known.

    ``physics``, ``network`` (n, channels, bins) are :meth:`ProfileVAE.decode_parts`
    of the batch ``x`` (normalised, masked), ``mask`` its observed bins (or their
    weights), ``cond`` its latitude condition and ``variance`` the likelihood's.
    """
    observed = (mask > 0).to(network.dtype)
    nll = gaussian_nll(physics.float(), x, mask, variance).mean()
    least = ((network.float() ** 2) * observed).sum() / observed.sum().clamp(min=1.0)
    n_phys = model.n_physical
    z_true = torch.randn(x.shape[0], n_phys, device=x.device)
    with torch.no_grad():
        rendered = model.physics(z_true, condition_latitude(cond))
        rendered = rendered + torch.randn_like(rendered) * torch.sqrt(variance)
    mu_back, _ = model.encode(rendered * observed, observed)
    augmentation = ((mu_back[:, :n_phys].float() - z_true) ** 2).mean()
    return {"physics": nll, "least_action": least, "augmentation": augmentation}


#: Step of the forward differences of :func:`refine_physical` (latent units).
_REFINE_STEP = 1e-3


def refine_physical(model: ProfileVAE, mu: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    variance: torch.Tensor, lat_deg: torch.Tensor, iterations: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A physics decoder's physical latents fitted to each pixel, from the encoder's.

    Minimises, pixel by pixel, what the physics term alone costs: its Gaussian
    NLL under the model's own likelihood (``variance``, normalised units², and
    ``weight``, the observed bins' weights, both (n, channels, bins), as
    training counts them) plus the prior's ½|z|², by ``iterations`` damped
    Gauss–Newton (Levenberg–Marquardt) steps from ``mu`` (n, latent_dim), the
    emulator's Jacobian by forward differences. The encoder's answer is the
    start, so a step or two suffices; only steps that lower a pixel's cost are
    taken. Returns the refined physical latents (n, 5) and their log-variance
    from the Laplace approximation at the optimum (the Gauss–Newton Hessian plus
    the prior's identity), for :func:`vaemap.forward_model.parameters_from_latents`.
    """
    k = model.n_physical
    z = mu[:, :k].float().clone()
    x, w = x.float(), (weight / variance).float().flatten(1)
    lat = lat_deg.float()
    eye = torch.eye(k, device=z.device)

    def residual(zv: torch.Tensor) -> torch.Tensor:
        return ((model.physics(zv, lat) - x) * (weight > 0)).flatten(1)

    def cost(r: torch.Tensor, zv: torch.Tensor) -> torch.Tensor:
        return 0.5 * (w * r**2).sum(1) + 0.5 * (zv**2).sum(1)

    def jacobian(zv: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        cols = [(residual(zv + _REFINE_STEP * eye[j]) - r) / _REFINE_STEP for j in range(k)]
        return torch.stack(cols, dim=-1)  # (n, channels·bins, k)

    def hessian(jac: torch.Tensor) -> torch.Tensor:  # Gauss–Newton, plus the prior's
        return torch.einsum("nbi,nb,nbj->nij", jac, w, jac) + eye

    r = residual(z)
    current = cost(r, z)
    damping = torch.full((z.shape[0],), 1e-2, device=z.device)
    for _ in range(iterations):
        jac = jacobian(z, r)
        hess = hessian(jac)
        grad = torch.einsum("nbi,nb,nb->ni", jac, w, r) + z
        lhs = hess + damping[:, None, None] * torch.diag_embed(
            torch.diagonal(hess, dim1=1, dim2=2))
        trial = z - torch.linalg.solve(lhs, grad[..., None])[..., 0]
        r_trial = residual(trial)
        trial_cost = cost(r_trial, trial)
        better = trial_cost < current
        z = torch.where(better[:, None], trial, z)
        r = torch.where(better[:, None], r_trial, r)
        current = torch.where(better, trial_cost, current)
        damping = torch.where(better, damping / 3.0, damping * 4.0)
    variance_z = torch.diagonal(torch.linalg.inv(hessian(jacobian(z, r))), dim1=1, dim2=2)
    return z, torch.log(variance_z)


class PhysicsRenderer(nn.Module):
    """The physics of a physics decoder: physical latents (n, 5) and latitudes
    (n,) degrees → the profiles the thermal model gives, (n, channels, bins) in
    the model's normalised units: the emulator's temperatures in the thermal
    channels, the exact reflectance in the solar ones (0, the band's mean
    profile, in a model with ``solar_physics`` false).

    Holds the emulator (:class:`vaemap.forward_model.ThermalEmulator`, frozen:
    it is the physics, not something to fit) and the normaliser's constants as
    buffers, so ``model.pt`` carries everything the decoder runs with. Runs in
    float32 whatever the autocast: T⁴ of a lunar day spans 10⁸-10¹⁰ K⁴, beyond
    bfloat16's three digits.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        from vaemap.forward_model import ThermalEmulator
        from vaemap.instrument import SOLAR_CHANNELS, THERMAL_CHANNELS

        self.emulator = ThermalEmulator(cfg.emulator_width, cfg.emulator_layers)
        self.emulator.requires_grad_(False)
        kinds = THERMAL_CHANNELS + (SOLAR_CHANNELS if cfg.solar_physics else ())
        # (unused since the solar channels are rendered too; kept: model.pt holds it)
        self.register_buffer("thermal_index", torch.tensor(
            [i for i, c in enumerate(cfg.channel_ids) if c in THERMAL_CHANNELS]))
        #: the channels the physics renders, thermal and (solar_physics) solar
        self.rendered = [c for c in cfg.channel_ids if c in kinds]
        # (not persistent: rebuilt from the arch, so model.pt's keys stay those
        # of a model trained before the solar channels were rendered)
        self.register_buffer("rendered_index", torch.tensor(
            [i for i, c in enumerate(cfg.channel_ids) if c in kinds]), persistent=False)
        self.register_buffer("norm_lat", torch.zeros(cfg.norm_bands))
        self.register_buffer("norm_mean", torch.zeros(cfg.norm_bands, cfg.channels, cfg.bins))
        self.register_buffer("norm_std", torch.ones(cfg.channels, cfg.bins))
        self.bins, self.substeps, self.noise = cfg.bins, cfg.substeps, cfg.physics_noise

    def set_normaliser(self, normaliser: Normaliser) -> None:
        """Take the constants of ``normaliser`` (before training)."""
        if normaliser.norm_mean.shape != self.norm_mean.shape:
            raise ValueError(f"normaliser of shape {tuple(normaliser.norm_mean.shape)}, the "
                             f"model holds {tuple(self.norm_mean.shape)}")
        with torch.no_grad():
            self.norm_lat.copy_(normaliser.norm_lat)
            self.norm_mean.copy_(normaliser.norm_mean)
            self.norm_std.copy_(normaliser.std)

    def kelvin(self, z_physical: torch.Tensor, lat_deg: torch.Tensor) -> torch.Tensor:
        """The rendered channels' profiles (n, rendered channels, bins): kelvin in
        the thermal ones, relative reflectance in the solar ones."""
        from vaemap.forward_model import parameters_from_latents, physics_profiles

        with torch.autocast(lat_deg.device.type, enabled=False):
            params, _ = parameters_from_latents(z_physical.float())
            return physics_profiles(self.emulator, params, lat_deg.float(), self.rendered,
                                    self.bins, substeps=self.substeps, noise=self.noise)

    def forward(self, z_physical: torch.Tensor, lat_deg: torch.Tensor) -> torch.Tensor:
        t = self.kelvin(z_physical, lat_deg)
        idx = self.rendered_index
        mean = mean_profile(lat_deg, self.norm_lat, self.norm_mean)
        out = torch.zeros_like(mean)  # (a channel the physics does not render stays 0)
        out[:, idx] = (t - mean[:, idx]) / self.norm_std[idx]
        return out


def sample_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A draw from the posterior N(mu, exp(logvar)), differentiable in both
    (the reparameterisation), each (n, latent_dim)."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def condition_latitude(cond: torch.Tensor) -> torch.Tensor:
    """Latitude (n,) degrees back from :func:`latitude_condition`'s (sin, cos)."""
    return torch.rad2deg(torch.atan2(cond[:, 0].float(), cond[:, 1].float()))


def latitude_condition(lat_deg: torch.Tensor, n_cond: int) -> torch.Tensor:
    """Decoder conditioning from latitude (degrees): (sin lat, cos lat), shape (n, 2)."""
    if n_cond == 0:
        return torch.zeros(lat_deg.shape[0], 0, device=lat_deg.device)
    rad = torch.deg2rad(lat_deg.float())
    return torch.stack([torch.sin(rad), torch.cos(rad)], dim=1)[:, :n_cond]


class ObservationNoise(nn.Module):
    """The likelihood's variance of every profile bin, in normalised units.

    A bin that averages ``count`` observations has variance
    ``v_obs / count + v_floor``, with ``v_obs`` and ``v_floor`` of shape
    (channels, bins) held as ``log_var`` (2, channels, bins): ``v_obs`` is
    what one observation scatters about the model (instrument noise and, mostly,
    which sub-pixel surface the footprint saw: it averages down), ``v_floor``
    what the model cannot represent (it does not). With ``learned`` they are
    parameters fitted with the model by the Gaussian likelihood (its
    ½·log σ² term keeps them honest); otherwise a buffer set once
    (:func:`fixed_noise_logvar`). Kelvin: multiply the σ by the normaliser's std.
    """

    def __init__(self, channels: int, bins: int, learned: bool = True):
        super().__init__()
        # log(0.5) each: a total variance of 1 per observed bin, i.e. the
        # normalised data's own spread, until :meth:`initialise` or training.
        init = torch.full((2, channels, bins), math.log(0.5))
        if learned:
            self.log_var = nn.Parameter(init)
        else:
            self.register_buffer("log_var", init)

    @property
    def learned(self) -> bool:
        return isinstance(self.log_var, nn.Parameter)

    def initialise(self, log_var: torch.Tensor) -> None:
        """Set ``log_var`` (2, channels, bins) (before training)."""
        with torch.no_grad():
            self.log_var.copy_(log_var.to(self.log_var))

    def _variances(self) -> torch.Tensor:
        """``(v_obs, v_floor)`` stacked, (2, channels, bins), kept in a range where
        neither underflows nor overflows."""
        return self.log_var.float().clamp(-18.0, 8.0).exp()

    def variance(self, count: torch.Tensor) -> torch.Tensor:
        """Variance (normalised units²) of bins averaging ``count`` observations,
        shape of ``count`` (n, channels, bins); unobserved bins get ``v_obs + v_floor``."""
        v = self._variances()
        return v[0] / count.float().clamp(min=1.0) + v[1]

    def sigma_k(self, std: torch.Tensor, count: float = 1.0) -> torch.Tensor:
        """σ (kelvin, or reflectance for channels 1-2) of a bin averaging ``count``
        observations, (channels, bins); ``std`` is the normaliser's spread.
        ``count = math.inf`` gives the floor, what no averaging removes."""
        with torch.no_grad():
            v = self._variances()
            return torch.sqrt(v[0] / count + v[1]) * std


def fixed_noise_logvar(std: torch.Tensor, noise_k: float, floor_k: float) -> torch.Tensor:
    """``log_var`` (2, channels, bins) of the fixed likelihood: an observation noise
    of ``noise_k`` and a floor of ``floor_k`` (kelvin, the same for every bin),
    in the normalised units of the spread ``std`` (channels, bins)."""
    v_obs = torch.as_tensor(noise_k, dtype=torch.float32) ** 2 / std.float() ** 2
    v_floor = torch.as_tensor(max(floor_k, 1e-6), dtype=torch.float32) ** 2 / std.float() ** 2
    return torch.log(torch.stack([v_obs, v_floor]))


def initial_noise_logvar(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor,
                         v_min: float = 1e-4) -> torch.Tensor:
    """A starting ``log_var`` (2, channels, bins) for the learned likelihood, from
    the training profiles themselves: half the mean square difference of
    neighbouring observed bins (the scatter that no smooth curve explains),
    scaled to one observation by the bins' counts, as ``v_obs``; ``v_floor`` a
    tenth of it. Inputs normalised (n, channels, bins)."""
    both = mask * torch.roll(mask, -1, dims=2)
    diff2 = (x - torch.roll(x, -1, dims=2)) ** 2 * both
    inv = (1.0 / count.float().clamp(min=1.0) + 1.0 / torch.roll(count, -1, 2).float()
           .clamp(min=1.0)) * both
    # E[diff²] = v_obs·(1/n_b + 1/n_b+1) for independent scatter about a smooth curve
    v_obs = diff2.sum(0) / inv.sum(0).clamp(min=1e-9)
    v_obs = torch.where(both.sum(0) > 0, v_obs, torch.ones_like(v_obs)).clamp(min=v_min)
    return torch.log(torch.stack([v_obs, 0.1 * v_obs]))


#: How the likelihood weighs the channels (``model.channel_weighting``).
CHANNEL_WEIGHTINGS = ("sqrt_kind", "none")


def channel_weights(channels: Sequence[int], mode: str = "sqrt_kind") -> torch.Tensor:
    """Weight of each channel's bins in the likelihood, shape (1, channels, 1).

    ``none``: every channel counts fully. ``sqrt_kind``: a channel counts
    1/√k, where k is the number of channels of its kind (solar 1-2, thermal
    3-9; :func:`vaemap.instrument.is_solar`). The thermal channels see one
    surface temperature through seven bands, and a footprint's sub-pixel
    surface moves them together, so their residuals are far from independent:
    counted seven times they outvote the solar channels, which alone tell
    albedo from slope; counted once (1/k) the night-time cooling, where H and
    rocks show, no longer buys a latent. 1/√k was the best of the three on the
    validation Moon (docs/science.md). One channel: weight 1 in either mode.
    """
    from vaemap.instrument import is_solar

    if mode not in CHANNEL_WEIGHTINGS:
        raise ValueError(f"channel_weighting {mode!r}: expected one of "
                         f"{', '.join(CHANNEL_WEIGHTINGS)}")
    solar = is_solar(list(channels))
    weight = np.ones(solar.size)
    if mode == "sqrt_kind":
        for kind in (solar, ~solar):
            weight[kind] = 1.0 / math.sqrt(max(int(kind.sum()), 1))
    return torch.from_numpy(weight.astype(np.float32))[None, :, None]


def gaussian_nll(recon: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                 variance: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood over the observed bins, nats per profile (n,).

    ``recon``, ``x`` (normalised), ``mask`` (1 = observed, or a weight: see
    :func:`channel_weights`) and ``variance`` (normalised units²,
    :meth:`ObservationNoise.variance`) broadcast to (n, channels, bins):
    ½ Σ_observed [(x − recon)²/σ² + log(2π σ²)].
    """
    terms = (recon - x) ** 2 / variance + torch.log(2 * math.pi * variance)
    return 0.5 * (terms * mask).flatten(1).sum(dim=1)


#: The per-pixel error each ``encode.anomaly_metric`` scores (a key of
#: :func:`reconstruction_errors`).
ANOMALY_ERRORS = {"calibrated_z_night": "recon_z_night", "calibrated_z": "recon_z",
                  "normalised_l1": "recon_norm_l1", "l1": "recon_l1"}


def reconstruction_errors(residual_k: torch.Tensor, mask: torch.Tensor, std: torch.Tensor,
                          sigma_k: torch.Tensor | None = None,
                          night: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-pixel reconstruction errors over the observed bins, one definition for
    the model and every baseline scored like it.

    ``residual_k`` is reconstruction − profile in kelvin and ``mask`` 1 on
    observed bins, both (n, channels, bins); ``std`` (channels, bins) is each
    bin's spread over the map (K); ``sigma_k`` (n, channels, bins), when given,
    the calibrated σ of each bin (K, :meth:`ObservationNoise.variance` in
    kelvin), and ``night`` (channels, bins) the night bins of the thermal
    channels (:func:`vaemap.instrument.night_mask`). Returns (n,) tensors:
    ``recon_error`` RMS (K), ``recon_l1`` mean |residual| (K), ``recon_norm_l1``
    mean |residual| / spread; with ``sigma_k``, ``recon_z`` the mean
    |residual| / σ (the calibrated residual: about 0.8 where the model fits as
    well as it does on average) and, with ``night`` too, ``recon_z_night`` the
    same over the night bins only (0 for a pixel without one); and
    ``recon_error_channel`` (n, channels), the RMS of each channel (NaN where a
    channel has no observed bin).
    """
    zero = torch.zeros((), device=residual_k.device, dtype=residual_k.dtype)
    err = torch.where(mask > 0, residual_k, zero)
    n_bins = mask.flatten(1).sum(1).clamp(min=1)
    per_channel = mask.sum(2)
    out = {"recon_error": torch.sqrt((err**2).flatten(1).sum(1) / n_bins),
           "recon_l1": err.abs().flatten(1).sum(1) / n_bins,
           "recon_norm_l1": (err / std).abs().flatten(1).sum(1) / n_bins,
           "recon_error_channel": torch.where(
               per_channel > 0, torch.sqrt((err**2).sum(2) / per_channel.clamp(min=1)),
               torch.full((), float("nan"), device=err.device, dtype=err.dtype))}
    if sigma_k is not None:
        z = (err / sigma_k).abs()
        out["recon_z"] = z.flatten(1).sum(1) / n_bins
        if night is not None:
            at_night = mask * night.to(mask.dtype)
            out["recon_z_night"] = ((z * at_night).flatten(1).sum(1)
                                    / at_night.flatten(1).sum(1).clamp(min=1))
    return out


def kl_per_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, 1)) per profile and latent, shape (n, latent_dim), nats."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)


def total_correlation(mu: torch.Tensor, logvar: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Minibatch estimate of the total correlation of q(z), nats (a scalar).

    TC = E[log q(z) − Σ_j log q(z_j)], the dependence between latents that a
    β-TCVAE penalises (Chen et al. 2018); q is estimated from the batch's
    posteriors at one sample z ~ q(z|x) per profile (the minibatch estimator,
    biased upwards by a fraction of a nat when posteriors are much narrower
    than the spread of the batch). ``generator`` draws the sample (default:
    the global generator).
    """
    noise = (torch.randn_like(mu) if generator is None else
             torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype))
    z = mu + noise * torch.exp(0.5 * logvar)
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


def vae_loss(recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor,
             mask: torch.Tensor, variance: torch.Tensor, *, beta: float, tc_weight: float,
             generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The β-TCVAE objective of one batch, nats per profile: NLL + β·KL + γ·TC.

    ``recon`` and ``x`` are normalised (n, channels, bins), ``mask`` 1 on observed
    bins and ``variance`` each bin's likelihood variance
    (:meth:`ObservationNoise.variance`), ``mu`` and ``logvar`` (n, latent_dim).
    Returns ``(loss, terms)``: the scalar loss (mean over the batch) and the
    terms ``nll`` (n,), ``kl`` (n, latent_dim) and ``tc`` (scalar; zero, and not
    drawn, when ``tc_weight`` is 0). Training and validation both use it, so
    early stopping sees the objective that is optimised.
    """
    nll = gaussian_nll(recon.float(), x, mask, variance)
    kl = kl_per_latent(mu.float(), logvar.float())
    loss = (nll + beta * kl.sum(dim=1)).mean()
    if tc_weight:
        tc = total_correlation(mu.float(), logvar.float(), generator)
        loss = loss + tc_weight * tc
    else:
        tc = torch.zeros((), device=mu.device)
    return loss, {"nll": nll, "kl": kl, "tc": tc}


#: Width of the |latitude| bands of the ``latitude`` normalisation, degrees.
LATITUDE_BAND_DEG = 5.0
NORMALISATIONS = ("latitude", "per_bin", "global")


class Normaliser:
    """Turns kelvin profiles into model input and model output back into kelvin.

    Holds ``norm_lat`` (K,) degrees, ``norm_mean`` (K, channels, bins) and
    ``std`` (channels, bins), kelvin: the mean profile at K absolute latitudes
    (interpolated in between, :func:`mean_profile`) and the spread per bin.
    Model input is ``(T − mean(lat)) / std`` with unobserved bins zeroed, plus
    the observation mask. Fitted on the training pixels (:meth:`fit`), stored in
    the checkpoint and used unchanged by every step that runs the model.
    """

    def __init__(self, norm_lat: torch.Tensor, norm_mean: torch.Tensor, std: torch.Tensor,
                 mode: str):
        self.norm_lat, self.norm_mean, self.std, self.mode = norm_lat, norm_mean, std, mode

    @classmethod
    def fit(cls, profile: np.ndarray, lat: np.ndarray, mode: str) -> Normaliser:
        """Normalisation constants from training profiles (n, channels, bins), kelvin,
        NaN where unobserved, at latitudes ``lat`` (n,) degrees.

        ``global``: one mean and std; ``per_bin``: each local-time bin
        standardised; ``latitude``: mean profiles in 5° bands of |latitude|
        and the per-bin spread around them — insolation, which latitude sets,
        is then removed before the model sees the data.
        """
        if mode not in NORMALISATIONS:
            raise ValueError(f"normalisation {mode!r}: expected one of "
                             f"{', '.join(NORMALISATIONS)}")
        shape = profile.shape[1:]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins
            g_mean = np.nanmean(profile, axis=(0, 2), keepdims=True)[0]  # (C, 1)
            g_std = np.nanstd(profile, axis=(0, 2), keepdims=True)[0]
            bin_mean = np.nanmean(profile, axis=0)
            # Bins no training pixel observed borrow the channel's global value.
            bin_mean = np.where(np.isfinite(bin_mean), bin_mean, g_mean)
            if mode == "global":
                norm_lat = np.zeros(1)
                mean = np.full((1, *shape), np.nanmean(profile))
                std = np.full(shape, np.nanstd(profile))
            elif mode == "per_bin":
                norm_lat = np.zeros(1)
                mean = bin_mean[None]
                std = np.nanstd(profile, axis=0)
                std = np.where(np.isfinite(std) & (std > 1e-3), std, g_std)
            else:
                norm_lat, mean = _latitude_band_means(profile, lat, bin_mean)
                fitted = mean_profile(torch.from_numpy(np.asarray(lat, np.float32)),
                                      torch.from_numpy(norm_lat.astype(np.float32)),
                                      torch.from_numpy(mean.astype(np.float32))).numpy()
                std = np.nanstd(profile - fitted, axis=0)
                std = np.where(np.isfinite(std) & (std > 0.5), std, 0.5)
        return cls(torch.from_numpy(norm_lat.astype(np.float32)),
                   torch.from_numpy(np.asarray(mean, np.float32)),
                   torch.from_numpy(np.maximum(std, 1e-3).astype(np.float32)), mode)

    def to(self, device: str | torch.device) -> Normaliser:
        """The same constants on ``device``."""
        return Normaliser(self.norm_lat.to(device), self.norm_mean.to(device),
                          self.std.to(device), self.mode)

    def mean_at(self, lat_deg: torch.Tensor) -> torch.Tensor:
        """The mean profile of each pixel, kelvin, (n, channels, bins)."""
        return mean_profile(lat_deg, self.norm_lat, self.norm_mean)

    def to_model(self, profile: torch.Tensor, lat_deg: torch.Tensor | None = None, *,
                 mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input ``(x, mask)`` of kelvin profiles (n, channels, bins), NaN
        where unobserved; pass ``mean`` (:meth:`mean_at`) when it is at hand."""
        return normalise(profile, self.mean_at(lat_deg) if mean is None else mean, self.std)

    def to_kelvin(self, x: torch.Tensor, lat_deg: torch.Tensor | None = None, *,
                  mean: torch.Tensor | None = None) -> torch.Tensor:
        """Kelvin profiles of normalised model output ``x`` (n, channels, bins)."""
        return x * self.std + (self.mean_at(lat_deg) if mean is None else mean)

    def state(self) -> dict[str, Any]:
        """The checkpoint entries that rebuild this normaliser."""
        return {"norm_lat": self.norm_lat.cpu(), "norm_mean": self.norm_mean.cpu(),
                "norm_std": self.std.cpu(), "normalisation": self.mode}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Normaliser:
        """Rebuild from :meth:`state` (e.g. a loaded checkpoint)."""
        return cls(state["norm_lat"], state["norm_mean"], state["norm_std"],
                   state["normalisation"])


def _latitude_band_means(profile: np.ndarray, lat: np.ndarray, bin_mean: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Mean profiles of the 5° |latitude| bands that hold pixels, and the bands'
    mean |latitude|; a bin a band never observed is interpolated from the others."""
    edges = np.arange(0.0, 90.0 + LATITUDE_BAND_DEG, LATITUDE_BAND_DEG)
    band = np.clip(np.digitize(np.abs(lat), edges) - 1, 0, edges.size - 2)
    means, centres = [], []
    for k in range(edges.size - 1):
        members = profile[band == k]
        if members.shape[0] == 0:
            continue
        means.append(np.nanmean(members, axis=0))
        centres.append(float(np.mean(np.abs(lat[band == k]))))
    mean = np.stack(means)
    for c in range(mean.shape[1]):
        for b in range(mean.shape[2]):
            col = mean[:, c, b]
            ok = np.isfinite(col)
            col[~ok] = (np.interp(np.array(centres)[~ok], np.array(centres)[ok], col[ok])
                        if ok.any() else bin_mean[c, b])
    return np.array(centres), mean


def build_model(arch: Mapping[str, Any]) -> ProfileVAE:
    """Rebuild a model from the ``arch`` dict stored in a checkpoint."""
    known = VAEConfig.__dataclass_fields__
    unknown = sorted(set(arch) - set(known))
    if unknown:
        raise ValueError(f"checkpoint architecture has unknown keys {unknown}; "
                         f"it was written by an incompatible vaemap version")
    return ProfileVAE(VAEConfig(**arch))


def torch_load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with every failure turned into one
    :class:`CheckpointError` naming the file (not a traceback that advises
    ``weights_only=False``, which would execute code from the file)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable vaemap checkpoint ({first[:200]})"
                              ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a vaemap checkpoint (holds a "
                              f"{type(obj).__name__}, expected a dict)")
    return obj


def weights_checksum(ckpt: Mapping[str, Any]) -> str:
    """``xxh3_128:<hex>`` of a checkpoint's weights and normalisation constants
    (names and bytes, in sorted order): what the model computes with. Stored
    by :func:`save_checkpoint`, verified by :func:`load_checkpoint`, and
    recorded in the products made with the model."""
    return tensors_checksum({**{f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()},
                             **{k: ckpt[k] for k in ("norm_lat", "norm_mean", "norm_std")}})


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """``xxh3_128:<hex>`` of named tensors (names and bytes, in sorted order): the
    checksum of a checkpoint's weights (:func:`weights_checksum`, the emulator's)."""
    import xxhash

    digest = xxhash.xxh3_128()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return f"xxh3_128:{digest.hexdigest()}"


_CHECKPOINT_KEYS = ("state_dict", "arch", "norm_lat", "norm_mean", "norm_std", "normalisation",
                    "nside", "channels", "config")


def save_checkpoint(path: str | Path, model: ProfileVAE, normaliser: Normaliser, *,
                    nside: int, channels: Sequence[int], **extra: Any) -> None:
    """Write ``model.pt`` atomically: a plain dict that ``torch.load(...,
    weights_only=True)`` reads.

    Keys: ``format`` (:data:`CHECKPOINT_FORMAT`), ``state_dict``, ``arch``
    (:class:`VAEConfig` fields), the normaliser's ``norm_lat`` (K,) degrees,
    ``norm_mean`` (K, channels, bins) and ``norm_std`` (channels, bins) kelvin
    and ``normalisation`` (its mode), the profiles' ``nside`` and ``channels``,
    ``weights_checksum`` (:func:`weights_checksum`) and whatever ``extra``
    holds (the producing ``config``, ``metrics``, ``history``).
    """
    ckpt = {"format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "arch": model.cfg.to_dict(), **normaliser.state(), "nside": int(nside),
            "channels": [int(c) for c in channels], **extra}
    ckpt["weights_checksum"] = weights_checksum(ckpt)
    torch_save(ckpt, path)


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically. The bytes are serialised in memory
    first, so a full disk raises the OSError of a plain write, naming ``path``
    (torch's own writer reports it as an opaque RuntimeError)."""
    import io

    from vaemap.io import atomic_path

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[ProfileVAE, Normaliser, dict[str, Any]]:
    """Load ``model.pt``: (model in eval mode, its normaliser on ``device``, the dict).

    Raises :class:`CheckpointError` naming the file when it cannot be read,
    is of another format version, lacks a key, its weights differ from their
    recorded checksum (corruption), or do not fit the architecture it declares.
    """
    ckpt = torch_load(path, device)
    version = ckpt.get("format")
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {version}, this vaemap reads "
                              f"format {CHECKPOINT_FORMAT}; retrain (vaemap train)")
    missing = [key for key in _CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a vaemap model checkpoint (missing "
                              f"{', '.join(missing)})")
    if ckpt.get("weights_checksum") != weights_checksum(ckpt):
        raise CheckpointError(f"{path}: the weights do not match the checksum recorded when "
                              f"it was written: the file is corrupt; retrain (vaemap train)")
    try:
        model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the declared architecture "
                              f"{ckpt['arch']}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), Normaliser.from_state(ckpt).to(device), ckpt
