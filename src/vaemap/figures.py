"""Figure set-up and saving, shared by every step that draws.

Every figure is drawn with the non-interactive Agg backend (steps run on
headless cluster nodes) and saved atomically, so a killed job never leaves a
half-written PNG under the final name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaemap.io import atomic_path

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: steps
    that draw nothing never pay for matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Save ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(fig)
