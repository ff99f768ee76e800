import glob
import json
import os
import re

from snakemake.utils import update_config

# Only light modules here (no torch, h5py or healpy): building the DAG must be
# fast and must work where the heavy packages live only in the jobs' env.
from vaemap import locks
from vaemap.config import ConfigError, retype_strings, validate_config
from vaemap.products import TRUTH_MAPS, map_products, simulated_rdr_names

# Validate against workflow/schemas/config.schema.yaml (the same schema the
# `vaemap` command line uses) and fill in the defaults; stop with the key path
# and the reason on an invalid value.
# Values given with --config are read again against the schema: Snakemake keeps
# the scalars of a nested value ('profiles={bins: 100}') as strings.
COMMAND_LINE = retype_strings(dict(workflow.config_settings.config))
update_config(config, COMMAND_LINE)
try:
    config.update(
        validate_config(
            config,
            source=" + ".join(dict.fromkeys(map(os.path.abspath, workflow.configfiles)))
            or "snakemake config",
            command_line=COMMAND_LINE,
        )
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
PRODUCTS = list(
    map_products(
        config["model"]["latent_dim"],
        config["maps"]["independent_components"],
        config["ingest"]["channels"],
        physical=config["model"]["decoder"] == "physics",
    )
)
# the products written as HiPS tile sets (maps.hips; [all] for every one)
HIPS_PRODUCTS = (
    PRODUCTS if config["maps"]["hips"] == ["all"] else config["maps"]["hips"]
)


# Cluster resources. Memory follows the configuration (known before any input
# exists, so a dry run shows it); run time follows the input's size where it
# exists. Each retry asks for 50 % more memory and time than the last.


def profile_cube_mb():
    """MB of one float32 (pixels, channels, bins) cube over the whole sphere at
    the profiles' nside: the unit in which profiles, train, encode and evaluate
    hold data."""
    npix = 12 * config["profiles"]["nside"] ** 2
    cube = npix * len(config["ingest"]["channels"]) * config["profiles"]["bins"] * 4
    return cube / 2**20


def surface_columns():
    """Surface columns of the simulator: 12 simulate.nside²."""
    return 12 * config["simulate"]["nside"] ** 2


def mem_mb(base, cubes=0.0, column_bytes=0.0):
    """The mem_mb resource: ``base`` MB plus ``cubes`` profile cubes and
    ``column_bytes`` bytes per simulated surface column, 50 % more on each retry."""

    def resource(wildcards, attempt):
        need = (
            base + cubes * profile_cube_mb() + column_bytes * surface_columns() / 2**20
        )
        return int(need * (1 + 0.5 * (attempt - 1)))

    return resource


# Bytes per row of a zipped simulated RDR table (measured on the demo: 45 MB for
# 594,000 rows), to size ingest jobs in a dry run before the tables exist.
RDR_ZIP_BYTES_PER_ROW = 80


def input_gib(input):
    """GiB of a job's input: the files' sizes where they exist, and for files
    not yet written, a simulated day's expected size from the config."""
    expected = simulated_rows() * RDR_ZIP_BYTES_PER_ROW / max(len(RDR_BATCHES), 1)
    sizes = [
        os.path.getsize(path) if os.path.exists(path) else expected for path in input
    ]
    return sum(sizes) / 2**30


def trained_fraction():
    """The share of the profile cube a model trains on (train.max_pixels)."""
    sample = config["train"]["max_pixels"]
    npix = 12 * config["profiles"]["nside"] ** 2
    return min(1.0, sample / npix) if sample else 1.0


def simulated_rows():
    """RDR rows the simulator writes (one per footprint and channel)."""
    sim = config["simulate"]
    rows = sim["days"] * sim["orbits_per_day"] * sim["samples_per_orbit"]
    return rows * sim["detectors"] * len(sim["channels"])


def runtime_min(
    base,
    per_gib_input=0.0,
    per_cube_gib=0.0,
    per_cube_gib_epoch=0.0,
    per_m_rows=0.0,
    per_m_columns=0.0,
):
    """The runtime resource (minutes): ``base`` plus ``per_gib_input`` per GiB of
    input, ``per_cube_gib`` per GiB of profile cube, ``per_cube_gib_epoch`` per
    GiB of the cube trained on and epoch, ``per_m_rows`` per million simulated
    rows and ``per_m_columns`` per million surface columns, 50 % more on each
    retry."""

    def resource(wildcards, input, attempt):
        cube_gib = profile_cube_mb() / 1024
        need = base + per_cube_gib * cube_gib
        need += (
            per_cube_gib_epoch
            * cube_gib
            * trained_fraction()
            * config["train"]["epochs"]
        )
        need += per_m_rows * simulated_rows() / 1e6
        need += per_m_columns * surface_columns() / 1e6
        if per_gib_input:
            need += per_gib_input * input_gib(input)
        return int(need * (1 + 0.5 * (attempt - 1))) + 1

    return resource


def wants_gpu():
    """Whether the config asks for CUDA (train.gpu, or device cuda / cuda:N): then
    train and encode request one GPU (the SLURM executor's ``gpu`` resource)."""
    return int(bool(config["train"]["gpu"]) or str(config["device"]).startswith("cuda"))


def settings(*sections):
    """``<results>/settings/<sections>.json``: the config sections a step reads, as
    the file the step's job reads its configuration from (``vaemap <step>
    --config``) and depends on.

    The file is rewritten, atomically, only when one of its values changes, so
    Snakemake re-runs a rule (and what depends on it) exactly when one of its
    own values changes, by the files' times alone: also where its own metadata
    (``.snakemake/`` of the working directory) is missing, as after results/
    was copied or moved. Each key belongs to the one step that reads it (see
    config/README.md), so a rule lists only its own sections.
    """
    name = "+".join(sections)
    return _settings_file(
        f"{RESULTS}/settings/{name}.json", {key: config[key] for key in sections}
    )


def emulator_settings():
    """settings() of the emulator: its own section and the profiles' number of
    bins (the only profiles key it reads, so a new profiles.nside keeps it)."""
    cfg = {
        "emulator": config["emulator"],
        "profiles": {"bins": config["profiles"]["bins"]},
        "device": config["device"],
    }
    return _settings_file(f"{RESULTS}/settings/emulator.json", cfg)


def physics_settings(wildcards):
    """``<results>/settings/physics.json``: the fingerprint of vaemap's thermal and
    instrument models and the emulator's layout, an input of the emulator: what
    it learned changes when they do, so it is re-trained then (and only then).
    An input function: only a DAG with the emulator computes the fingerprint."""
    from vaemap.products import EMULATOR_FORMAT
    from vaemap.thermal import source_fingerprint

    return _settings_file(
        f"{RESULTS}/settings/physics.json",
        {"thermal": source_fingerprint(), "emulator_format": EMULATOR_FORMAT},
    )


def _settings_file(path, cfg):
    text = json.dumps(cfg, sort_keys=True, indent=1) + "\n"
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return path
    except OSError:
        pass  # not written yet, or unreadable: write it
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def sweep_settings(*sections):
    """settings() of a sweep model: its values in place (``model.beta``,
    ``model.latent_dim``, the top-level ``seed``), so a sweep model re-runs only
    when its own settings change (the β = 0 autoencoder does not depend on the
    main model's β)."""

    def settings_of(wildcards):
        cfg = {name: config[name] for name in sections}
        for item in wildcards.variant.split(","):
            param, value = item.split("=")
            value = json.loads(value)
            if param == "seed":
                cfg["seed"] = value
            else:
                cfg["model"] = {**cfg["model"], param: value}
            # beta = 0 is the plain autoencoder: no total-correlation term either
            if param == "beta" and value == 0:
                cfg["model"]["tc_weight"] = 0.0
        name = "+".join(sections)
        return _settings_file(
            f"{RESULTS}/settings/sweep/{wildcards.variant}/{name}.json", cfg
        )

    return settings_of


def rdr_tables():
    """The RDR tables to ingest: the simulated ones, or the configured real files."""
    if config["data"]["source"] == "simulate":
        names = simulated_rdr_names(config["simulate"])
        return [f"{RESULTS}/simulate/rdr/{name}" for name in names]
    paths = sorted(
        {f for pattern in config["data"]["rdr_files"] for f in glob.glob(pattern)}
    )
    if not paths:
        raise WorkflowError(
            f"data.rdr_files: no file matches {config['data']['rdr_files']}"
        )
    return paths


def ingest_batches(paths):
    """Tables grouped into ingest jobs: {batch name: [tables]}.

    With ingest.batch_by: day, tables named as the archive names them
    (yyyymmddhhmm_RDR..., or hourly yyyymmddhh_RDR...) are grouped by their
    day, so a new day of data is a new batch and leaves the others untouched;
    other tables, and all with batch_by: count, go tables_per_batch at a time
    in name order.
    """
    per_batch = config["ingest"]["tables_per_batch"]
    batches, others = {}, []
    for path in paths:
        dated = re.match(r"(\d{8})\d{2}(\d{2})?_rdr", os.path.basename(path), re.I)
        if config["ingest"]["batch_by"] == "day" and dated:
            batches.setdefault(dated.group(1), []).append(path)
        else:
            others.append(path)
    for start in range(0, len(others), per_batch):
        batches[f"tables{start // per_batch:06d}"] = others[start : start + per_batch]
    return batches


RDR_BATCHES = ingest_batches(rdr_tables())


def truth_input(wildcards):
    """Ground truth for evaluate, when the data are simulated."""
    if config["data"]["source"] == "simulate":
        return {"truth": f"{RESULTS}/simulate/truth.h5"}
    return {}


def truth_flag(wildcards, input):
    """The --truth option of `vaemap evaluate`, when the rule has a truth input, as
    a list of arguments, each quoted in the shell line (a path is data, never shell)."""
    return ["--truth", input.truth] if "truth" in input.keys() else []


def emulator_input(wildcards):
    """The thermal model's emulator, for train when the decoder is the physics one."""
    if config["model"]["decoder"] == "physics":
        return {"emulator": f"{RESULTS}/emulator/emulator.pt"}
    return {}


def emulator_flag(wildcards, input):
    """The --emulator option of `vaemap train`, when the rule has an emulator input."""
    return ["--emulator", input.emulator] if "emulator" in input.keys() else []


def tile_flag(step):
    """The --tile option of a tiled job of `step` (profiles or encode), as arguments."""
    return lambda wildcards: [
        "--tile",
        f"{config[step]['tile_nside']}/{wildcards.tile}",
    ]


def tiles(step):
    """Every NESTED tile index of a tiled `step` (12 tile_nside² of them)."""
    return range(12 * config[step]["tile_nside"] ** 2)


def if_truth(path):
    """An output that exists only when there is ground truth (simulated data)."""
    return [path] if config["data"]["source"] == "simulate" else []


def report_if_truth(path, **kwargs):
    """A report() output that exists only when there is ground truth."""
    return [report(p, **kwargs) for p in if_truth(path)]


def sweep_labels():
    """Every sweep model as its directory name, in config order: the main model
    re-trained with each extra seed (``seed=S``), then each variant of
    sweep.beta / sweep.latent_dim with the main seed (``beta=0``) and with each
    extra seed (``beta=0,seed=S``), so every method is trained with the same
    seeds and summarised as mean ± sd."""
    seeds = [f"seed={seed}" for seed in config["sweep"]["seed"]]
    variants = [
        f"{param}={value}"
        for param in ("beta", "latent_dim")
        for value in config["sweep"][param]
    ]
    return seeds + [
        f"{variant},{seed}" if seed else variant
        for variant in variants
        for seed in ["", *seeds]
    ]


def main_label():
    """The main model's column in the results table."""
    model = config["model"]
    return f"VAE (β = {model['beta']:g}, γ_TC = {model['tc_weight']:g})"


def sweep_metrics():
    return [f"{RESULTS}/sweep/{label}/metrics.json" for label in sweep_labels()]


def final_outputs():
    # The model and the latents are products too: named here, a job that
    # failed after removing them cannot leave a hole Snakemake does not see.
    outputs = [
        *expand(f"{RESULTS}/maps/{{product}}.fits", product=PRODUCTS),
        # (the maps rule's own outputs: with maps.per_product it makes only these)
        f"{RESULTS}/maps/anomalies.ecsv",
        f"{RESULTS}/evaluate/metrics.json",
        f"{RESULTS}/model/model.pt",
        f"{RESULTS}/latents.h5",
    ]
    return outputs


def take_results_lock():
    """Refuse to start while another run (from any checkout) holds RESULTS."""
    try:
        locks.acquire(RESULTS)
    except locks.ResultsLocked as exc:
        raise WorkflowError(str(exc)) from None


def give_back_results_lock():
    locks.release(RESULTS)


# What every maps job reads, and what the map as a whole gives besides each
# product's files: the anomaly catalogue and the figures (maps.smk).
MAPS_INPUT = {
    "latents": f"{RESULTS}/latents.h5",
    "profiles": f"{RESULTS}/profiles.h5",
    "model": f"{RESULTS}/model/model.pt",
    "settings": settings("maps"),
}
MAPS_EXTRAS = {
    "catalogue": report(
        f"{RESULTS}/maps/anomalies.ecsv",
        category="Anomalies",
        caption="../report/anomalies.rst",
    ),
    "anomaly_profiles": report(
        f"{RESULTS}/maps/anomaly_profiles.png",
        category="Anomalies",
        caption="../report/anomaly_profiles.rst",
    ),
    "traversal": report(
        f"{RESULTS}/maps/latent_traversal.png",
        category="Latents",
        caption="../report/traversal.rst",
    ),
}
