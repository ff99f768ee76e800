"""The SLURM profile against a real scheduler, and its resource requests.

The end-to-end test needs a running SLURM with accounting: `.ci/run` starts one
with scripts/local-slurm.sh (Debian's slurm-wlm, slurmdbd over MariaDB, munge),
as a developer can. Where none runs, it skips and says why.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from conftest import REPO, TINY
from test_workflow import snakemake

PROFILE = REPO / "workflow" / "profiles" / "slurm"


def slurm_unavailable() -> str | None:
    """Why the SLURM test cannot run here, or None when it can."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed"
    for command in ("sbatch", "sacct", "sinfo"):
        if shutil.which(command) is None:
            return f"no {command}: start a cluster with scripts/local-slurm.sh start (root)"
    status = subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "status"],
                            capture_output=True, text=True)
    if status.returncode != 0:
        return ("no SLURM node is up with accounting (scripts/local-slurm.sh status): "
                "start one with scripts/local-slurm.sh start (root)")
    return None


def dry_run_jobs(output: str) -> dict[str, dict[str, str]]:
    """Each planned job's request in a dry run, {rule: {resource: value}} (the last
    job of each rule; grouped jobs are indented under their group), with its
    ``threads`` and, for a grouped job, its ``group``."""
    jobs: dict[str, dict[str, str]] = {}
    rule, group = None, None
    for line in output.splitlines():
        if found := re.match(r"\[.*\] Group job (\w+)", line):
            group = found.group(1)
        elif found := re.match(r"(\s*)(?:local)?rule (\w+):", line):
            rule = found.group(2)
            jobs[rule] = {"threads": "1"}
            if found.group(1) and group:
                jobs[rule]["group"] = group
            elif not found.group(1):
                group = None
        elif rule and (found := re.match(r"\s+threads: (\d+)", line)):
            jobs[rule]["threads"] = found.group(1)
        elif rule and (found := re.match(r"\s+resources: (.*)", line)):
            jobs[rule].update(re.findall(r"(\w+)=([^,\s]+)", found.group(1)))
    return jobs


def test_dry_run_shows_each_jobs_request(tmp_path):
    """`snakemake --workflow-profile workflow/profiles/slurm -n` prints what every
    job asks the scheduler for: memory and time from the config and the inputs,
    the rule's CPUs, a GPU for train and encode only when the config asks for
    CUDA, and the profile's partition."""
    common = ("--workflow-profile", str(PROFILE), "-n", "--directory", str(tmp_path))
    cpu = dry_run_jobs(snakemake(*common, "--configfile", str(REPO / "config" / "config.yaml"),
                                 cwd=tmp_path).stdout)
    assert {"simulate", "ingest", "profiles", "train", "encode", "maps",
            "evaluate"} <= set(cpu)
    for rule, request in cpu.items():
        if rule == "all":
            continue
        assert int(request["mem_mb"]) >= 1000, (rule, request)
        assert int(request["runtime"]) >= 1, (rule, request)
        assert request["slurm_partition"] == "normal", (rule, request)
    assert cpu["simulate"]["threads"] == "4" and cpu["encode"]["threads"] == "2"
    assert cpu["train"]["gpu"] == "0" and cpu["encode"]["gpu"] == "0"
    assert cpu["ingest"]["group"] == "ingest"
    assert cpu["evaluate_sweep"]["group"] == cpu["encode_sweep"]["group"] == "sweep_products"

    # A bigger map asks for more memory; CUDA asks for a GPU.
    (tmp_path / "big.yaml").write_text("device: cuda\ningest: {nside: 128}\n"
                                       "profiles: {nside: 128}\n")
    gpu = dry_run_jobs(snakemake(*common, "--configfile", str(REPO / "config" / "config.yaml"),
                                 str(tmp_path / "big.yaml"), cwd=tmp_path).stdout)
    assert gpu["train"]["gpu"] == "1" and gpu["encode"]["gpu"] == "1"
    assert "gpu" not in gpu["profiles"] or gpu["profiles"]["gpu"] == "0"
    for rule in ("profiles", "train", "encode", "evaluate"):
        assert int(gpu[rule]["mem_mb"]) > int(cpu[rule]["mem_mb"]), rule
    assert int(gpu["train"]["runtime"]) > int(cpu["train"]["runtime"])

    # Survey scale (config/scale.yaml: 107 M rows, nside 256) fits nodes of 4 GiB a job.
    scale = dry_run_jobs(snakemake(*common, "--configfile", str(REPO / "config" / "config.yaml"),
                                   str(REPO / "config" / "scale.yaml"), cwd=tmp_path).stdout)
    assert {"simulate", "ingest", "merge_samples", "profiles", "train", "encode",
            "maps"} <= set(scale)
    for rule, request in scale.items():
        if rule != "all":
            assert int(cpu[rule]["mem_mb"]) <= int(request["mem_mb"]) < 4096, (rule, request)
    assert int(scale["simulate"]["mem_mb"]) > int(cpu["simulate"]["mem_mb"])


