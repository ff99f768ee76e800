"""vaemap: radiometer time series to HEALPix map products with a convolutional β-VAE.

Each pipeline step is one module with a ``run(...)`` function (``simulate``,
``ingest``, ``profiles``, ``train``, ``encode``, ``maps``, ``evaluate``); the
command line (``vaemap <step>``) and the Snakemake rules are thin wrappers over
those functions.  Steps communicate only through files whose formats are
defined once, in :mod:`vaemap.products` (see docs/architecture.md).
"""

__version__ = "0.2.0"
