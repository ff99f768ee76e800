"""Training throughput of vaemap's trainer against a naive DataLoader baseline.

    python benchmarks/train.py [--pixels 20000] [--preset small|moseley2020] [--device auto]

Both train the same model on the same profiles in one process:

* ``vaemap``  — :func:`vaemap.train.run`: the whole set on the device, index
  slicing for minibatches, bf16 autocast on CUDA;
* ``naive``   — a ``torch.utils.data.DataLoader`` over an h5py-backed
  ``Dataset`` (one profile per ``__getitem__``, default collate), the usual
  first implementation.

Prints profiles per second for both and the ratio (target ≥ 2 on CPU). With
``--profiles`` it uses a real profiles.h5, otherwise it writes synthetic
diurnal profiles (120 bins, 70 % masked) of ``--pixels`` pixels. Runs
unchanged on a CUDA GPU (``--preset moseley2020`` for the paper-sized model;
target ≥ 500 k profiles/s on an H200). It also prints what training on
Moseley et al. (2020)'s budget of about 40 million profile presentations costs
at the measured rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from vaemap import train
from vaemap.config import validate_config
from vaemap.io import atomic_hdf5
from vaemap.model import (
    Normaliser,
    ProfileVAE,
    gaussian_nll,
    initial_noise_logvar,
    kl_per_latent,
    latitude_condition,
    normalise,
    resolve_device,
)
from vaemap.products import PROFILES

#: Profile presentations (samples x epochs) Moseley et al. (2020) trained on, about.
MOSELEY_PRESENTATIONS = 40e6


def synthetic_profiles(path: Path, n: int, bins: int = 120, seed: int = 0,
                       channels: tuple[int, ...] = (7,)) -> None:
    """Diurnal-looking profiles: a lit half-day and an exponential night, 30 % observed,
    the same curve (plus its own noise) in every channel of ``channels``."""
    rng = np.random.default_rng(seed)
    lt = (np.arange(bins) + 0.5) * 24 / bins
    lat = rng.uniform(-70, 70, n).astype(np.float32)
    t_noon = 385 * np.cos(np.radians(lat))[:, None] ** 0.25
    day = np.clip(np.cos(np.radians((lt - 12) * 15)), 0, None)[None] ** 0.25
    night = 100 + 20 * rng.uniform(size=(n, 1)) * np.exp(-np.abs(lt - 18) / 6)[None]
    n_ch = len(channels)
    prof = np.maximum(t_noon * day, night)[:, None, :] + rng.normal(0, 1, (n, n_ch, bins))
    count = (rng.uniform(size=(n, n_ch, bins)) < 0.3).astype(np.uint16)
    prof = np.where(count > 0, prof, np.nan).astype(np.float32)
    with atomic_hdf5(path) as h5:  # a real product: its content checksum recorded
        h5.attrs.update({**PROFILES.identity(), "nside": 64, "ordering": "NESTED",
                         "body": "MOON", "channels": json.dumps(list(channels)),
                         "bin_edges_h": np.linspace(0, 24, bins + 1), "rejected_pixels": "{}",
                         "observed_bins": int(count.sum())})
        h5["pix"] = np.arange(n, dtype=np.int64)
        h5["lat"] = lat
        h5["lon"] = np.zeros(n, np.float32)
        h5["profile"] = prof
        h5["count"] = count
        h5["n_obs"] = count.sum(axis=(1, 2)).astype(np.int32)


class H5ProfileDataset(torch.utils.data.Dataset):
    """One profile per item, read from HDF5 on demand (the naive baseline)."""

    def __init__(self, path: Path, mean: np.ndarray, std: np.ndarray, n_cond: int):
        self.path, self.mean, self.std, self.n_cond = path, mean, std, n_cond
        self.h5 = None
        with h5py.File(path, "r") as h5:
            self.n = h5["pix"].shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.h5 is None:
            self.h5 = h5py.File(self.path, "r")
        prof = torch.from_numpy(self.h5["profile"][i])[None]
        count = torch.from_numpy(self.h5["count"][i].astype(np.int32))[None]
        lat = torch.tensor([float(self.h5["lat"][i])])
        x, mask = normalise(prof, torch.from_numpy(self.mean), torch.from_numpy(self.std))
        return x[0], count[0].float(), mask[0], latitude_condition(lat, self.n_cond)[0]


def naive_throughput(path: Path, cfg: dict, device: torch.device, steps: int) -> float:
    data = train.load_profiles(path)
    norm = Normaliser.fit(data["profile"], data["lat"], "per_bin")
    mean, std = norm.norm_mean.numpy(), norm.std.numpy()
    arch = train._arch(cfg, [int(c) for c in data["channels"]], data["profile"].shape[2])
    model = ProfileVAE(arch).to(device)
    x_all, mask_all = normalise(torch.from_numpy(data["profile"]), norm.norm_mean[0], norm.std)
    model.noise.initialise(initial_noise_logvar(
        x_all, mask_all, torch.from_numpy(data["count"].astype(np.float32))))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"])
    ds = H5ProfileDataset(path, mean[0], std, arch.n_cond)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg["train"]["batch_size"],
                                         shuffle=True)
    seen, t0 = 0, time.perf_counter()
    for step, (x, count, mask, cond) in enumerate(loader):
        x, count, mask, cond = (t.to(device) for t in (x, count, mask, cond))
        recon, mu, logvar = model(x, mask, cond)
        loss = (gaussian_nll(recon, x, mask, model.noise.variance(count))
                + cfg["model"]["beta"] * kl_per_latent(mu, logvar).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += x.shape[0]
        if step + 1 >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path)
    parser.add_argument("--pixels", type=int, default=20000)
    parser.add_argument("--preset", default="small", choices=["small", "moseley2020"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--naive-steps", type=int, default=60)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vaemap-train-bench-"))
    path = args.profiles
    if path is None:
        path = workdir / "profiles.h5"
        synthetic_profiles(path, args.pixels)
    cfg = validate_config({
        "device": args.device, "model": {"preset": args.preset, "normalisation": "per_bin"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "val_fraction": 0.1,
                  "patience": 100},
    })
    device = resolve_device(args.device)
    ours = train.run(path, workdir / "model.pt", cfg, progress=False)
    naive = naive_throughput(path, cfg, device, args.naive_steps)
    print(f"train benchmark on {device} ({torch.get_num_threads()} threads), preset "
          f"{args.preset}, batch {args.batch_size}, {ours['train_pixels']} training profiles")
    print(f"  vaemap trainer     {ours['profiles_per_s']:12,.0f} profiles/s "
          f"({ours['epochs']} epochs, validation included)")
    print(f"  naive DataLoader   {naive:12,.0f} profiles/s ({args.naive_steps} steps, "
          f"baseline)")
    print(f"  ratio: {ours['profiles_per_s'] / naive:.1f}x  (target >= 2 on CPU)")
    hours = MOSELEY_PRESENTATIONS / ours["profiles_per_s"] / 3600
    print(f"  Moseley et al. (2020)'s budget, {MOSELEY_PRESENTATIONS / 1e6:.0f} M profile "
          f"presentations: {hours:.2f} h of training on this device at this rate")


if __name__ == "__main__":
    main()