def _sacct_jobs(since: str) -> dict[str, list[str]]:
    """{job: [state, ...]} of the jobs accounted since ``since``, named by the
    comment the executor gives each (``rule_<name>`` with wildcards after
    ``_wildcards``; a group job ``rule_<group>_<rule>_<rule>...``)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,Comment,State"],
                         capture_output=True, text=True, check=True).stdout
    jobs: dict[str, list[str]] = {}
    for line in out.splitlines():
        _, comment, state = line.split("|")
        name = comment.strip().removeprefix("rule_").split("_wildcards")[0]
        jobs.setdefault(name, []).append(state)
    return jobs


def _datasets(path: Path) -> dict[str, np.ndarray]:
    import hdf5plugin  # noqa: F401  (samples.h5 is blosc-compressed)

    with h5py.File(path) as h5:
        return {name: h5[name][...] for name in h5 if isinstance(h5[name], h5py.Dataset)}


@pytest.mark.slow
def test_tiny_workflow_through_a_real_scheduler(tmp_path):
    """The tiny configuration through `--workflow-profile workflow/profiles/slurm`:
    every job goes through sbatch (sacct lists it under its rule), and the
    products equal those of a local run."""
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    for root in (local, cluster):
        root.mkdir()
        shutil.copy(TINY, root / "config.yaml")
    snakemake("--configfile", str(local / "config.yaml"), "--directory", str(local),
              "--cores", "2")

    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    # The node has this machine's two CPUs: --cores caps each job (and group) to fit.
    snakemake("--workflow-profile", str(PROFILE), "--configfile", str(cluster / "config.yaml"),
              "--directory", str(cluster), "--cores", "2",
              "--slurm-init-seconds-before-status-checks", "2",
              "--seconds-between-status-checks", "3", cwd=cluster)

    jobs = _sacct_jobs(since)
    assert {"simulate", "merge_samples", "profiles", "train", "train_sweep", "encode", "maps",
            "evaluate", "summarize"} <= set(jobs), jobs
    # the profile's groups: the ingest batches, and a sweep model's encode + evaluate
    assert "ingest_ingest" in jobs, jobs
    assert "sweep_products_encode_sweep_evaluate_sweep" in jobs, jobs
    assert {state for states in jobs.values() for state in states} == {"COMPLETED"}, jobs

    a, b = local / "results", cluster / "results"
    for name in ("samples.h5", "profiles.h5"):
        left, right = _datasets(a / name), _datasets(b / name)
        assert left.keys() == right.keys()
        for key in left:
            np.testing.assert_array_equal(left[key], right[key], err_msg=f"{name}:{key}")
    left, right = _datasets(a / "latents.h5"), _datasets(b / "latents.h5")
    for key in ("pix", "mu", "recon_error", "anomaly_score"):
        np.testing.assert_allclose(left[key], right[key], rtol=0, atol=1e-5, err_msg=key)
    for fits_path in sorted((a / "maps").glob("*.fits")):
        with fits.open(fits_path) as x, fits.open(b / "maps" / fits_path.name) as y:
            np.testing.assert_allclose(np.asarray(x[1].data.tolist(), float),
                                       np.asarray(y[1].data.tolist(), float),
                                       rtol=0, atol=1e-5, err_msg=fits_path.name)
    main_a = json.loads((a / "evaluate" / "main" / "metrics.json").read_text())
    main_b = json.loads((b / "evaluate" / "main" / "metrics.json").read_text())
    for key in ("best_abs_spearman", "anomaly", "recon_rms_k"):
        assert main_a[key] == main_b[key], key
