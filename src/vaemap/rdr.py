"""The Diviner Reduced Data Record (RDR) table format: reading and writing.

As the PDS archive publishes them, RDR tables are ten-minute text tables
``yyyymmddhhmm_RDR.TAB``, shipped zipped (``..._rdr.zip``, one table inside)
with a detached PDS3 ``.lbl`` or PDS4 ``.xml`` label:

* a few preamble lines beginning with ``#``, then the column-header line,
  which itself begins with ``#`` and is padded with spaces so that its commas
  line up with the data's (``#        date,            utc,  ...``); the
  team's internal tables have no preamble and may lack the ``#``;
* fixed-format data lines: fields separated by a comma and spaces, CRLF line
  ends, ``date`` (``"DD-Mon-YYYY"``) and ``utc`` (``"HH:MM:SS.fff"``, a leap
  second may read ``23:59:60.052``) double-quoted and right-justified;
* fill values -9999 (unknown) and -9998 (invalid) in any column, possibly
  wider than the field (``-9999.000`` in the 8-byte ``tb``); off-planet views
  carry fills in ``clat`` .. ``cloctime`` while ``tb`` stays valid;
* tables of 2012-2013 name columns 16-17 ``vert_lat, vert_lon`` instead of
  ``orientlat, orientlon``.

:func:`read_table` streams the needed columns of such a table (plain, ``.gz``
or ``.zip`` read in place) in blocks. When the header's commas line up with
the data (the published layout) each block is parsed by column position,
vectorised, and only the rows of the wanted channels are parsed beyond the
channel column; a row that does not fit the layout (an over-wide fill, say)
is parsed by its delimiters instead, so the result never depends on the
path. Tables of any other comma-separated layout are parsed by pyarrow.
:func:`format_rows` writes the published layout, :func:`write_table` whole
tables in the archive's packaging and :func:`write_label` their PDS3 labels
(the simulator uses them): one home for the columns, formats and fill values.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import itertools
import logging
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

try:  # ISA-L's inflate: 3-4x zlib's speed on the archive's zipped tables
    from isal import igzip as _gzip
    from isal import isal_zlib as _inflate
except ImportError:  # a platform without its wheels: the standard library's
    _gzip, _inflate = gzip, zlib

__all__ = [
    "COLUMN_ALIASES",
    "FILL_THRESHOLD",
    "FLAG_BITS",
    "INVALID",
    "RDR_COLUMNS",
    "REQUIRED_COLUMNS",
    "UNKNOWN",
    "RdrFormatError",
    "check_label",
    "format_rows",
    "header_line",
    "open_table",
    "read_header",
    "read_table",
    "write_label",
    "write_table",
]

log = logging.getLogger(__name__)

#: Column names in the order Diviner writes them.
RDR_COLUMNS: tuple[str, ...] = (
    "date", "utc", "jdate", "orbit", "sundist", "sunlat", "sunlon", "sclk", "sclat",
    "sclon", "scrad", "scalt", "el_cmd", "az_cmd", "af", "orientlat", "orientlon", "c",
    "det", "vlookx", "vlooky", "vlookz", "radiance", "tb", "clat", "clon", "cemis",
    "csunzen", "csunazi", "cloctime", "qca", "qge", "qmi",
)  # fmt: skip

#: Other names of the same columns: the PDS headers of 2012-2013 and the team's tools.
COLUMN_ALIASES: dict[str, str] = {"vert_lat": "orientlat", "vert_lon": "orientlon",
                                  "sundst": "sundist"}

#: Columns ingest needs (matched by name, wherever they stand in the table).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "jdate", "af", "c", "det", "tb", "clat", "clon", "cemis", "cloctime", "qca", "qge", "qmi",
)  # fmt: skip

#: Fill values: unknown and invalid.
UNKNOWN = -9999.0
INVALID = -9998.0
#: Any value at or below the threshold is missing (a fill may be written with
#: more decimals than the field).
FILL_THRESHOLD = INVALID

#: Flag bits of the quality words (the Diviner team's production code), by column.
FLAG_BITS: dict[str, dict[int, str]] = {
    "qca": {0x01: "marker_out_of_bounds", 0x02: "nearest_marker", 0x04: "nearest_marker_oob",
            0x08: "constant_calibration"},
    "qge": {0x01: "reserved_pointing", 0x02: "reserved_ephemeris", 0x04: "tracked_pointing",
            0x08: "tracked_ephemeris", 0x10: "predicted_pointing",
            0x20: "predicted_ephemeris", 0x40: "no_predicted_pointing",
            0x80: "no_predicted_ephemeris"},
    "qmi": {0x01: "reserved", 0x02: "eclipse", 0x04: "turn_on_transient",
            0x08: "abnormal_state", 0x10: "temperature_drift", 0x20: "noise",
            0x40: "channel1_saturation", 0x80: "moving"},
}  # fmt: skip

#: printf formats of the published fixed-format layout (label BYTES; sclk zero-padded).
_FORMATS: dict[str, str] = {
    "date": '"%11s"', "utc": '"%12s"', "jdate": "%17.9f", "orbit": "%5d", "sundist": "%7.5f",
    "sunlat": "%8.5f", "sunlon": "%9.5f", "sclk": "%016.5f", "sclat": "%9.5f",
    "sclon": "%9.5f", "scrad": "%11.5f", "scalt": "%11.5f", "el_cmd": "%7.3f",
    "az_cmd": "%7.3f", "af": "%4d", "orientlat": "%9.5f", "orientlon": "%9.5f", "c": "%1d",
    "det": "%3d", "vlookx": "%9.6f", "vlooky": "%9.6f", "vlookz": "%9.6f",
    "radiance": "%10.4f", "tb": "%8.3f", "clat": "%9.5f", "clon": "%9.5f", "cemis": "%9.5f",
    "csunzen": "%9.5f", "csunazi": "%9.5f", "cloctime": "%8.5f", "qca": "%03d", "qge": "%03d",
    "qmi": "%03d",
}  # fmt: skip
_ROW_FORMAT = ", ".join(_FORMATS[c] for c in RDR_COLUMNS) + "\r\n"

#: Bytes per block of a streamed table (the unit of parsing and of memory).
BLOCK_BYTES = 1 << 23


class RdrFormatError(ValueError):
    """A table that cannot be read as an RDR table; the message names file and line."""


# -- writing --------------------------------------------------------------------------------


def header_line(columns: Sequence[str] = RDR_COLUMNS) -> str:
    """The published column-header line (``#``, names right-justified over their
    fields, CRLF), as wide as the rows :func:`format_rows` writes."""
    widths = [_field_width(c) for c in columns]
    widths[0] -= 1  # the '#' takes the first byte of the first field
    return "#" + ", ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)) + "\r\n"


def _field_width(column: str) -> int:
    """Bytes of ``column``'s field in a published row (its quotes included)."""
    return len(_FORMATS[column] % (_sample(column),))


