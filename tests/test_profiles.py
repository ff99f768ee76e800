"""Local-time binning, the coverage rule and the profiles.h5 contract."""

import json

import h5py
import numpy as np
import pytest
from conftest import write_product

from vaemap import profiles
from vaemap.config import validate_config
from vaemap.healpix import lonlat_to_pix
from vaemap.products import SAMPLES


def _samples(path, pix, local_time, tb, channel=7, nside=32):
    order = np.argsort(pix, kind="stable")
    write_product(path, SAMPLES, {"pix": np.asarray(pix)[order],
                                  "local_time": np.asarray(local_time)[order],
                                  "tb": np.asarray(tb)[order],
                                  "channel": np.full(len(pix), channel)}, nside=nside)


def test_max_cyclic_gap_wraps_through_midnight():
    obs = np.zeros((3, 24), bool)
    obs[0, [0, 23]] = True  # adjacent across midnight: 22 empty bins between them the other way
    obs[1, ::2] = True
    obs[2, 5] = True
    gaps = profiles.max_cyclic_gap_h(obs)
    assert gaps[0] == pytest.approx(22.0)
    assert gaps[1] == pytest.approx(1.0)
    assert gaps[2] == pytest.approx(24.0)


def test_binning_means_counts_and_coverage(tmp_path):
    cfg = validate_config({"profiles": {"bins": 24, "min_observations": 20, "max_gap_h": 4.0,
                                        "nside": 8}})
    good = int(lonlat_to_pix(32, 10.0, 5.0))
    sparse = int(lonlat_to_pix(32, 200.0, -30.0))
    gappy = int(lonlat_to_pix(32, 100.0, 40.0))
    lt = np.arange(24) + 0.5
    pix = [good] * 48 + [sparse] * 5 + [gappy] * 30
    local = list(lt) + list(lt) + [1.0] * 5 + list(np.linspace(0.1, 11.9, 30))
    tb = list(100 + lt) + list(102 + lt) + [150.0] * 5 + [200.0] * 30
    _samples(tmp_path / "s.h5", pix, local, tb)
    out = profiles.run(tmp_path / "s.h5", tmp_path / "p.h5", cfg)
    assert out["pixels"] == 1
    assert out["rejected"] == {"too_few_observations": 1, "gap_too_large": 1}
    with h5py.File(tmp_path / "p.h5") as h5:
        assert h5["profile"].shape == (1, 1, 24)
        np.testing.assert_allclose(h5["profile"][0, 0], 101 + lt)
        np.testing.assert_array_equal(h5["count"][0, 0], 2)
        assert int(h5["pix"][0]) == good >> 4  # nside 32 -> 8 parent
        np.testing.assert_allclose(h5.attrs["bin_edges_h"], np.linspace(0, 24, 25))


def test_empty_bins_are_masked(survey):
    with h5py.File(survey["profiles_h5"]) as h5:
        prof, count = h5["profile"][...], h5["count"][...]
    assert np.array_equal(np.isfinite(prof), count > 0)
    assert (count == 0).any()
    assert np.nanmin(prof) > 20 and np.nanmax(prof) < 450


def test_chunked_streaming_matches_one_pass(survey, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "READ_ROWS", 1000)  # many chunks, pixels split across them
    profiles.run(survey["samples"], tmp_path / "p.h5", tiny_config)
    with h5py.File(survey["profiles_h5"]) as a, h5py.File(tmp_path / "p.h5") as b:
        np.testing.assert_array_equal(a["pix"][...], b["pix"][...])
        np.testing.assert_allclose(a["profile"][...], b["profile"][...], equal_nan=True,
                                   rtol=1e-6)


def test_tiles_then_merge_equal_one_job(survey, tiny_config, tmp_path):
    parts = []
    for index in reversed(range(12)):  # any order: merge sorts the parts
        parts.append(tmp_path / f"tile_{index}.h5")
        profiles.run(survey["samples"], parts[-1], tiny_config, tile=f"1/{index}")
    summary = profiles.merge(parts, tmp_path / "profiles.h5", tiny_config)
    assert summary["rejected"] == survey["profiles"]["rejected"]
    with h5py.File(survey["profiles_h5"]) as one, h5py.File(tmp_path / "profiles.h5") as merged:
        assert summary["pixels"] == one["pix"].shape[0]
        for key in ("pix", "lat", "lon", "profile", "count", "n_obs"):
            np.testing.assert_array_equal(merged[key][...], one[key][...])
        assert merged.attrs["observed_bins"] == one.attrs["observed_bins"]
        assert merged.attrs["ordering"] == "NESTED"
    with pytest.raises(ValueError, match="overlap"):
        profiles.merge([parts[0], parts[0]], tmp_path / "bad.h5", tiny_config)
    with pytest.raises(ValueError, match="not a tile part of profiles"):
        profiles.merge([survey["profiles_h5"]], tmp_path / "bad.h5", tiny_config)
    with pytest.raises(ValueError, match="finer than"):
        profiles.run(survey["samples"], tmp_path / "bad.h5", tiny_config, tile="16/0")


def test_samples_merged_per_tile_give_the_same_profiles(survey, tiny_config, tmp_path):
    """The days' samples merged per NESTED tile (each tile's rows from every day's
    file), a profiles job per tile on its samples part and the profiles merge:
    the single job's profiles, made from the same identified samples. A samples
    part is the input of its own tile only, and never of an untiled job."""
    from vaemap import ingest

    days = []
    for i, path in enumerate(survey["rdr"]):
        days.append(tmp_path / f"day{i}.h5")
        ingest.run([path], days[-1], tiny_config)
    whole = ingest.merge(days, tmp_path / "samples.h5", tiny_config)
    parts, rows = [], 0
    for index in range(12):
        sample_part = tmp_path / f"samples_{index}.h5"
        summary = ingest.merge(days, sample_part, tiny_config, tile=f"1/{index}")
        assert summary["tile"] == f"1/{index}" and summary["rows_read"] == whole["rows_read"]
        rows += summary["accepted"]
        parts.append(tmp_path / f"profiles_{index}.h5")
        profiles.run(sample_part, parts[-1], tiny_config, tile=f"1/{index}")
    assert rows == whole["accepted"]  # every sample in exactly one tile
    profiles.merge(parts, tmp_path / "profiles.h5", tiny_config)
    single = tmp_path / "single.h5"
    profiles.run(tmp_path / "samples.h5", single, tiny_config)
    with h5py.File(single) as one, h5py.File(tmp_path / "profiles.h5") as merged:
        assert merged.attrs["content_checksum"] == one.attrs["content_checksum"]
        assert json.loads(merged.attrs["input"])["checksum"] == json.loads(
            one.attrs["input"])["checksum"]
    with pytest.raises(ValueError, match=r"samples_3\.h5: is the samples of tile 1/3, not of "
                                         r"tile 1/4"):
        profiles.run(tmp_path / "samples_3.h5", tmp_path / "bad.h5", tiny_config, tile="1/4")
    with pytest.raises(ValueError, match="is tile part 1/3 of samples"):
        profiles.run(tmp_path / "samples_3.h5", tmp_path / "bad.h5", tiny_config)
