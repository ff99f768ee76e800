"""RDR tables as the PDS archive publishes them: layout variants, packaging, labels.

Each fixture is written in the published layout (``#`` preamble, padded ``#``
header, ``", "`` separators, CRLF, quoted right-justified date and time) by
:func:`vaemap.rdr.format_rows`, then changed the way one archive variant is.
"""

import json
import re
import zipfile

import h5py
import healpy as hp
import numpy as np
import pytest
from conftest import write_packaged

from vaemap.config import validate_config
from vaemap.ingest import run
from vaemap.rdr import (
    FLAG_BITS,
    RDR_COLUMNS,
    RdrFormatError,
    format_rows,
    header_line,
    read_table,
)

PREAMBLE = "# Header: dlre_edr.c\r\n# Header: Diviner RDR\r\n# Header: test table\r\n"


def columns(n, **changes):
    """``n`` good nadir rows of channel 7 (footprints spread in time and place)."""
    i = np.arange(n)
    cols = {
        "date": ["09-Apr-2013"] * n, "utc": ["03:00:00.117"] * n,
        "jdate": 2456391.625 + i * 1e-4, "orbit": np.full(n, 17271), "sundist": np.full(n, 0.99),
        "sunlat": np.full(n, 1.5), "sunlon": np.full(n, 200.1), "sclk": 387169200.0 + i,
        "sclat": np.full(n, -15.4), "sclon": np.full(n, 171.5), "scrad": np.full(n, 1823.7),
        "scalt": np.full(n, 86.4), "el_cmd": np.full(n, 180.0), "az_cmd": np.full(n, 240.0),
        "af": np.full(n, 110), "orientlat": np.full(n, 1.2), "orientlon": np.full(n, 81.9),
        "c": np.full(n, 7), "det": 1 + i % 21, "vlookx": np.full(n, 0.96),
        "vlooky": np.full(n, -0.1), "vlookz": np.full(n, 0.23), "radiance": np.full(n, 56.26),
        "tb": 150.0 + i * 0.125, "clat": -60.0 + (i % 120), "clon": (i * 7.5) % 360.0,
        "cemis": np.full(n, 2.9), "csunzen": np.full(n, 32.7), "csunazi": np.full(n, 15.8),
        "cloctime": (i * 0.37) % 24.0, "qca": np.zeros(n, int), "qge": np.full(n, 12),
        "qmi": np.zeros(n, int),
    }  # fmt: skip
    for key, value in changes.items():
        cols[key] = value
    return cols


def text(cols, header=None):
    return PREAMBLE + (header or header_line()) + format_rows(cols)


write = write_packaged


@pytest.fixture
def cfg(ingest_cfg):
    return ingest_cfg


def ingest(path, cfg, tmp_path, name="s.h5"):
    out = run([path], tmp_path / name, cfg)
    assert out["accepted"] + sum(out["rejected"].values()) == out["rows_read"]
    return out


def test_published_layout_is_read_with_its_values(tmp_path, cfg):
    cols = columns(50)
    content = text(cols)
    assert content.splitlines()[3].startswith("#        date,            utc,")
    assert '"09-Apr-2013", "03:00:00.117", 2456391.625000000,' in content
    path = write(tmp_path / "201304090300_RDR.TAB", content)
    out = ingest(path, cfg, tmp_path)
    assert out == {**out, "rows_read": 50, "accepted": 50, "rejected": {}}
    with h5py.File(tmp_path / "s.h5") as h5:
        order = np.lexsort((cols["jdate"], hp.ang2pix(32, cols["clon"], cols["clat"],
                                                      nest=True, lonlat=True)))
        np.testing.assert_array_equal(h5["tb"][...], np.float32(cols["tb"][order]))
        np.testing.assert_array_equal(h5["pix"][...], hp.ang2pix(
            32, cols["clon"][order], cols["clat"][order], nest=True, lonlat=True))


