"""The ``vaemap`` command line: one subcommand per pipeline step.

Each subcommand is a thin wrapper: it loads and validates the configuration
(``--config`` file, ``--config-json`` from Snakemake, ``--set key=value``
overrides), calls the step's ``run`` function and prints a summary (JSON with
``--json``).  Errors are reported on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vaemap import __version__
from vaemap.config import ConfigError, load_config

__all__ = ["main"]

log = logging.getLogger("vaemap")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration and output")
    group.add_argument("--config", metavar="YAML", help="configuration file (default: the "
                       "schema defaults, i.e. the demo configuration)")
    group.add_argument("--config-json", metavar="JSON", help="JSON object merged over the "
                       "configuration (used by the Snakemake rules)")
    group.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append",
                       default=[], help="override one key, e.g. --set model.beta=0.5 "
                       "(repeatable; values parsed as YAML)")
    group.add_argument("--json", action="store_true", help="print the summary as one JSON "
                       "object on stdout")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output (-vv for debug)")
    group.add_argument("-q", "--quiet", action="count", default=0,
                       help="less log output (warnings and errors only)")


def _step_simulate(args, cfg):
    from vaemap import simulate

    return simulate.run(args.outdir, cfg, workers=args.threads)


def _step_ingest(args, cfg):
    from vaemap import ingest

    return ingest.run(args.inputs, args.output, cfg)


def _step_merge(args, cfg):
    from vaemap import ingest

    return ingest.merge(args.parts, args.output, cfg, tile=args.tile)


def _step_profiles(args, cfg):
    from vaemap import profiles

    return profiles.run(args.samples, args.output, cfg, tile=args.tile)


def _step_merge_profiles(args, cfg):
    from vaemap import profiles

    return profiles.merge(args.parts, args.output, cfg)


def _step_emulator(args, cfg):
    from vaemap import emulator

    return emulator.run(args.output, cfg, accuracy_json=args.accuracy, threads=args.threads)


def _step_train(args, cfg):
    from vaemap import train

    return train.run(args.profiles, args.output, cfg, metrics_csv=args.metrics,
                     curve_png=args.curve, sigma_png=args.sigma, resume=args.resume,
                     progress=not args.no_progress, emulator=args.emulator)


def _step_encode(args, cfg):
    from vaemap import encode

    return encode.run(args.profiles, args.model, args.output, cfg, tile=args.tile)


def _step_merge_latents(args, cfg):
    from vaemap import encode

    return encode.merge(args.parts, args.output, cfg)


def _step_maps(args, cfg):
    from vaemap import maps

    return maps.run(args.latents, args.profiles, args.model, args.outdir, cfg,
                    threads=args.threads, products=args.products,
                    parts=tuple(args.parts or maps.MAP_PARTS))


def _step_viewer(args, cfg):
    from vaemap import hips

    page = hips.write_viewer_for(args.hips_root, aladin_js=args.aladin_js, title=args.title)
    return {"page": str(page), "serve": f"python -m http.server -d {args.hips_root} 8000"}


def _step_evaluate(args, cfg):
    from vaemap import evaluate

    return evaluate.run(args.latents, args.truth, args.outdir, cfg, profiles=args.profiles,
                        model=args.model, probes=not args.no_probes)


def _step_summarize(args, cfg):
    from vaemap import tables

    result = tables.summarize(args.metrics, args.labels, args.output, args.markdown, args.csv,
                                main_label=args.main_label)
    return {"methods": {k: v["runs"] for k, v in result["methods"].items()},
            "output": args.output}


def _step_readme_table(args, cfg):
    from vaemap import tables

    channels = []
    for item in args.channels:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            raise ValueError(f"--channels {item!r}: expected LABEL=SUMMARY.json")
        channels.append((label, path))
    current = tables.update_readme(args.summary, args.readme, check=args.check,
                                   channels=channels)
    if args.check and not current:
        raise ValueError(f"{args.readme}: the results block differs from {args.summary}; "
                         f"run `vaemap readme-table {args.summary} --readme {args.readme}`")
    return {"readme": args.readme, "up_to_date": current}


def _tile_option(p: argparse.ArgumentParser, merge: str) -> None:
    p.add_argument("--tile", metavar="NSIDE/INDEX",
                   help=f"process only this NESTED tile (e.g. 2/17) into a part for "
                        f"`vaemap {merge}`")


def _merge_args(product: str) -> Callable[[argparse.ArgumentParser], None]:
    """Arguments of a `merge-...` subcommand joining tile parts into ``product``."""
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("parts", nargs="+", metavar="PART", help="tile parts (any order)")
        p.add_argument("--output", required=True, help=f"{product} to write")
    return add


def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outdir", required=True, help="output directory")
    p.add_argument("--threads", type=int, default=1,
                   help="processes solving the thermal model side by side (default 1)")


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE",
                   help="RDR tables: .TAB/.csv/.txt, gzipped (.gz) or zipped as the PDS "
                        "archive publishes them (_rdr.zip, with its .lbl label beside it)")
    p.add_argument("--output", required=True, help="samples.h5 to write")


def _merge_samples_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", nargs="+", metavar="SAMPLES", help="samples.h5 files to merge")
    p.add_argument("--output", required=True, help="merged samples.h5 to write")
    p.add_argument("--tile", metavar="NSIDE/INDEX",
                   help="merge only this NESTED tile's rows (e.g. 2/17) into a samples part "
                        "for `vaemap profiles --tile`")


def _profiles_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("samples", help="samples.h5")
    p.add_argument("--output", required=True, help="profiles.h5 to write")
    _tile_option(p, "merge-profiles")


def _emulator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="emulator.pt to write")
    p.add_argument("--accuracy", help="accuracy.json to write (errors against the solver)")
    p.add_argument("--threads", type=int, default=1,
                   help="processes solving the thermal model side by side, then torch "
                        "threads training (default 1)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("profiles", help="profiles.h5")
    p.add_argument("--output", required=True, help="model.pt to write")
    p.add_argument("--metrics", help="per-epoch metrics CSV to write")
    p.add_argument("--curve", help="loss-curve PNG to write")
    p.add_argument("--sigma", help="PNG of the likelihood's σ per local-time bin to write")
    p.add_argument("--emulator", help="emulator.pt of the thermal model (model.decoder: "
                                      "physics; vaemap emulator writes it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT.ckpt left by an interrupted run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _encode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("profiles", help="profiles.h5")
    p.add_argument("model", help="model.pt")
    p.add_argument("--output", required=True, help="latents.h5 to write")
    _tile_option(p, "merge-latents")


def _maps_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("latents", help="latents.h5")
    p.add_argument("--profiles", required=True, help="profiles.h5 (for the anomaly figure)")
    p.add_argument("--model", required=True, help="model.pt (for the latent traversal)")
    p.add_argument("--threads", type=int, default=1, help="figures drawn in parallel")
    p.add_argument("--outdir", required=True, help="output directory")
    p.add_argument("--products", nargs="*", metavar="NAME",
                   help="only these map products (default: every one; none: only the "
                        "catalogue and figures, with --parts extras)")
    p.add_argument("--parts", nargs="+", choices=("files", "hips", "extras"),
                   help="what to write: each product's files (FITS, HealSparse, GeoTIFF, "
                        "PNG), its HiPS tile set, the catalogue and figures (default all)")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("latents", help="latents.h5")
    p.add_argument("--truth", help="truth.h5 from simulate (omit for real data)")
    p.add_argument("--profiles", help="profiles.h5, with --model: adds the PCA and ICA "
                                      "baselines and the supervised probes")
    p.add_argument("--model", help="model.pt (its normalisation is used for the baseline)")
    p.add_argument("--no-probes", action="store_true",
                   help="skip the supervised probes (a sweep computes them once, for the "
                        "main model)")
    p.add_argument("--outdir", required=True, help="output directory")


def _summarize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("metrics", nargs="+", help="metrics.json files")
    p.add_argument("--labels", nargs="+", required=True,
                   help="one label per file: main, seed=S, beta=0, beta=0,seed=S, ...")
    p.add_argument("--output", required=True, help="JSON to write")
    p.add_argument("--markdown", help="Markdown table to write")
    p.add_argument("--csv", help="CSV (one row per run) to write")
    p.add_argument("--main-label", default="VAE", help="name of the main model's column")


def _viewer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("hips_root", help="the maps' hips/ directory (one HiPS per product)")
    p.add_argument("--aladin-js", default=str(Path(__file__).resolve().parents[2] / "viewer"
                                              / "node_modules" / "aladin-lite" / "dist"
                                              / "aladin.js"),
                   help="Aladin Lite's aladin.js (default: the one `npm ci --prefix viewer` "
                        "installs in this checkout)")
    p.add_argument("--title", default="vaemap maps", help="the page's title")


def _readme_table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("summary", help="metrics.json written by `vaemap summarize`")
    p.add_argument("--readme", default="README.md", help="README to update (README.md)")
    p.add_argument("--channels", nargs="+", default=[], metavar="LABEL=SUMMARY",
                   help="also write the channels block (vaemap:channels markers): one "
                        "summarize JSON per channel set, e.g. '7=a.json' '1-9=b.json'")
    p.add_argument("--check", action="store_true",
                   help="only check; exit 1 when the README's block differs")


def _merge_help(step: str, product: str, note: str = "") -> str:
    return f"Combine the tile parts of `vaemap {step} --tile` into {product}{note}."


#: Every subcommand, in the order of the workflow: name, handler, arguments, help.
SUBCOMMANDS: tuple[tuple[str, Callable, Callable[[argparse.ArgumentParser], None], str],
                   ...] = (
    ("simulate", _step_simulate, _simulate_args,
     "Simulate a synthetic Moon survey: Diviner RDR tables (OUTDIR/rdr/), ground truth "
     "truth.h5 and truth_*.fits."),
    ("ingest", _step_ingest, _ingest_args,
     "Quality-filter RDR tables into a HEALPix-indexed, pixel-sorted samples.h5 with "
     "per-reason rejection counts."),
    ("merge", _step_merge, _merge_samples_args,
     "Merge pixel-sorted samples.h5 files (e.g. one per RDR table) into one, summing "
     "rejection counts and dropping duplicates."),
    ("profiles", _step_profiles, _profiles_args,
     "Fold samples on local time into per-pixel diurnal profiles (profiles.h5)."),
    ("merge-profiles", _step_merge_profiles, _merge_args("profiles.h5"),
     _merge_help("profiles", "profiles.h5")),
    ("emulator", _step_emulator, _emulator_args,
     "Solve the thermal model for columns over the physical parameter ranges and train "
     "its emulator (emulator.pt) for the physics decoder; report its accuracy against "
     "the solver."),
    ("train", _step_train, _train_args, "Train the convolutional β-VAE (model.pt)."),
    ("encode", _step_encode, _encode_args,
     "Encode every profile: latents, reconstruction error and anomaly score (latents.h5)."),
    ("merge-latents", _step_merge_latents, _merge_args("latents.h5"),
     _merge_help("encode", "latents.h5", " and score the anomalies over all pixels")),
    ("maps", _step_maps, _maps_args,
     "Write HEALPix FITS maps and PNG renderings of every product, the anomaly catalogue "
     "(ECSV) and the latent-traversal figure."),
    ("evaluate", _step_evaluate, _evaluate_args,
     "Score latents and anomaly maps against ground truth (when simulated) and report KL, "
     "active units, reconstruction statistics."),
    ("summarize", _step_summarize, _summarize_args,
     "Aggregate evaluate metrics.json files of several runs (training seeds, sweep "
     "variants) into the headline table: each method's metrics as mean ± sd over its "
     "seeds."),
    ("viewer", _step_viewer, _viewer_args,
     "Write an Aladin Lite page (index.html) beside the HiPS tile sets that `vaemap maps` "
     "wrote; serve it with python -m http.server."),
    ("readme-table", _step_readme_table, _readme_table_args,
     "Write the results block of README.md from a summarize JSON (between its "
     "vaemap:metrics markers), or --check it."),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vaemap",
        description="Radiometer time series to HEALPix map products with a convolutional "
                    "β-VAE (Diviner, Moseley et al. 2020). Each subcommand runs one step.")
    parser.add_argument("--version", action="version", version=f"vaemap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")
    for name, func, add_arguments, help_text in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        add_arguments(p)
        _common(p)
    return parser


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("healpy", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level))


def main(argv: Sequence[str] | None = None, *, hard_exit: bool = False) -> int:
    """Entry point of the ``vaemap`` console script; returns the exit status.

    With ``hard_exit`` (the console script) a failed command ends the process
    right after reporting: after a failed write (a full disk, say) HDF5 can
    crash while its half-closed objects are freed; the error is reported and
    nothing half-written is left by then.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        cfg = load_config(args.config, overrides=args.overrides, json_text=args.config_json)
        summary: Any = args.func(args, cfg)
    except ConfigError as exc:
        return _fail(f"vaemap {args.command}: {exc}", 2, hard_exit)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        if args.verbose:
            log.exception("failed")
        return _fail(f"vaemap {args.command}: error: {exc}", 1, hard_exit)
    except Exception as exc:  # a bug of ours: one line still, the traceback with -v
        if args.verbose:
            log.exception("failed")
        return _fail(f"vaemap {args.command}: internal error: {type(exc).__name__}: {exc} "
                     f"(run with -v for the traceback, and please report it)", 3, hard_exit)
    _log_resource_use(args.command)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


