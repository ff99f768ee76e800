"""Faults a long reprocessing run meets: each ends in one clear line naming the
file and a non-zero exit, or is recovered from, and never in a wrong product.

(The first part of the fault-injection suite; kills during a workflow run and
full disks are still to come.)
"""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY, edit_product

from vaemap import cli
from vaemap.config import ConfigError, validate_config
from vaemap.io import atomic_path
from vaemap.model import CheckpointError, load_checkpoint, weights_checksum


def _cli(capsys, *argv):
    rc = cli.main([*map(str, argv), "-q"])
    return rc, capsys.readouterr().err.strip()


def _one_line(err):
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_corrupted_model_is_refused_by_every_step(survey, trained, tmp_path, capsys):
    """100 bytes overwritten in the middle of model.pt (weights or the archive
    around them) must never flow into the latents."""
    data = bytearray(trained["model"].read_bytes())
    middle = len(data) // 2
    data[middle:middle + 100] = bytes(100)
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(bytes(data))
    rc, err = _cli(capsys, "encode", survey["profiles_h5"], corrupt, "--output",
                   tmp_path / "latents.h5")
    assert rc == 1 and str(corrupt) in _one_line(err)
    assert "corrupt" in err or "not a readable vaemap checkpoint" in err
    assert not (tmp_path / "latents.h5").exists()


def test_changed_weights_fail_their_recorded_checksum(trained, tmp_path):
    ckpt = torch.load(trained["model"], weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 1e-3
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt: the weights do not match the "
                                              r"checksum recorded when it was written"):
        load_checkpoint(tmp_path / "edited.pt")


def test_latents_of_another_model_are_refused(survey, trained, tmp_path, capsys):
    """A mixed-up model.pt (here: other weights, consistently saved) beside the
    latents it did not make: maps and evaluate stop instead of mapping them."""
    ckpt = torch.load(trained["model"], weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] * 0.5
    ckpt["weights_checksum"] = weights_checksum(ckpt)
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    rc, err = _cli(capsys, "maps", trained["latents"], "--profiles", survey["profiles_h5"],
                   "--model", other, "--outdir", tmp_path / "maps")
    assert rc == 1 and "was made by another model" in _one_line(err)
    assert str(trained["latents"]) in err and not (tmp_path / "maps").exists()
    rc, err = _cli(capsys, "evaluate", trained["latents"], "--truth", survey["truth"],
                   "--profiles", survey["profiles_h5"], "--model", other, "--outdir",
                   tmp_path / "eval")
    assert rc == 1 and "was made by another model" in _one_line(err)


def test_latents_beside_other_profiles_are_refused(survey, trained, tmp_path, capsys):
    """Latents record the content checksum of the profiles they were encoded from:
    maps and evaluate given other profiles (same grid, other content, written as
    vaemap writes them) stop, naming both."""
    import h5py

    from vaemap.products import content_checksum

    other = tmp_path / "profiles.h5"
    other.write_bytes(survey["profiles_h5"].read_bytes())
    with h5py.File(other, "a") as h5:
        h5["profile"][0] = h5["profile"][0] + 1.0
        h5.attrs["content_checksum"] = content_checksum(h5)
    for args in (["maps", trained["latents"], "--profiles", other, "--model", trained["model"],
                  "--outdir", tmp_path / "maps"],
                 ["evaluate", trained["latents"], "--truth", survey["truth"], "--profiles",
                  other, "--model", trained["model"], "--outdir", tmp_path / "eval"]):
        rc, err = _cli(capsys, *args)
        line = _one_line(err)
        assert rc == 1 and "was made from other profiles" in line, line
        assert str(trained["latents"]) in line and str(other) in line
    assert not (tmp_path / "maps").exists() and not (tmp_path / "eval" / "metrics.json").exists()
    with h5py.File(survey["profiles_h5"]) as h5:  # and the profiles record their samples'
        source = json.loads(h5.attrs["input"])
    with h5py.File(survey["samples"]) as h5:
        assert source["checksum"] == h5.attrs["content_checksum"] == content_checksum(h5)