def test_fast_column_parse_equals_the_delimiter_parse(tmp_path):
    """The published layout is parsed by column position; the same rows written
    with bare commas are parsed by delimiters: every value must agree exactly."""
    rng = np.random.default_rng(3)
    n = 3000
    cols = columns(n, tb=np.round(rng.uniform(-50, 400, n), 3),
                   clat=np.round(rng.uniform(-90, 90, n), 5),
                   clon=np.round(rng.uniform(0, 360, n), 5),
                   cloctime=np.round(rng.uniform(0, 24, n), 5),
                   jdate=np.round(2455000 + rng.uniform(0, 3000, n), 9),
                   c=rng.integers(1, 10, n))
    fast = write(tmp_path / "fast.TAB", text(cols))
    plain = ",".join(RDR_COLUMNS) + "\n" + "\n".join(
        ",".join(repr(float(cols[c][i])) if c not in ("date", "utc") else cols[c][i]
                 for c in RDR_COLUMNS) for i in range(n)) + "\n"
    slow = write(tmp_path / "slow.TAB", plain)
    stats_fast, stats_slow = {}, {}
    a = {k: np.concatenate([b[k] for b in read_table(fast, stats=stats_fast)])
         for k in ("tb", "clat", "jdate")}
    b = {k: np.concatenate([b[k] for b in read_table(slow, stats=stats_slow)])
         for k in ("tb", "clat", "jdate")}
    assert stats_fast["by_position"] == 3 * n and stats_slow.get("by_position", 0) == 0
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], cols[key])
    # blocks of a few lines: every block boundary falls inside the table
    small = {k: np.concatenate([b[k] for b in read_table(fast, block_bytes=1000)])
             for k in ("tb",)}
    np.testing.assert_array_equal(small["tb"], cols["tb"])


@pytest.mark.parametrize("packaging", ["201304090300_RDR.TAB", "201304090300_RDR.TAB.gz",
                                       "201304090300_rdr.zip"])
def test_plain_gzip_and_zip_give_identical_datasets(tmp_path, cfg, packaging):
    content = text(columns(40))
    reference = write(tmp_path / "ref_RDR.TAB", content)
    ingest(reference, cfg, tmp_path, "ref.h5")
    path = write(tmp_path / packaging, content)
    ingest(path, cfg, tmp_path, "pkg.h5")
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(tmp_path / "pkg.h5") as b:
        for key in a:
            assert a[key][...].tobytes() == b[key][...].tobytes()


def test_alias_columns_of_2012_2013(tmp_path, cfg):
    header = header_line().replace("orientlat", " vert_lat").replace("orientlon", " vert_lon")
    assert len(header) == len(header_line())
    path = write(tmp_path / "201206300000_RDR.TAB", text(columns(10), header))
    assert ingest(path, cfg, tmp_path)["accepted"] == 10


def test_off_planet_fills_leap_second_and_over_wide_fill(tmp_path, cfg):
    n = 12
    cols = columns(n)
    off = [0, 1, 2]  # off-planet: clat .. cloctime are fills, tb stays valid
    for key in ("clat", "clon", "cemis", "csunzen", "csunazi", "cloctime"):
        cols[key] = np.where(np.isin(np.arange(n), off), -9999.0, cols[key])
    cols["utc"] = ["03:00:00.117"] * 5 + ["23:59:60.052"] * (n - 5)  # a leap second
    cols["tb"] = np.where(np.arange(n) == 4, -9999.0, cols["tb"])  # -9999.000 > 8 bytes
    cols["radiance"] = np.where(np.arange(n) == 4, -9998.0, cols["radiance"])
    content = text(cols)
    assert "23:59:60.052" in content and "-9999.000," in content
    lines = content.split("\r\n")
    assert len(lines[4 + 4]) > len(lines[4 + 5])  # the over-wide fill widens its row
    out = ingest(write(tmp_path / "201206302350_RDR.TAB", content), cfg, tmp_path)
    assert out["rows_read"] == n and out["rejected"] == {"fill_value": 4}
    assert out["accepted"] == n - 4