def _sample(column: str) -> Any:
    return "x" if column in ("date", "utc") else 0


def format_rows(columns: Mapping[str, Sequence[Any]]) -> str:
    """Rows in the published fixed-format layout (CRLF line ends).

    ``columns`` maps every name of :data:`RDR_COLUMNS` to equally long
    sequences (``date`` and ``utc`` strings without quotes). A value whose
    formatted text is wider than its field (a -9999 fill, say) widens that row,
    as in the archive.
    """
    values = [columns[c].tolist() if hasattr(columns[c], "tolist") else list(columns[c])
              for c in RDR_COLUMNS]
    return "".join(_ROW_FORMAT % row for row in zip(*values, strict=True))


# -- opening and the header -----------------------------------------------------------------


def write_table(path: str | Path, batches: Iterable[Mapping[str, Sequence[Any]]],
                preamble: Sequence[str], packaging: str, *, label: bool = False) -> int:
    """Stream column-batches to one RDR table in the published layout (atomically):
    ``#`` preamble lines, the padded ``#`` header, fixed-format CRLF rows; zipped
    (one table inside, as the archive ships it), gzipped or plain. Returns the
    rows written. ``batches`` yield column arrays (:data:`RDR_COLUMNS`), e.g. from
    the simulator, one block at a time (bounded memory). With ``label``, the
    table's detached PDS3 label is written beside it (:func:`write_label`):
    ``_rdr.lbl`` beside ``_rdr.zip`` as in the archive, else the table's name
    with ``.LBL``."""
    from vaemap.io import atomic_path

    path = Path(path)
    rows = 0
    member = path.name.split("_")[0] + "_RDR.TAB" if packaging == "zip" else path.name
    head = "".join(f"# {line}\r\n" for line in preamble) + header_line()
    with atomic_path(path, suffix=".part") as tmp, contextlib.ExitStack() as stack:
        if packaging == "zip":
            archive = stack.enter_context(zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED,
                                                          compresslevel=1))
            raw = stack.enter_context(archive.open(member, "w", force_zip64=True))
        elif packaging == "gzip":
            raw = stack.enter_context(gzip.open(tmp, "wb", compresslevel=1))
            member = path.name.removesuffix(".gz")
        else:
            raw = stack.enter_context(open(tmp, "wb"))
        sink = stack.enter_context(io.TextIOWrapper(raw, encoding="ascii", newline=""))
        sink.write(head)
        for cols in batches:
            sink.write(format_rows(cols))
            rows += len(cols["jdate"])
    if label:
        stem = path.name.split(".")[0]  # as label_path finds it
        write_label(path.with_name(stem + (".lbl" if packaging == "zip" else ".LBL")), member,
                    rows, header_bytes=len(head))
    return rows


def _label_fields() -> list[tuple[str, int, int, str]]:
    """(name, START_BYTE, BYTES, DATA_TYPE) of each column of a published row, as
    the archive's labels give them: a quoted field starts after its quote."""
    fields, position = [], 1
    for name in RDR_COLUMNS:
        width = _field_width(name)
        if _FORMATS[name].startswith('"'):
            fields.append((name, position + 1, width - 2, "CHARACTER"))
        else:
            kind = "ASCII_INTEGER" if _FORMATS[name].endswith("d") else "ASCII_REAL"
            fields.append((name, position, width, kind))
        position += width + 2  # ", " between fields
    return fields