@pytest.mark.parametrize("product", ["samples", "profiles_h5", "latents", "truth"])
def test_a_product_changed_after_it_was_written_is_refused(survey, trained, tmp_path, capsys,
                                                         product):
    """Every HDF5 product records the checksum of its values when it is written; a
    value changed afterwards (a stray edit, a damaged copy) stops the next reader
    with one line naming the file, and so does a file without the checksum."""
    import h5py

    source = trained["latents"] if product == "latents" else survey[product]
    changed = tmp_path / Path(source).name
    changed.write_bytes(Path(source).read_bytes())
    key = {"samples": "tb", "profiles_h5": "profile", "latents": "mu", "truth": "albedo"}[product]
    with h5py.File(changed, "a") as h5:
        h5[key][0] = h5[key][0] * 1.01 + 0.5
    reader = {
        "samples": ["profiles", changed, "--output", tmp_path / "p.h5"],
        "profiles_h5": ["encode", changed, trained["model"], "--output",
                        tmp_path / "l.h5"],
        "latents": ["maps", changed, "--profiles", survey["profiles_h5"], "--model",
                    trained["model"], "--outdir", tmp_path / "maps"],
        "truth": ["evaluate", trained["latents"], "--truth", changed, "--outdir",
                  tmp_path / "eval"],
    }[product]
    rc, err = _cli(capsys, *reader)
    line = _one_line(err)
    assert rc == 1 and f"{changed}:" in line and "do not match the checksum" in line, line
    with h5py.File(changed, "a") as h5:
        del h5.attrs["content_checksum"]
    rc, err = _cli(capsys, *reader)
    line = _one_line(err)
    assert rc == 1 and f"{changed}:" in line and "records no content checksum" in line, line
    assert not any((tmp_path / name).exists() for name in ("p.h5", "l.h5", "maps")), reader
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_wrong_truth_path_is_an_error_not_real_data(trained, tmp_path, capsys):
    rc, err = _cli(capsys, "evaluate", trained["latents"], "--truth", tmp_path / "truth.h5",
                   "--outdir", tmp_path / "eval")
    assert rc == 1 and f"{tmp_path / 'truth.h5'}: truth file not found" in _one_line(err)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("every", [50, 1])
def test_latents_with_nan_are_refused_by_maps_and_evaluate(survey, trained, tmp_path, capsys,
                                                           every):
    """NaN latents (every 50th pixel, or all) never become silent gaps, empty maps
    or an ICA of zeros: each reader ends in one line naming the file and the
    dataset, and writes nothing."""
    import numpy as np

    bad = tmp_path / "latents.h5"
    bad.write_bytes(trained["latents"].read_bytes())
    with edit_product(bad) as h5:
        mu = h5["mu"][...]
        mu[::every, 0] = np.nan
        h5["mu"][...] = mu
    rc, err = _cli(capsys, "maps", bad, "--profiles", survey["profiles_h5"], "--model",
                   trained["model"], "--outdir", tmp_path / "maps")
    assert rc == 1 and f"{bad}: mu holds" in _one_line(err) and "NaN" in err
    assert not list(tmp_path.glob("maps/*.fits"))
    rc, err = _cli(capsys, "evaluate", bad, "--truth", survey["truth"], "--outdir",
                   tmp_path / "eval")
    assert rc == 1 and f"{bad}: mu holds" in _one_line(err)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_pixels_beyond_the_sphere_and_an_empty_map_are_refused(survey, tiny_config, tmp_path,
                                                               capsys):

    bad = tmp_path / "samples.h5"
    bad.write_bytes(survey["samples"].read_bytes())
    with edit_product(bad) as h5:
        nside = int(h5.attrs["nside"])
        pix = h5["pix"][...]
        pix[-1] = 12 * nside**2  # one index past the last pixel
        h5["pix"][...] = pix
    rc, err = _cli(capsys, "profiles", bad, "--output", tmp_path / "p.h5", "--config", TINY)
    assert rc == 1 and f"{bad}: pix[" in _one_line(err) and f"nside {nside}" in err
    assert not (tmp_path / "p.h5").exists()
    # a coverage rule no pixel passes: an error, not an empty profiles.h5
    rc, err = _cli(capsys, "profiles", survey["samples"], "--output", tmp_path / "p.h5",
                   "--config", TINY, "--set", "profiles.min_observations=1000000")
    assert rc == 1 and "no pixel at profiles.nside" in _one_line(err)
    assert "min_observations = 1000000" in err and not (tmp_path / "p.h5").exists()


def test_config_json_that_is_not_an_object_is_one_line(capsys, tmp_path):
    rc, err = _cli(capsys, "simulate", "--outdir", tmp_path, "--config-json", "[1, 2]")
    assert rc == 2 and "--config-json: expected a JSON object" in _one_line(err)
    assert "got a list" in err and not any(tmp_path.iterdir())


