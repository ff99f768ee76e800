"""Encoding throughput (pixels/s) against a pixel-at-a-time baseline, for channel 7
alone and for all nine Diviner channels.

    python benchmarks/encode.py [--pixels 200000] [--preset moseley2020] [--device auto]

Trains nothing: a randomly initialised model of the chosen preset is saved as
a checkpoint, then

* ``vaemap``   — :func:`vaemap.encode.run` streams a synthetic profiles.h5 of
  ``--pixels`` pixels through encoder and decoder in large batches and writes
  latents.h5 (reconstruction error and anomaly score included), once with
  channel 7 alone and once with channels 1-9 (nine input channels);
* ``one-by-one`` — the channel-7 model applied to one profile at a time (the
  naive per-pixel loop), on ``--baseline-pixels`` pixels.

Prints pixels/s of each and the ratios. Targets: ≥ 30 k pixels/s on 2 CPU
cores for the Moseley-sized model, ≥ 5 M pixels/s on a CUDA GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train import synthetic_profiles

from vaemap import encode, train
from vaemap.config import validate_config
from vaemap.model import Normaliser, ProfileVAE, latitude_condition, resolve_device, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=200_000)
    parser.add_argument("--baseline-pixels", type=int, default=500)
    parser.add_argument("--preset", default="moseley2020", choices=["small", "moseley2020"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vaemap-encode-bench-"))
    cfg = validate_config({"device": args.device, "model": {"preset": args.preset},
                           "encode": {"batch_size": args.batch_size, "store_recon": False}})
    device = resolve_device(args.device)
    rates = {}
    for label, channels in (("channel 7", (7,)), ("channels 1-9", tuple(range(1, 10)))):
        profiles = workdir / f"profiles_{len(channels)}.h5"
        synthetic_profiles(profiles, args.pixels, channels=channels)
        with h5py.File(profiles) as h5:
            sample = h5["profile"][: min(args.pixels, 20000)]
            lat = h5["lat"][: min(args.pixels, 20000)]
        norm = Normaliser.fit(sample, lat, "per_bin")
        arch = train._arch(cfg, sample.shape[1], sample.shape[2])
        model = ProfileVAE(arch)
        save_checkpoint(workdir / "model.pt", model, norm, nside=64, channels=list(channels),
                        config={"model": cfg["model"]})
        t0 = time.perf_counter()
        encode.run(profiles, workdir / "model.pt", workdir / "latents.h5", cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[label] = args.pixels / (time.perf_counter() - t0)
        if len(channels) == 1:  # the one-by-one baseline uses this model
            single = (model, norm, sample, lat, arch)
    ours = rates["channel 7"]
    model, norm, sample, lat, arch = single

    model = model.to(device).eval()
    m = min(args.baseline_pixels, sample.shape[0])
    norm = norm.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(m):
            prof = torch.from_numpy(sample[i:i + 1]).to(device)
            la = torch.from_numpy(lat[i:i + 1]).to(device)
            x, mask = norm.to_model(prof, la)
            mu, _ = model.encode(x, mask)
            model.decode(mu, latitude_condition(la, arch.n_cond))
    if device.type == "cuda":
        torch.cuda.synchronize()
    naive = m / (time.perf_counter() - t0)
    print(f"encode benchmark on {device} ({torch.get_num_threads()} threads), preset "
          f"{args.preset}, {args.pixels} pixels, batch {args.batch_size}")
    print(f"  vaemap encode, channel 7      {ours:12,.0f} pixels/s")
    print(f"  vaemap encode, channels 1-9   {rates['channels 1-9']:12,.0f} pixels/s "
          f"({rates['channels 1-9'] / ours:.2f} of channel 7 alone)")
    print(f"  one pixel at a time, ch. 7    {naive:12,.0f} pixels/s (baseline)")
    print(f"  ratio: {ours / naive:.0f}x   (targets: >= 30 k/s on 2 CPU cores, "
          f">= 5 M/s on a GPU)")


if __name__ == "__main__":
    main()