def write_label(path: str | Path, table: str, rows: int, *, header_bytes: int = 0) -> None:
    """A detached PDS3 label of a table written by :func:`write_table` (``table``
    its file name, ``rows`` its data rows, ``header_bytes`` the preamble and
    header before them): the TABLE object's pointer, rows and row bytes, and a
    COLUMN object per field (NAME, DATA_TYPE, START_BYTE, BYTES, the fill
    constants), as the archive's labels give them; :func:`check_label` and
    ingest read it back, and so does a PDS reader (``pdr``, in the tests)."""
    from vaemap.io import atomic_path

    fields = _label_fields()
    row_bytes = len(header_line())  # as wide as a row, CRLF included
    lines = ["PDS_VERSION_ID = PDS3", "/* Diviner RDR table, SIMULATED by vaemap */",
             "RECORD_TYPE = STREAM", f'^TABLE = ("{table}", {header_bytes + 1} <BYTES>)',
             "OBJECT = TABLE", "  INTERCHANGE_FORMAT = ASCII", f"  ROWS = {rows}",
             f"  ROW_BYTES = {row_bytes}", f"  COLUMNS = {len(fields)}"]
    for number, (name, start, width, kind) in enumerate(fields, start=1):
        lines += ["  OBJECT = COLUMN", f"    NAME = {name.upper()}",
                  f"    COLUMN_NUMBER = {number}", f"    DATA_TYPE = {kind}",
                  f"    START_BYTE = {start}", f"    BYTES = {width}",
                  f"    UNKNOWN_CONSTANT = {UNKNOWN:.0f}",
                  f"    INVALID_CONSTANT = {INVALID:.0f}", "  END_OBJECT = COLUMN"]
    lines += ["END_OBJECT = TABLE", "END"]
    with atomic_path(path) as tmp:
        tmp.write_text("\r\n".join(lines) + "\r\n")


