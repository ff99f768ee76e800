"""Several Diviner channels through the pipeline: per-channel errors and maps."""

import json

import h5py
import healpy as hp
import numpy as np
import torch

from vaemap import encode, ingest, maps, profiles, simulate, train
from vaemap.model import reconstruction_errors
from vaemap.products import map_products, simulated_rdr_names


def test_reconstruction_errors_per_channel():
    residual = torch.tensor([[[1.0, -1.0, 0.0], [3.0, 3.0, 3.0]]])  # (1 pixel, 2 ch, 3 bins)
    mask = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    errors = reconstruction_errors(residual, mask, torch.full((2, 3), 2.0))
    assert errors["recon_error_channel"][0, 0] == 1.0
    assert torch.isnan(errors["recon_error_channel"][0, 1])  # no observed bin
    assert errors["recon_error"][0] == 1.0 and errors["recon_norm_l1"][0] == 0.5
    assert "recon_error_ch7" not in map_products(2, channels=[7])
    assert {"recon_error_ch1", "recon_error_ch7"} <= set(map_products(2, channels=[1, 7]))


def test_a_solar_and_a_thermal_channel_end_to_end(tiny_config, tmp_path):
    """Channels 1 (reflectance) and 7 (kelvin) simulated, ingested, profiled, learned
    as two input channels and mapped with one error map per channel."""
    cfg = {**tiny_config,
           "simulate": {**tiny_config["simulate"], "channels": [1, 7], "files": 1},
           "ingest": {**tiny_config["ingest"], "channels": [1, 7]},
           "train": {**tiny_config["train"], "epochs": 2}}
    simulate.run(tmp_path / "sim", cfg)
    tables = [tmp_path / "sim" / "rdr" / n for n in simulated_rdr_names(cfg["simulate"])]
    ingest.run(tables, tmp_path / "samples.h5", cfg)
    profiles.run(tmp_path / "samples.h5", tmp_path / "profiles.h5", cfg)
    with h5py.File(tmp_path / "profiles.h5") as h5:
        assert json.loads(h5.attrs["channel_units"]) == ["reflectance", "K"]
    train.run(tmp_path / "profiles.h5", tmp_path / "model.pt", cfg, progress=False)
    encode.run(tmp_path / "profiles.h5", tmp_path / "model.pt", tmp_path / "latents.h5", cfg)
    maps.run(tmp_path / "latents.h5", tmp_path / "profiles.h5", tmp_path / "model.pt",
             tmp_path / "maps", cfg)
    solar = hp.read_map(tmp_path / "maps" / "recon_error_ch1.fits", nest=None)
    thermal = hp.read_map(tmp_path / "maps" / "recon_error_ch7.fits", nest=None)
    seen = (solar != hp.UNSEEN) & (thermal != hp.UNSEEN)
    assert seen.sum() > 100
    # reflectance errors are hundredths, kelvin errors kelvin: each map in its own unit
    assert np.median(solar[seen]) < 0.2 < 1.0 < np.median(thermal[seen])