def test_channel_rows_dropped_as_parsed_and_counted(tmp_path, cfg):
    """Nine channels interleaved as in the archive, channel 7 selected; channels
    1-2 carry relative reflectance in tb, not kelvin."""
    n = 90
    c = np.tile(np.arange(1, 10), n // 9)
    cols = columns(n, c=c, tb=np.where(c <= 2, 0.123, 200.0))
    stats = {}
    blocks = list(read_table(write(tmp_path / "t_RDR.TAB", text(cols)), channels=[7],
                             stats=stats))
    assert stats == {"rows": n, "malformed": 0, "channel": n - n // 9, "by_position": n}
    assert np.concatenate([b["c"] for b in blocks]).tolist() == [7.0] * (n // 9)
    out = ingest(tmp_path / "t_RDR.TAB", cfg, tmp_path)
    assert out["rejected"] == {"channel": n - n // 9} and out["accepted"] == n // 9


def test_over_wide_fills_of_other_channels_are_dropped_by_position(tmp_path):
    """Nine channels with channels 3-5 mostly below detection (their tb the
    over-wide -9999.000 fill, as a night in the archive): their rows are dropped
    by their channel column like every other channel's, not parsed line by
    line; the kept rows, over-wide fills of channel 7 included, are read
    exactly as by delimiters, in blocks large and small."""
    rng = np.random.default_rng(5)
    n = 9 * 400
    c = np.tile(np.arange(1, 10), n // 9)
    tb = np.round(rng.uniform(60, 390, n), 3)
    tb[np.isin(c, (3, 4, 5)) & (rng.random(n) < 0.8)] = -9999.0
    tb[(c == 7) & (rng.random(n) < 0.05)] = -9999.0
    cols = columns(n, c=c, tb=tb, clat=np.round(rng.uniform(-90, 90, n), 5))
    path = write(tmp_path / "t_RDR.TAB", text(cols))
    assert np.count_nonzero(tb == -9999.0) > n // 4  # far beyond the predicted-line limit
    keep = c == 7
    for block_bytes in (1 << 23, 5000):
        stats = {}
        blocks = list(read_table(path, channels=[7], stats=stats, block_bytes=block_bytes))
        got = {k: np.concatenate([b[k] for b in blocks]) for k in ("tb", "clat", "c")}
        assert stats["channel"] == n - keep.sum() and stats["rows"] == n
        # every row but channel 7's over-wide fills was placed by position
        assert stats["by_position"] == n - np.count_nonzero(keep & (tb == -9999.0))
        np.testing.assert_array_equal(got["tb"], tb[keep])
        np.testing.assert_array_equal(got["clat"], cols["clat"][keep])
        assert set(got["c"]) == {7.0}
    # a kept row that is malformed after an over-wide fill is still named
    lines = text(cols).split("\r\n")
    row = 4 + int(np.flatnonzero(keep & (tb == -9999.0))[0])
    lines[row] = lines[row].replace(" 110,", " 1x0,")
    bad = write(tmp_path / "b_RDR.TAB", "\r\n".join(lines))
    with pytest.raises(RdrFormatError, match=rf"line {row + 1}: column af: expected a number"):
        list(read_table(bad, channels=[7]))


def test_moving_instrument_and_every_flag_bit_counted(tmp_path, cfg):
    bits = [1 << k for k in range(8)]
    n = 2 + len(bits) + 3
    af = np.full(n, 110)
    af[0] = -110  # actuator slewing
    af[1] = 120
    qmi = np.zeros(n, int)
    qmi[2:2 + len(bits)] = bits
    qmi[-1] = 0x02 | 0x20  # eclipse and noise at once: one row, both bits counted
    qca = np.zeros(n, int)
    qca[-2] = 0x08
    qge = np.full(n, 12)
    qge[-3] = 12 | 0x10
    path = write(tmp_path / "201001131700_RDR.TAB", text(columns(n, af=af, qmi=qmi, qca=qca,
                                                                  qge=qge)))
    out = ingest(path, cfg, tmp_path)
    assert out["rejected"] == {"instrument_moving": 1, "activity_flag": 1, "qmi": 9,
                               "qca": 1, "qge": 1}
    names = FLAG_BITS["qmi"]
    expected_qmi = {names[b]: 1 for b in bits}
    expected_qmi["eclipse"] += 1
    expected_qmi["noise"] += 1
    assert out["rejected_flag_bits"] == {"qmi": expected_qmi,
                                         "qca": {"constant_calibration": 1},
                                         "qge": {"tracked_pointing": 1, "tracked_ephemeris": 1,
                                                 "predicted_pointing": 1}}
    with h5py.File(tmp_path / "s.h5") as h5:
        assert json.loads(h5.attrs["rejected_flag_bits"])["qmi"] == expected_qmi


def test_label_beside_the_table_is_checked(tmp_path, cfg):
    path = write(tmp_path / "201304090300_rdr.zip", text(columns(5)))
    label = tmp_path / "201304090300_rdr.lbl"
    objects = "".join(f"  OBJECT = COLUMN\r\n    NAME = {c.upper()}\r\n  END_OBJECT = COLUMN\r\n"
                      for c in RDR_COLUMNS)
    label.write_text(f"PDS_VERSION_ID = PDS3\r\nOBJECT = TABLE\r\n{objects}END_OBJECT = TABLE\r\n")
    assert ingest(path, cfg, tmp_path)["accepted"] == 5
    label.write_text(label.read_text().replace("NAME = QGE", "NAME = QGEO"))
    with pytest.raises(RdrFormatError, match=r"201304090300_rdr\.zip: its header does not "
                                             r"match the label .*201304090300_rdr\.lbl: column "
                                             r"32 is qge, the label says qgeo"):
        run([path], tmp_path / "x.h5", cfg)
    label.unlink()
    xml = tmp_path / "201304090300_rdr.xml"
    fields = "".join(f"<Field_Delimited><name>{c}</name></Field_Delimited>"
                     for c in RDR_COLUMNS[:-1])
    xml.write_text(f'<Product_Observational xmlns="http://pds.nasa.gov/pds4/pds/v1">'
                   f"<Record_Delimited>{fields}</Record_Delimited></Product_Observational>")
    with pytest.raises(RdrFormatError, match=r"column 33 is qmi, the label says nothing"):
        run([path], tmp_path / "x.h5", cfg)


def test_a_table_shorter_than_its_label_says_is_refused(tmp_path, cfg):
    """The label's ROWS is checked: a truncated (or appended) table never passes."""
    path = write(tmp_path / "201304090300_rdr.zip", text(columns(5)))
    label = tmp_path / "201304090300_rdr.lbl"
    objects = "".join(f"  OBJECT = COLUMN\r\n    NAME = {c.upper()}\r\n  END_OBJECT = COLUMN\r\n"
                      for c in RDR_COLUMNS)
    label.write_text(f"PDS_VERSION_ID = PDS3\r\nOBJECT = TABLE\r\n  ROWS = 5\r\n{objects}"
                     f"END_OBJECT = TABLE\r\n")
    assert ingest(path, cfg, tmp_path)["accepted"] == 5
    label.write_text(label.read_text().replace("ROWS = 5", "ROWS = 7"))
    with pytest.raises(RdrFormatError, match=r"201304090300_rdr\.zip: 5 rows, but its label "
                                             r".*201304090300_rdr\.lbl says ROWS = 7"):
        run([path], tmp_path / "x.h5", cfg)
    assert not (tmp_path / "x.h5").exists()


def test_a_truncated_compressed_table_names_the_file(tmp_path, cfg):
    for name in ("201304090300_RDR.TAB.gz", "201304090400_rdr.zip"):
        path = write(tmp_path / name, text(columns(400)))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(RdrFormatError, match=rf"{re.escape(str(path))}: (truncated or "
                                                 r"corrupt|not a zip archive)"):
            run([path], tmp_path / "x.h5", cfg)
        assert not (tmp_path / "x.h5").exists()


def test_a_zipped_table_is_inflated_exactly_and_a_corrupt_one_refused(tmp_path, cfg):
    """vaemap inflates a zip member itself (ISA-L): the bytes are zipfile's, and a
    member whose data were damaged in place fails its CRC-32, naming the file."""
    from vaemap.rdr import open_table

    path = write(tmp_path / "201304090300_rdr.zip", text(columns(3000)))
    with open_table(path) as stream, zipfile.ZipFile(path) as archive:
        assert stream.read() == archive.read(archive.namelist()[0])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle] ^= 0x55  # one byte of the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(RdrFormatError, match=rf"{re.escape(str(path))}: truncated or corrupt"):
        run([path], tmp_path / "x.h5", cfg)
    assert not (tmp_path / "x.h5").exists()


def test_the_reader_agrees_with_pdr_an_independent_pds_reader(tmp_path):
    """The Planetary Data Reader (PyPI ``pdr``) reads a table through its PDS3
    label; vaemap's reader must give the same values for every numeric column of
    the same table, plain and zipped, with the nine channels interleaved and bad
    flags, and keep exactly pdr's channel-7 rows when asked for channel 7.

    With over-wide fills (``-9999.000`` in the 8-byte ``tb``, as in the archive)
    pdr reads ROWS x ROW_BYTES bytes by the label, so the table's last row comes
    out cut short; every row before it must still agree, and vaemap's reader,
    which parses by delimiter where a row does not fit, reads the last one whole.
    """
    import pdr

    from vaemap.rdr import write_table

    n = 2000
    rng = np.random.default_rng(5)
    i = np.arange(n)
    numeric = [c for c in RDR_COLUMNS if c not in ("date", "utc")]
    preamble = ["Header: dlre_edr.c", "Header: Diviner RDR", "Header: test table"]
    for kind in ("fitting", "over-wide fills"):
        tb = np.round(rng.uniform(40, 390, n), 3)
        if kind != "fitting":
            tb[rng.choice(n - 1, 20, replace=False)] = -9999.0
        cols = columns(n, c=1 + i % 9, det=1 + (i // 9) % 21, tb=tb,
                       clat=np.round(rng.uniform(-90, 90, n), 5),
                       clon=np.round(rng.uniform(0, 360, n), 5),
                       cloctime=np.round(rng.uniform(0, 24, n), 5),
                       af=np.where(rng.uniform(size=n) < 0.02, 2, 110),
                       qmi=rng.choice([0, 2, 8, 32], n))
        stem = "201304090300" if kind == "fitting" else "201304090500"
        plain = tmp_path / f"{stem}_RDR.TAB"
        zipped = tmp_path / f"{int(stem) + 100}_rdr.zip"
        assert write_table(plain, [cols], preamble, "plain", label=True) == n
        write_table(zipped, [cols], preamble, "zip", label=True)
        theirs = pdr.read(tmp_path / f"{stem}_RDR.LBL")["TABLE"]
        assert len(theirs) == n
        whole = n if kind == "fitting" else n - 1  # pdr's last row is cut short
        if kind != "fitting":
            assert theirs.iloc[-1].isna().any()
        for table in (plain, zipped):
            ours = list(read_table(table, numeric))
            for name in numeric:
                values = np.concatenate([b[name] for b in ours])
                np.testing.assert_array_equal(values[:whole],
                                              theirs[name.upper()].to_numpy(float)[:whole],
                                              err_msg=f"{table.name}: {name}")
                assert not np.isnan(values).any()
        kept = np.concatenate([b["tb"] for b in read_table(zipped, numeric, channels=[7])])
        theirs7 = theirs.iloc[:whole].loc[theirs["C"].iloc[:whole] == 7, "TB"]
        np.testing.assert_array_equal(kept[:len(theirs7)], theirs7.to_numpy(float))
        assert len(kept) == np.sum(cols["c"] == 7)


def test_malformed_rows_name_the_line_in_the_published_layout(tmp_path, cfg):
    content = text(columns(6)).split("\r\n")
    content[6] = content[6].replace(" 110,", " 1x0,")
    path = write(tmp_path / "m_RDR.TAB", "\r\n".join(content))
    with pytest.raises(RdrFormatError, match=r"m_RDR\.TAB: line 7: column af: expected a "
                                             r"number, found '1x0'"):
        run([path], tmp_path / "x.h5", cfg)
    content[6] = content[6].rsplit(",", 2)[0]  # two fields short
    path = write(tmp_path / "m_RDR.TAB", "\r\n".join(content))
    with pytest.raises(RdrFormatError, match=r"line 7: expected 33 fields, found 31"):
        run([path], tmp_path / "x.h5", cfg)
    skip = validate_config({"ingest": {"nside": 32, "on_malformed": "skip"}})
    out = ingest(path, skip, tmp_path)
    assert out["rejected"] == {"malformed": 1} and out["accepted"] == 5


def test_zip_must_hold_one_table(tmp_path, cfg):
    path = tmp_path / "201304090300_rdr.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.TAB", "x")
        archive.writestr("b.TAB", "y")
    with pytest.raises(RdrFormatError, match="expected one table"):
        run([path], tmp_path / "x.h5", cfg)
