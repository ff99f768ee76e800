"""Named architecture presets of the model (plain data: the configuration checks
them without importing torch)."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

#: Named architecture presets. ``moseley2020`` follows the paper's layout:
#: kernel-2 stride-2 layers with ReLU, transposed in the decoder, no
#: conditioning (≈ 17 k parameters at 120 bins: three halvings instead of the
#: paper's seven, as 120 bins are not a power of two).
PRESETS: dict[str, dict[str, Any]] = {
    "small": {},
    "moseley2020": {"width": 32, "depth": 3, "kernel": 3, "n_cond": 0, "layout": "strided",
                    "activation": "relu"},
}