def test_bad_set_value_and_cross_key_rules_stop_before_any_work(capsys, tmp_path):
    rc, err = _cli(capsys, "simulate", "--outdir", tmp_path, "--set", "model.beta=[0.1")
    assert rc == 2 and "--set 'model.beta=[0.1': the value is not valid YAML" in _one_line(err)
    with pytest.raises(ConfigError, match=r"profiles\.bins: 30 local-time bins cannot be "
                                          r"halved model\.depth = 3 times"):
        validate_config({"profiles": {"bins": 30}, "model": {"depth": 3}})
    with pytest.raises(ConfigError, match="preset 'moseley2020'"):
        validate_config({"profiles": {"bins": 20}, "model": {"preset": "moseley2020",
                                                             "depth": 2}})
    validate_config({"profiles": {"bins": 24}, "model": {"depth": 3}})  # 24 = 3 * 2**3
    assert not any(tmp_path.iterdir())


def test_snakemake_config_errors_name_the_config_file(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["profiles"]["bins"] = 30
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile",
                           str(REPO / "workflow" / "Snakefile"), "--configfile", str(bad),
                           "--directory", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"{bad}: profiles.bins: 30 local-time bins" in proc.stdout + proc.stderr


def test_an_unexpected_failure_is_still_one_line(monkeypatch, capsys, tmp_path):
    from vaemap import simulate

    def broken(outdir, config, **kwargs):
        raise IndexError("index 7 is out of bounds for axis 0 with size 3")

    monkeypatch.setattr(simulate, "run", broken)
    rc, err = _cli(capsys, "simulate", "--outdir", tmp_path)
    assert rc == 3 and "internal error: IndexError: index 7" in _one_line(err)


@pytest.mark.parametrize("step", ["ingest", "merge", "train", "encode"])
def test_a_full_disk_ends_cleanly_naming_the_path(survey, trained, tmp_path, step):
    """A write that fails for space (here: the file-size limit, EFBIG; a full disk
    gives ENOSPC the same way) ends with one line and exit 1: no crash of HDF5
    (it used to segfault), no partial file."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    tiny = ["--config", str(TINY), "--set", "ingest.compression=none"]
    args = {"ingest": ["ingest", str(survey["rdr"][0]), *tiny],
            "merge": ["merge", str(survey["samples"]), str(survey["samples"]), *tiny],
            "train": ["train", str(survey["profiles_h5"]), *tiny, "--set", "train.epochs=1",
                      "--no-progress"],
            "encode": ["encode", str(survey["profiles_h5"]), str(trained["model"])]}[step]
    out = tmp_path / ("model.pt" if step == "train" else "out.h5")
    proc = subprocess.run([sys.executable, "-m", "vaemap.cli", *args, "--output", str(out),
                           "-q"], preexec_fn=small_files, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # (train names its per-epoch state, model.pt.ckpt, the first file it writes)
    assert re.match(rf"vaemap {step}: error: cannot write {re.escape(str(out))}(\.ckpt)?: "
                    r"File too large", last), last
    _one_line(proc.stderr.strip())  # HDF5's own complaints about closing the file silenced
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("limit", [20_000, 60_000, 150_000])
def test_a_full_disk_during_maps_names_the_product(survey, trained, tmp_path, limit):
    """maps writes many files: the one that fails for space is named (astropy reports
    it as a bare "N requested and M written"), or the scratch directory that did
    (the HiPS pixel order is read off reproject's tiles in $TMPDIR), and neither
    it nor a half-built HiPS directory is left behind; the products finished
    before it are whole."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "maps"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-m", "vaemap.cli", "maps", str(trained["latents"]),
                           "--profiles", str(survey["profiles_h5"]), "--model",
                           str(trained["model"]), "--config", str(TINY), "--outdir", str(out),
                           "-q"], preexec_fn=small_files, capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 1, proc.stderr
    last = _one_line(proc.stderr.strip())
    product = re.match(rf"vaemap maps: error: cannot write ({re.escape(str(out))}/\S+): "
                       r"(short write \(\d+ of \d+ bytes\)|File too large)", last)
    in_scratch = re.match(rf"vaemap maps: error: cannot write a scratch file: File too large "
                          rf"\(in {re.escape(str(scratch))}/vaemap-hips-order-\w+\); nothing "
                          r"was written; set TMPDIR to a directory with room$", last)
    assert product or in_scratch, last
    if product:
        assert not Path(product.group(1)).exists()
    assert list(scratch.iterdir()) == []
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    from astropy.io import fits

    for done in out.glob("*.fits"):
        fits.getdata(done, 1)  # every FITS left there reads whole


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_products_honour_the_umask(tmp_path, umask, mode):
    out = tmp_path / "profiles_like.h5"
    code = ("import os, sys; os.umask(int(sys.argv[2], 8))\n"
            "from vaemap.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('x')\n")
    subprocess.run([sys.executable, "-c", code, str(out), oct(umask)], check=True)
    assert stat.S_IMODE(os.stat(out).st_mode) == mode


def test_temporaries_of_a_killed_run_are_removed(survey, tiny_config, tmp_path):
    out = tmp_path / "samples.h5"
    stale = [tmp_path / ".samples.vaemap-tmp-k1ll3d.h5", tmp_path / ".samples.h5.x1.spill.h5"]
    for path in stale:
        path.write_text("left by a SIGKILL")
    other = tmp_path / ".profiles.vaemap-tmp-abc.h5"  # another product's: not ours to remove
    other.write_text("in use")
    from vaemap import ingest

    ingest.run(survey["rdr"][:1], out, tiny_config)
    assert out.exists() and not any(p.exists() for p in stale) and other.exists()
    with atomic_path(tmp_path / "figure.png") as tmp:
        assert tmp.name.startswith(".figure.vaemap-tmp-") and tmp.suffix == ".png"
        tmp.write_text("x")


def test_the_model_and_latents_are_final_targets(tmp_path):
    """A failed forced rerun that removed model.pt cannot leave a hole: they are
    targets of the default rule, so Snakemake sees them missing."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile",
                           str(REPO / "workflow" / "Snakefile"), "--configfile", str(TINY),
                           "--directory", str(tmp_path)], capture_output=True, text=True,
                          check=True)
    rule_all = proc.stdout.split("rule all:", 1)[1].split("jobid", 1)[0]
    assert "results/model/model.pt" in rule_all and "results/latents.h5" in rule_all


def _kill_when(proc, ready, timeout=300.0):
    """SIGKILL the workflow's whole process group once ``ready()`` holds."""
    import signal
    import time

    start = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError("the workflow ended before the moment to kill it")
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out waiting for the moment to kill the workflow")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_during_ingest_train_and_maps_a_rerun_gives_identical_products(tmp_path):
    """SIGKILL of the whole workflow (snakemake and its jobs) in the middle of
    ingest, of training and of maps; after `--unlock`, each rerun continues, and
    the products equal those of an uninterrupted run."""
    import h5py
    import healpy as hp
    import numpy as np

    cfg = yaml.safe_load(TINY.read_text())
    cfg["train"]["epochs"] = cfg["train"]["patience"] = 6  # a wider window to kill in
    cfg["sweep"] = {"beta": [], "seed": []}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def snakemake(directory, *extra, background=False):
        cmd = [sys.executable, "-m", "snakemake", "--snakefile",
               str(REPO / "workflow" / "Snakefile"), "--configfile", str(config),
               "--directory", str(directory), "--cores", "2", *extra]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    snakemake(reference)
    res = killed / "results"
    moments = [
        ("ingest", lambda: any((res / "logs" / "ingest").glob("*.log"))
         and not (res / "samples.h5").exists()),
        ("train", lambda: (res / "model" / "model.pt.ckpt").exists()
         and not (res / "model" / "model.pt").exists()),
        ("maps", lambda: (res / "logs" / "maps.log").exists()
         and any((res / "maps").glob("*.fits")) and not (res / "maps" / "n_obs.png").exists()),
    ]
    for _, ready in moments:
        _kill_when(snakemake(killed, background=True), ready)
        snakemake(killed, "--unlock")
    snakemake(killed)
    assert not list(res.rglob(".*vaemap-tmp-*")), "temporaries left behind"
    ref = reference / "results"
    with h5py.File(ref / "latents.h5") as a, h5py.File(res / "latents.h5") as b:
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key][...], b[key][...], err_msg=key)
    for name in ("main/metrics.json", "metrics.json"):
        assert (ref / "evaluate" / name).read_text() == (res / "evaluate" / name).read_text()
    for name in ("latent0_mu", "anomaly_score", "n_obs"):
        np.testing.assert_array_equal(hp.read_map(ref / "maps" / f"{name}.fits", nest=None),
                                      hp.read_map(res / "maps" / f"{name}.fits", nest=None))
