"""Shared file helpers: atomic writes, provenance, checksums, HDF5 datasets."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # registers Blosc & co. with HDF5, so every reader can open our files
import numpy as np

from vaemap import __version__
from vaemap.products import ProductSpec, content_checksum, open_product

__all__ = [
    "COMPRESSIONS",
    "RowWriter",
    "atomic_dir",
    "atomic_path",
    "file_checksum",
    "h5_compression",
    "open_tile_parts",
    "provenance_attrs",
    "read_json_attr",
    "scratch_dir",
    "write_dataset",
]


#: Marks the temporary files of atomic_path (so stale ones can be recognised).
_TEMP_MARK = "vaemap-tmp-"


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _out_of_space(exc: BaseException | None) -> int | None:
    """The errno when ``exc``, or an exception it was raised from or while
    handling, says the disk, a quota or the file-size limit is full (also from
    HDF5, whose errors carry it only in their text, and astropy, which re-raises
    it without the errno), else None."""
    seen = 0
    while exc is not None and seen < 8:
        if getattr(exc, "errno", None) in _FULL:
            return exc.errno
        match = re.search(r"errno = (\d+)", str(exc))
        if match and int(match.group(1)) in _FULL:
            return int(match.group(1))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


#: astropy's report of a short write (its file layer checks every write's length,
#: and a full disk or the file-size limit first shows as one), with no errno
_SHORT_WRITE = re.compile(r"\b(\d+) requested and (\d+) written\b")


def _full_error(path: Path, exc: BaseException, what: str | None = None) -> OSError | None:
    """The one-line error naming ``path`` (or saying ``what`` was written) for a
    write that failed for space, or None."""
    full = _out_of_space(exc)
    if full is not None:
        reason = os.strerror(full)
    elif (short := _SHORT_WRITE.search(str(exc))) is not None:
        full = errno.ENOSPC
        reason = (f"short write ({short.group(2)} of {short.group(1)} bytes): the disk, a "
                  f"quota or the file-size limit is full")
    else:
        return None
    error = OSError(f"cannot write {what or path}: {reason} (in {path.parent}); nothing was "
                    f"written")
    error.errno = full
    return error


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it: set and restore, once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A failed or interrupted step therefore never leaves a half-written product
    under the final name (Snakemake would otherwise take it as complete).
    The temporary file keeps ``path``'s suffix so writers that infer the format
    from the name (matplotlib, astropy) still work. The product gets the
    permissions the user's umask gives a new file (colleagues on a shared file
    system can read ``results/``), and temporaries of the same product that a
    killed run left behind are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else path.suffix
    prefix = f".{path.stem}.{_TEMP_MARK}"
    # Temporaries of this product left by a killed run would lie there forever.
    for stale in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except (OSError, RuntimeError) as exc:  # h5py reports write failures as either
            error = _full_error(path, exc)
            if error is None:
                raise
            raise error from None
        # mkstemp makes the file private (0600); a product is shared like any
        # file the user writes: read-write as the umask allows.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside ``path`` (``.<name>.building``); on success
    replace ``path`` by it as a whole, on failure remove it and leave ``path`` as it
    was. For products that are directories (a HiPS): a run that fails or is killed
    never leaves a half-built one under the final name, and a write that fails for
    space ends in one error naming ``path``, like :func:`atomic_path`."""
    path = Path(path)
    building = path.with_name(f".{path.name}.building")
    shutil.rmtree(building, ignore_errors=True)  # left by a killed run
    building.mkdir(parents=True)
    try:
        try:
            yield building
        except (OSError, RuntimeError) as exc:
            error = _full_error(path, exc)
            if error is None:
                raise
            raise error from None
        if path.exists():
            # not atomic for a directory: the old one goes first, then the new one
            # takes its name (a rename cannot replace a non-empty directory)
            shutil.rmtree(path)
        building.rename(path)
    finally:
        shutil.rmtree(building, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory in ``$TMPDIR`` (node-local scratch on a cluster),
    removed afterwards; a write in it that fails for space ends in one error
    naming the directory and how to move it, instead of a bare "[Errno 28]" (a
    product that names itself, from :func:`atomic_path`, passes unchanged)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            yield Path(tmp)
        except (OSError, RuntimeError) as exc:
            if str(exc).startswith("cannot write "):
                raise
            error = _full_error(Path(tmp) / "scratch", exc, what="a scratch file")
            if error is None:
                raise
            error = OSError(f"{error}; set TMPDIR to a directory with room")
            error.errno = errno.ENOSPC
            raise error from None


@contextlib.contextmanager
def atomic_hdf5(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 product written atomically (see :func:`atomic_path`): yields the
    open file; closes it (flushing what HDF5 still buffers, where a full disk
    often shows) and renames it onto ``path`` on success, removes it on failure.
    The file's ``content_checksum`` attribute is written last
    (:func:`vaemap.products.content_checksum`, read back from what HDF5 stored)."""
    with atomic_path(path) as tmp:
        h5 = h5py.File(tmp, "w")
        try:
            yield h5
            h5.attrs["content_checksum"] = content_checksum(h5)
        except BaseException:
            with contextlib.suppress(OSError, RuntimeError):
                h5.close()  # the error being raised already says what went wrong
            raise
        h5.close()


#: Checksums :func:`file_checksum` computes: xxh3_128 (xxHash, several GB/s, for
#: change detection) or sha256 (cryptographic, about 10x slower).
CHECKSUMS = ("xxh3_128", "sha256")


def file_checksum(path: str | Path, algorithm: str = "xxh3_128", block: int = 1 << 22) -> str:
    """``"<algorithm>:<hex digest>"`` of a file's bytes, read in ``block``-byte
    pieces (bounded memory)."""
    if algorithm == "xxh3_128":
        import xxhash

        digest = xxhash.xxh3_128()
    else:
        digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


def provenance_attrs(config: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, str]:
    """Root attributes every product carries: package version, time, host, config.

    Non-string values are stored as JSON text so that any HDF5 reader can show them.
    """
    attrs: dict[str, Any] = {
        "vaemap_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
    }
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True)
    attrs.update(extra)
    return {k: v if isinstance(v, str | int | float | np.ndarray) else json.dumps(v)
            for k, v in attrs.items()}


def read_json_attr(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Read an attribute written as JSON text by :func:`provenance_attrs`."""
    if key not in attrs:
        return default
    value = attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value


@contextlib.contextmanager
def open_tile_parts(parts: Sequence[str | Path], spec: ProductSpec, *,
                    same: Sequence[str] = (), **expect: Any
                    ) -> Iterator[list[tuple[Path, h5py.File]]]:
    """Open the tile parts of one product for a merge.

    Yields ``(path, file)`` pairs in pixel order (tiles are NESTED ranges, so
    ordering parts by their first pixel orders every pixel). Each part is
    checked against ``spec`` as a tile part by
    :func:`vaemap.products.check_product` (its content checksum included, and
    ``expect``: nside, channels, bins, model weights ... as that function takes
    them), and the root attributes named in ``same`` must agree between all
    parts (the channel list, the model that made them). ProductError or
    ValueError names the file when one is not such a part, differs, or when its
    pixels overlap the previous part's.
    """
    from vaemap.products import ProductError

    with contextlib.ExitStack() as stack:
        opened = [(Path(p), stack.enter_context(open_product(p, spec, part=True, **expect)))
                  for p in parts]
        first_path, first = opened[0] if opened else (None, None)
        for path, h in opened[1:]:
            for key in same:
                mine, theirs = str(h.attrs.get(key)), str(first.attrs.get(key))
                if mine != theirs:
                    raise ProductError(f"{path}: {key} {mine} differs from {first_path}'s "
                                       f"{theirs}")
        opened.sort(key=lambda item: int(item[1]["pix"][0]) if len(item[1]["pix"]) else -1)
        last = -1
        for path, h in opened:
            if len(h["pix"]):
                if int(h["pix"][0]) <= last:
                    raise ValueError(f"{path}: its pixels overlap another part's")
                last = int(h["pix"][-1])
        yield opened


#: Compression names accepted by :func:`h5_compression` (and by the config schema).
COMPRESSIONS = ("blosc-lz4", "blosc-zstd", "gzip", "lzf", "none")


def h5_compression(name: str) -> dict[str, Any]:
    """h5py keyword arguments for a named compression.

    ``blosc-lz4`` / ``blosc-zstd`` use the Blosc filter of hdf5plugin (a
    dependency, so any environment with vaemap reads them; other HDF5 tools
    need the plugin too); ``gzip`` and ``lzf`` are readable by any h5py.
    """
    if name == "blosc-lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if name == "blosc-zstd":
        return dict(hdf5plugin.Blosc(cname="zstd", clevel=3, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "none":
        return {}
    raise ValueError(f"unknown compression {name!r}; expected one of {', '.join(COMPRESSIONS)}")


def write_dataset(
    group: h5py.Group,
    name: str,
    data: np.ndarray,
    *,
    compression: str = "gzip",
    chunk_rows: int = 65536,
    attrs: Mapping[str, Any] | None = None,
) -> h5py.Dataset:
    """Write ``data`` as a chunked, compressed dataset (rows chunked along axis 0)."""
    data = np.asarray(data)
    kwargs = h5_compression(compression) if data.size else {}
    if data.size:
        rows = max(1, min(len(data), chunk_rows))
        kwargs["chunks"] = (rows, *data.shape[1:])
    dset = group.create_dataset(name, data=data, **kwargs)
    for key, value in (attrs or {}).items():
        dset.attrs[key] = value
    return dset


class RowWriter:
    """Appends rows to resizable, chunked, compressed datasets of one group.

    ``fields`` maps dataset name to ``(dtype, row_shape)``; ``units`` gives
    the ``unit`` attribute of some of them. Writers that stream (ingest,
    profiles) use it so that memory never holds more than one block of rows.
    """

    def __init__(self, group: h5py.Group, fields: Mapping[str, tuple[Any, tuple[int, ...]]],
                 *, compression: str = "gzip", chunk_rows: int = 65536,
                 units: Mapping[str, str] | None = None):
        self.rows = 0
        self.dsets: dict[str, h5py.Dataset] = {}
        for name, (dtype, row_shape) in fields.items():
            d = group.create_dataset(name, shape=(0, *row_shape), maxshape=(None, *row_shape),
                                     dtype=dtype, chunks=(chunk_rows, *row_shape),
                                     **h5_compression(compression))
            if units and name in units:
                d.attrs["unit"] = units[name]
            self.dsets[name] = d

    def append(self, data: Mapping[str, np.ndarray]) -> None:
        """Append one block: an array per field, all with the same number of rows."""
        n = len(next(iter(data.values())))
        if n == 0:
            return
        for name, d in self.dsets.items():
            d.resize((self.rows + n, *d.shape[1:]))
            d[self.rows:] = data[name]
        self.rows += n