class _ZipMember(io.RawIOBase):
    """The one deflated table of a zip archive, inflated as it is read.

    The standard library's ``ZipFile.open`` inflates with zlib; inflating takes
    most of an ingest's CPU time, so the member's raw deflate stream is read
    directly (its offset from the local file header) and inflated by
    :data:`_inflate` (ISA-L when installed). The CRC-32 and the size the
    central directory records are checked at the end, as ``zipfile`` does.
    """

    def __init__(self, path: Path, info: zipfile.ZipInfo, chunk: int = 1 << 16,
                 piece: int = 1 << 20):
        self._name = f"{path}: {info.filename}"
        self._file = open(path, "rb")  # closed by close()
        self._file.seek(info.header_offset)
        local = self._file.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            self._file.close()
            raise zipfile.BadZipFile(f"{info.filename}: bad local file header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        self._file.seek(name_len + extra_len, io.SEEK_CUR)
        self._left = info.compress_size
        self._expect = (info.CRC, info.file_size)
        self._inflater = _inflate.decompressobj(-15)  # raw deflate, no zlib header
        self._chunk, self._piece = chunk, piece
        self._out = b""
        self._at = 0
        self._crc = 0
        self._size = 0

    def readable(self) -> bool:
        return True

    def _more(self, want: int) -> bytes:
        tail = self._inflater.unconsumed_tail
        if not tail and self._left:
            tail = self._file.read(min(self._chunk, self._left))
            if not tail:
                raise EOFError("the compressed data end early")
            self._left -= len(tail)
        if tail:
            return self._inflater.decompress(tail, want)
        if not self._inflater.eof:
            out = self._inflater.flush()
            if not out and not self._inflater.eof:
                raise EOFError("the compressed data end early")
            return out
        return b""

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` (short only at the end of the member). The data are
        inflated a piece at a time: pieces of a MiB reuse the allocator's memory,
        where one of the buffer's size would fault in fresh pages each time."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if self._at == len(self._out):
                self._out, self._at = self._more(self._piece), 0
                if not self._out:
                    if (self._crc, self._size) != self._expect:
                        raise zipfile.BadZipFile(f"{self._name}: CRC-32 or size differs "
                                                 f"from the archive's directory")
                    break
                self._crc = _inflate.crc32(self._out, self._crc)
                self._size += len(self._out)
            n = min(len(view) - filled, len(self._out) - self._at)
            view[filled:filled + n] = memoryview(self._out)[self._at:self._at + n]
            self._at += n
            filled += n
        return filled

    def close(self) -> None:
        self._file.close()
        super().close()


@contextlib.contextmanager
def open_table(path: str | Path) -> Iterator[io.BufferedIOBase]:
    """A binary stream of a table: plain, gzip (``.gz``) or zip (``.zip`` holding
    one table), decompressed as it is read (by ISA-L when installed), never
    unpacked to disk."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".zip":
            try:
                archive = zipfile.ZipFile(path)
            except zipfile.BadZipFile as exc:
                raise RdrFormatError(f"{path}: not a zip archive ({exc})") from None
            with archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                tables = [m for m in members
                          if m.filename.lower().endswith((".tab", ".csv", ".txt"))]
                if len(tables) != 1:
                    raise RdrFormatError(f"{path}: expected one table (.TAB) in the zip "
                                         f"archive, found {[m.filename for m in members]}")
                info = tables[0]
                deflated = info.compress_type == zipfile.ZIP_DEFLATED and not info.flag_bits & 1
                # stored or other methods (and encryption, refused there): zipfile's
                with (_ZipMember(path, info) if deflated else archive.open(info)) as stream:
                    yield stream
        elif suffix == ".gz":
            with _gzip.open(path, "rb") as stream:
                yield stream
        else:
            with open(path, "rb") as stream:
                yield stream
    except (EOFError, zlib.error, _inflate.error, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        # a torn download or a failed copy: name the file, not the decompressor
        raise RdrFormatError(f"{path}: truncated or corrupt {suffix or 'table'} file, "
                             f"cannot be decompressed ({type(exc).__name__}: "
                             f"{str(exc) or 'ends early'})") from None


def normalise_name(name: str) -> str:
    """A column name as vaemap knows it: ``#``, quotes and blanks stripped,
    lower case, aliases of :data:`COLUMN_ALIASES` resolved."""
    name = name.strip().lstrip("#").strip().strip('"').strip().lower()
    return COLUMN_ALIASES.get(name, name)


def read_header(stream: io.BufferedIOBase, path: str | Path, max_lines: int = 1000
                ) -> tuple[int, bytes, list[str]]:
    """Read up to and including the column-header line.

    Preamble lines beginning with ``#`` (and blank lines) are skipped; the
    header is the first line that, with ``#`` stripped, names the ``tb`` and
    ``clat`` columns. Returns ``(lines read, the header line as read, the
    normalised column names)``.
    """
    for number in range(1, max_lines + 1):
        raw = stream.readline()
        if not raw:
            break
        text = raw.decode("latin-1")
        names = [normalise_name(n) for n in text.rstrip("\r\n").split(",")]
        if "tb" in names and "clat" in names:
            return number, raw, names
        if text.strip() and not text.lstrip().startswith(("#", "/*", ";")):
            break  # a data line before any header
    raise RdrFormatError(f"{path}: no RDR header line (a line naming the columns, e.g. "
                         f"{', '.join(RDR_COLUMNS[:4])}, ...) before the data")


_LABEL_NAME = re.compile(r"^\s*NAME\s*=\s*\"?([A-Za-z0-9_]+)\"?", re.M)


def label_path(path: str | Path) -> Path | None:
    """The PDS3 ``.lbl`` or PDS4 ``.xml`` label beside a table, if there is one
    (``201204090110_RDR.TAB``, ``..._rdr.zip`` -> ``..._rdr.lbl``/``.xml``)."""
    path = Path(path)
    stem = path.name.split(".")[0].lower()
    for candidate in path.parent.glob(f"{path.name.split('.')[0][:12]}*"):
        if candidate.name.split(".")[0].lower() == stem and \
                candidate.suffix.lower() in (".lbl", ".xml"):
            return candidate
    return None


def label_columns(label: Path) -> list[str]:
    """Column names a PDS3 (``NAME =`` in ``COLUMN`` objects) or PDS4
    (``<name>`` of each ``Field_*``) label declares, normalised."""
    text = label.read_text(errors="replace")
    if label.suffix.lower() == ".xml":
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise RdrFormatError(f"{label}: not a readable PDS4 label ({exc})") from None
        names = []
        for element in root.iter():
            if element.tag.split("}")[-1].startswith("Field_"):
                for child in element:
                    if child.tag.split("}")[-1] == "name" and child.text:
                        names.append(child.text)
        return [normalise_name(n) for n in names]
    columns = []
    for block in re.split(r"^\s*OBJECT\s*=\s*COLUMN\s*$", text, flags=re.M)[1:]:
        match = _LABEL_NAME.search(block)
        if match:
            columns.append(normalise_name(match.group(1)))
    return columns


def label_rows(label: Path) -> int | None:
    """The number of rows a PDS3 (``ROWS =`` of the TABLE object) or PDS4
    (``<records>``) label declares, or None when it declares none."""
    text = label.read_text(errors="replace")
    if label.suffix.lower() == ".xml":
        match = re.search(r"<(?:\w+:)?records>\s*(\d+)\s*</", text)
    else:
        match = re.search(r"^\s*ROWS\s*=\s*(\d+)\s*$", text, flags=re.M)
    return int(match.group(1)) if match else None


def check_label(path: str | Path, names: Sequence[str]) -> Path | None:
    """Compare a table's header with the label beside it; RdrFormatError names
    both files and the first difference. Returns the label checked (None: no
    label, or one that lists no columns, e.g. a PDS3 label pointing to a .FMT)."""
    label = label_path(path)
    if label is None:
        return None
    declared = label_columns(label)
    if not declared:
        log.debug("%s: lists no columns; header not checked", label)
        return None
    if list(declared) != list(names):
        diff = next((i for i, (a, b) in enumerate(zip(declared, names, strict=False))
                     if a != b), min(len(declared), len(names)))
        raise RdrFormatError(f"{path}: its header does not match the label {label}: column "
                             f"{diff + 1} is {names[diff] if diff < len(names) else 'missing'}"
                             f", the label says "
                             f"{declared[diff] if diff < len(declared) else 'nothing'} "
                             f"({len(names)} vs {len(declared)} columns)")
    return label


# -- parsing --------------------------------------------------------------------------------


class _FixedLayout:
    """Column positions of a published table, from its padded header line."""

    def __init__(self, header: bytes, names: Sequence[str]):
        line = header.rstrip(b"\r\n")
        commas = [i for i, b in enumerate(line) if b == 44]
        self.usable = len(commas) == len(names) - 1 and len(line) > 2 * len(names)
        self.width = len(line)
        self.commas = np.asarray(commas, dtype=np.int64)
        starts = [0, *(c + 1 for c in commas)]
        ends = [*commas, len(line)]
        self.fields = {name: (s, e) for name, s, e in zip(names, starts, ends, strict=True)}
        # commas that delimit every field up to and including the channel `c`
        self.commas_to_c = names.index("c") + 1 if "c" in names else len(commas)


def _parse_fields(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numbers of right-justified ASCII fields, vectorised over rows.

    ``columns`` is (w, ...) bytes: the w characters of the fields, one slab of
    the array per character position, so every step is one pass over
    contiguous bytes (``(w, n)`` for one field of n rows, ``(w, k, n)`` for k
    fields padded on the left with blanks). Returns (float64 values, ok). ``ok`` is False where the
    text is not blanks, then an optional '-', then digits with at most one
    '.' (the caller re-parses those rows with ``float()``). The value is the
    exact integer mantissa divided by a power of ten: the correctly rounded
    double, as ``float(text)`` gives.
    """
    w, shape = columns.shape[0], columns.shape[1:]
    mantissa = np.zeros(shape, dtype=np.int64)
    decimals = np.zeros(shape, dtype=np.int64)
    digits = np.zeros(shape, dtype=np.int64)
    started = np.zeros(shape, dtype=bool)
    seen_dot = np.zeros(shape, dtype=bool)
    negative = np.zeros(shape, dtype=bool)
    bad = np.zeros(shape, dtype=bool)
    for j in range(w):
        b = columns[j]
        value = b - np.uint8(48)  # wraps below '0': a digit is value <= 9
        is_digit = value <= 9
        is_dot = b == 46
        is_blank = b == 32
        is_minus = (b == 45) & ~started
        bad |= ~(is_digit | is_dot | is_blank | is_minus)
        bad |= started & is_blank  # blanks only lead
        bad |= is_dot & seen_dot
        mantissa = np.where(is_digit, mantissa * 10 + value, mantissa)
        decimals += is_digit & seen_dot
        digits += is_digit
        negative |= is_minus
        seen_dot |= is_dot
        started |= ~is_blank
    ok = ~bad & (digits > 0) & (digits <= 18) & (mantissa < (1 << 53))
    values = mantissa / 10.0 ** decimals
    return np.where(negative, -values, values), ok


def _all_commas(grid: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of ``grid`` (n, width) with a comma at every one of ``positions``.

    The positions are padded to a multiple of eight (repeating the first), so
    each row's matches can be tested as whole 64-bit words, not byte by byte.
    """
    if positions.size == 0:
        return np.ones(grid.shape[0], dtype=bool)
    padded = np.concatenate([positions, np.full(-positions.size % 8, positions[0])])
    hits = np.ascontiguousarray(grid[:, padded] == 44).view(np.uint64)
    return (hits == np.uint64(0x0101010101010101)).all(axis=1)


def _parse_line(text: str, n_fields: int, needed: Mapping[str, int]
                ) -> tuple[dict[str, float], str | None]:
    """One line parsed by its delimiters (``needed`` maps each wanted column to its
    field index); returns (values, problem or None)."""
    parts = text.split(",")
    if len(parts) != n_fields:
        return {}, f"expected {n_fields} fields, found {len(parts)}"
    values = {}
    for name, index in needed.items():
        item = parts[index].strip()
        try:
            values[name] = float(item) if item else np.nan
        except ValueError:
            return {}, f"column {name}: expected a number, found {item!r}"
    return values, None


def read_table(path: str | Path, needed: Sequence[str] = REQUIRED_COLUMNS, *,
               channels: Sequence[int] | None = None, on_malformed: str = "error",
               stats: dict[str, int] | None = None, block_bytes: int = BLOCK_BYTES,
               threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stream the ``needed`` columns of an RDR table, one block of rows at a time.

    Yields dicts of float64 arrays keyed by ``needed`` for the rows that were
    parsed, plus ``malformed_mask`` (rows whose values could not be read; only
    with ``on_malformed="skip"``). With ``channels``, rows of other channels
    are dropped as they are parsed, before their other columns are read, and
    counted in ``stats["channel"]``; rows with the wrong number of fields are
    counted in ``stats["malformed"]`` (with ``skip``). ``stats["rows"]`` is
    every data row read, ``stats["by_position"]`` those parsed by column
    position (the rest were parsed by their delimiters). ``threads`` parse
    blocks while the calling thread reads the next; by default two for a plain
    table and one for a compressed one, whose reading thread is kept busy
    inflating (a second parser would only contend with it for two cores:
    measured, it costs 10-15 % more CPU time for no shorter wall time).

    Raises
    ------
    RdrFormatError
        An empty (0-byte) or truncated file, no header, a missing required
        column, a header that disagrees with the
        label beside the table, or (``on_malformed="error"``) a row with the
        wrong number of fields or a value that is not a number: the message
        names the file, the line and what was expected.
    """
    path = Path(path)
    stats = stats if stats is not None else {}
    for key in ("rows", "malformed", "channel"):
        stats.setdefault(key, 0)
    if path.stat().st_size == 0:  # a failed download, not an empty day
        raise RdrFormatError(f"{path}: empty file (0 bytes), not a table: download it again "
                             f"or remove it from data.rdr_files")
    with open_table(path) as stream:
        header_lines, header, names = read_header(stream, path)
        missing = [c for c in needed if c not in names]
        if missing:
            raise RdrFormatError(f"{path}: line {header_lines}: missing required column(s) "
                                 f"{', '.join(missing)}; found {', '.join(names)}")
        label = check_label(path, names)
        rows_before = stats["rows"]
        reader = _BlockParser(path, names, header, needed, channels, on_malformed)
        if threads is None:
            threads = 1 if path.suffix.lower() in (".zip", ".gz") else 2
        # Blocks are parsed by `threads` workers (numpy releases the GIL in its
        # loops) and delivered in order; a worker numbers a bad line within its
        # block and _deliver adds the lines of the blocks before it.
        with ThreadPoolExecutor(max_workers=max(1, threads),
                                thread_name_prefix="vaemap-rdr") as pool:
            pending: collections.deque = collections.deque()
            lines = [header_lines]  # lines before the next block to deliver
            # threads + 2 buffers in turn: a buffer comes round again only after
            # the block it held was delivered (at most `threads` are pending).
            for block in _blocks(stream, block_bytes, ring=threads + 2):
                pending.append(pool.submit(reader.parse, block))
                while len(pending) > threads:
                    yield from _deliver(pending.popleft(), stats, lines, path)
            while pending:
                yield from _deliver(pending.popleft(), stats, lines, path)
        expected = label_rows(label) if label is not None else None
        if expected is not None and stats["rows"] - rows_before != expected:
            raise RdrFormatError(f"{path}: {stats['rows'] - rows_before} rows, but its label "
                                 f"{label} says ROWS = {expected} (a truncated or appended "
                                 f"copy?)")


def _blocks(stream: io.BufferedIOBase, block_bytes: int, ring: int = 4
            ) -> Iterator[np.ndarray]:
    """Whole-line blocks of about ``block_bytes``, as uint8 arrays.

    Blocks are read into ``ring`` buffers in turn (reused: fresh memory would
    cost a page fault per 4 KiB); only the unfinished last line is copied into
    the next block.
    """
    slack = 1 << 20  # room for the previous block's unfinished line
    buffers = [np.empty(block_bytes + slack, dtype=np.uint8) for _ in range(ring)]
    tail = np.empty(0, dtype=np.uint8)
    for turn in itertools.count():
        buffer = (buffers[turn % ring] if tail.size <= slack else
                  np.empty(tail.size + block_bytes, dtype=np.uint8))
        buffer[:tail.size] = tail
        got = stream.readinto(memoryview(buffer)[tail.size:tail.size + block_bytes])
        size = tail.size + got
        if not got:
            if bytes(tail).strip():  # a last line without its line end
                yield np.concatenate([tail, np.frombuffer(b"\n", np.uint8)])
            return
        cut = 0
        for back in (1 << 16, size):  # the last line end: near the end, or anywhere
            found = np.flatnonzero(buffer[max(0, size - back):size] == 10)
            if found.size:
                cut = max(0, size - back) + int(found[-1]) + 1
                break
        if cut == 0:  # no line end yet: read on
            tail = buffer[:size]
            continue
        tail = buffer[cut:size].copy()
        yield buffer[:cut]


class _LineError(Exception):
    """A bad line, numbered within its block (the reader adds the lines before it)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _deliver(future, stats: dict[str, int], lines: list[int], path: Path
             ) -> Iterator[dict[str, np.ndarray]]:
    try:
        cols, counts = future.result()
    except _LineError as exc:
        raise RdrFormatError(f"{path}: line {lines[0] + exc.line}: {exc.message}") from None
    lines[0] += counts.pop("lines")
    for key, n in counts.items():
        stats[key] = stats.get(key, 0) + n
    if cols is not None:
        yield cols


#: Irregular lines (other than the layout's width) a block may hold and still
#: have its line ends predicted; beyond, each prediction restarts over the rest
#: of the block and a plain scan for line ends is cheaper (a nine-channel table
#: has about 2,400 over-wide fills in a block: 62 ms a block predicted with up
#: to 64, 9 ms scanned).
_MAX_PREDICTED_IRREGULAR = 8


class _BlockParser:
    """Parses blocks of whole lines of one table (see :func:`read_table`)."""

    def __init__(self, path: Path, names: list[str], header: bytes, needed: Sequence[str],
                 channels: Sequence[int] | None, on_malformed: str):
        self.path, self.names, self.needed = path, names, list(needed)
        self.field_index = {name: names.index(name) for name in self.needed}
        self.channels = None if channels is None else np.asarray(channels, dtype=np.float64)
        self.on_malformed = on_malformed
        self.layout = _FixedLayout(header, names)
        self.eol = 2 if header.endswith(b"\r\n") else 1

    def _problem(self, line: int, what: str, text: bytes) -> None:
        raise _LineError(line, f"{what}: {text.decode('latin-1').rstrip()[:80]!r}")

    def _lines(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, stop without the line end, index of the line end) of each line.

        In the published layout nearly every line is ``width`` + line-end bytes
        long, so line ends are predicted and checked rather than searched for;
        the few other lines (an over-wide fill) are found one by one. The total
        number of line ends confirms the result; anything else is scanned.
        """
        stride, eol = self.layout.width + self.eol, self.eol
        newline = buf == 10
        starts = None
        if self.layout.usable and buf.size:
            pieces, pos, irregular = [], 0, 0
            while pos < buf.size and irregular <= _MAX_PREDICTED_IRREGULAR:
                fit = (buf.size - pos) // stride
                ok = newline[pos + stride - 1:pos + fit * stride:stride]
                if eol == 2:
                    ok = ok & (buf[pos + stride - 2:pos + fit * stride:stride] == 13)
                k = fit if ok.all() else int(np.argmin(ok))
                if k:
                    pieces.append(pos + stride * np.arange(k))
                    pos += k * stride
                if pos < buf.size:
                    window = np.flatnonzero(newline[pos:pos + 4 * stride])
                    if window.size == 0 or irregular == _MAX_PREDICTED_IRREGULAR:
                        break
                    pieces.append(np.array([pos]))
                    pos += int(window[0]) + 1
                    irregular += 1
            if pos == buf.size and pieces:
                starts = np.concatenate(pieces)
                if starts.size != np.count_nonzero(newline):
                    starts = None
        if starts is None:
            ends = np.flatnonzero(newline)
            starts = np.concatenate([[0], ends[:-1] + 1])
        else:
            ends = np.concatenate([starts[1:], [buf.size]]) - 1
        stops = np.maximum(ends - (buf[np.maximum(ends - 1, 0)] == 13), starts)
        return starts, stops, ends

    def _grid(self, buf: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The lines starting at ``starts`` (each ``width`` bytes) as an (n, width)
        array: a strided view when they are equally spaced (the rule), else the
        equally spaced runs between irregular lines copied together."""
        width = self.layout.width
        if starts.size == 0:
            return np.empty((0, width), dtype=np.uint8)
        step = np.diff(starts)
        breaks = np.flatnonzero(step != (step[0] if step.size else width)) + 1
        if breaks.size > 64:
            # Many irregular lines between them (the nine channels' over-wide
            # fills): one gather beats a view per run.
            return np.lib.stride_tricks.sliding_window_view(buf, width)[starts]
        runs = np.split(np.arange(starts.size), breaks)
        views = []
        for run in runs:
            spacing = int(starts[run[1]] - starts[run[0]]) if run.size > 1 else width
            views.append(np.lib.stride_tricks.as_strided(
                buf[int(starts[run[0]]):], shape=(run.size, width), strides=(spacing, 1),
                writeable=False))
        return views[0] if len(views) == 1 else np.concatenate(views)

    def parse(self, buf: np.ndarray) -> tuple[dict[str, np.ndarray] | None, dict[str, int]]:
        """Columns of the rows in ``buf`` (uint8, whole lines), and its counts (lines,
        rows, by_position, channel, malformed). A bad line raises _LineError with
        its number within the block."""
        counts = {"rows": 0, "by_position": 0, "channel": 0, "malformed": 0}
        block = memoryview(buf)
        starts, stops, ends = self._lines(buf)
        counts["lines"] = int(ends.size)
        number = 1 + np.arange(ends.size)  # 1-based line numbers within the block
        content = stops > starts
        short = np.flatnonzero(content & (stops - starts < 3))
        for i in short:  # blank lines are not rows
            content[i] = bool(bytes(block[starts[i]:stops[i]]).strip())
        if not content.all():
            starts, stops, number = starts[content], stops[content], number[content]
        n = starts.size
        counts["rows"] = n
        lay = self.layout
        fixed = np.zeros(n, dtype=bool)
        rows = np.empty(0, dtype=np.int64)
        if lay.usable and n:
            fixed = (stops - starts) == lay.width
            rows = np.flatnonzero(fixed)
            grid = self._grid(buf, starts[rows])
            # The commas up to the one after `c` place the channel column; the
            # rest are checked only on the rows that are kept (below).
            upto = lay.commas_to_c if "c" in self.needed else len(lay.commas)
            aligned = _all_commas(grid, lay.commas[:upto])
            if not aligned.all():
                fixed[rows[~aligned]] = False
                grid, rows = grid[aligned], rows[aligned]
        if n and not fixed.any():
            cols = self._parse_with_pyarrow(buf, n)
            if cols is not None:
                return self._select_channels(cols, counts), counts
        out = {name: np.full(n, np.nan) for name in self.needed}
        bad = np.zeros(n, dtype=bool)
        keep = np.ones(n, dtype=bool)
        early = self._other_channels_of_long_lines(buf, starts, stops)
        keep[early] = False
        if rows.size:
            if "c" in self.needed:
                s, e = lay.fields["c"]
                values, ok = _parse_fields(np.ascontiguousarray(grid[:, s:e].T))
                out["c"][rows] = values
                wanted = ok.copy()
                if self.channels is not None:
                    other = ok & ~np.isin(values, self.channels)
                    keep[rows[other]] = False  # dropped before its other columns are read
                    wanted &= ~other
                fixed[rows[~ok]] = False  # unreadable: by delimiters, below
                if not wanted.all():
                    grid, rows = grid[wanted], rows[wanted]
                rest = _all_commas(grid, lay.commas[lay.commas_to_c:])
                if not rest.all():
                    fixed[rows[~rest]] = False
                    grid, rows = grid[rest], rows[rest]
            others = [c for c in self.needed if c != "c"]
            if others and rows.size:
                # Every other field at once: right-justified, so each is padded on
                # the left with blanks to the widest, and one pass reads them all.
                widest = max(lay.fields[c][1] - lay.fields[c][0] for c in others)
                stack = np.full((widest, len(others), rows.size), 32, dtype=np.uint8)
                for k, name in enumerate(others):
                    s, e = lay.fields[name]
                    stack[widest - (e - s):, k, :] = grid[:, s:e].T
                values, ok = _parse_fields(stack)
                for k, name in enumerate(others):
                    out[name][rows] = values[k]
                fixed[rows[~ok.all(axis=0)]] = False  # unreadable: by delimiters, below
        fixed[early] = True  # (their channel was read by position)
        counts["by_position"] = int(fixed.sum())
        for i in np.flatnonzero(~fixed):
            raw = bytes(block[starts[i]:stops[i]])
            values, problem = _parse_line(raw.decode("latin-1"), len(self.names),
                                          self.field_index)
            if problem is not None:
                if self.on_malformed == "error":
                    self._problem(int(number[i]), problem, raw)
                bad[i] = True
                if problem.startswith("expected"):  # wrong field count: the parser skips it
                    counts["malformed"] += 1
                    keep[i] = False
                    continue
                values = {}
            for name, v in values.items():
                out[name][i] = v
            if self.channels is not None and not bad[i] and \
                    not np.isin(values.get("c", np.nan), self.channels):
                keep[i] = False
        dropped = ~keep & ~bad
        counts["channel"] = int(dropped.sum())
        if not keep.any():
            return None, counts
        if keep.all():
            out["malformed_mask"] = bad
            return out, counts
        cols = {name: v[keep] for name, v in out.items()}
        cols["malformed_mask"] = bad[keep]
        return cols, counts

    def _other_channels_of_long_lines(self, buf: np.ndarray, starts: np.ndarray,
                                      stops: np.ndarray) -> np.ndarray:
        """Indices of the lines longer than the layout whose fields line up with
        it as far as the channel column, and whose channel is not kept.

        A fill wider than its column (the published ``-9999.000`` in the 8-byte
        ``tb``: a scene below a channel's detection floor) lengthens its line
        after the channel column, so the channel is still where the layout says.
        In the nine-channel archive most such lines are channels 3-5 at night
        (about 10 % of all rows); reading their channel by position drops them
        as the fixed-width rows are dropped, instead of parsing each by its
        delimiters in Python (measured: 90 % of the parse time before)."""
        lay = self.layout
        if not (lay.usable and self.channels is not None and "c" in self.needed):
            return np.empty(0, dtype=np.int64)
        long_lines = np.flatnonzero((stops - starts) > lay.width)
        if long_lines.size == 0:
            return long_lines
        commas = lay.commas[:lay.commas_to_c]
        span = int(commas.max()) + 1
        # each line up to the channel's comma
        grid = np.lib.stride_tricks.sliding_window_view(buf, span)[starts[long_lines]]
        aligned = _all_commas(grid, commas)
        s, e = lay.fields["c"]
        values, ok = _parse_fields(np.ascontiguousarray(grid[aligned, s:e].T))
        return long_lines[aligned][ok & ~np.isin(values, self.channels)]

    def _parse_with_pyarrow(self, block: np.ndarray, n: int) -> dict[str, np.ndarray] | None:
        """A block of another comma-separated layout, parsed by pyarrow; None when a
        row is malformed (then the caller parses line by line, to name it)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        skipped = []
        try:
            table = pacsv.read_csv(
                pa.py_buffer(block),
                read_options=pacsv.ReadOptions(column_names=self.names, use_threads=True),
                parse_options=pacsv.ParseOptions(quote_char=False,
                                                 invalid_row_handler=lambda r: skipped.append(r)
                                                 or "skip"),
                convert_options=pacsv.ConvertOptions(
                    include_columns=self.needed,
                    column_types=dict.fromkeys(self.needed, pa.float64())))
        except pa.ArrowInvalid:
            return None
        if skipped or table.num_rows != n:
            return None
        cols = {c: table.column(c).to_numpy() for c in self.needed}
        cols["malformed_mask"] = np.zeros(n, dtype=bool)
        return cols

    def _select_channels(self, cols: dict[str, np.ndarray], counts: dict[str, int]
                         ) -> dict[str, np.ndarray] | None:
        if self.channels is None or "c" not in cols:
            return cols
        keep = np.isin(cols["c"], self.channels)
        counts["channel"] = int((~keep).sum())
        return {k: v[keep] for k, v in cols.items()} if keep.any() else None