def resource_use() -> dict[str, float]:
    """What the kernel counted for this process and its finished children: the
    high-water marks of resident memory (MiB) of this process and of the largest
    child (a worker pool's, say), and the CPU seconds of all of them."""
    import resource

    own, children = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    return {"main_mib": own.ru_maxrss * unit / 2**20,
            "child_mib": children.ru_maxrss * unit / 2**20,
            "cpu_s": sum(u.ru_utime + u.ru_stime for u in (own, children))}


def _log_resource_use(command: str) -> None:
    # Exact figures for benchmarks/scale.py beside Snakemake's sampled ones.
    try:
        use = resource_use()
    except ImportError:  # no getrusage (Windows)
        return
    log.info("%s: peak memory %.0f MiB in the main process, %.0f MiB in the largest child "
             "process; %.1f CPU s", command, use["main_mib"], use["child_mib"], use["cpu_s"])


def _fail(message: str, status: int, hard_exit: bool) -> int:
    print(message, file=sys.stderr)
    if hard_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _unraisable(info: Any) -> None:
    # After a failed write, h5py objects freed during the unwinding cannot close
    # their HDF5 ids and say so on stderr; the failure itself is reported once.
    log.debug("ignored while freeing %r: %s", info.object, info.exc_value)


def _printed_exception(kind: type, value: BaseException, tb: Any) -> None:
    # main() reports every failure itself; what still reaches the excepthook are
    # errors C extensions print while freeing objects (h5py's datasets of a file
    # that a full disk broke), which would bury the one-line message.
    log.debug("ignored: %s: %s", kind.__name__, value)


def run_cli() -> None:
    """The ``vaemap`` console script."""
    sys.unraisablehook = _unraisable
    sys.excepthook = _printed_exception
    sys.exit(main(hard_exit=True))


if __name__ == "__main__":  # pragma: no cover
    run_cli()
