"""Ingest: the RDR format, quality filters, counted rejections and bad input."""

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import write_packaged

from vaemap.config import validate_config
from vaemap.ingest import REJECTION_REASONS, RdrFormatError, run
from vaemap.rdr import RDR_COLUMNS

GOOD = {
    "date": '"15-Sep-2009"', "utc": '"00:00:49.781"', "jdate": "2455089.500576", "orbit": "1",
    "sundist": "1", "sunlat": "0", "sunlon": "180", "sclk": "306244849.781", "sclat": "2.6",
    "sclon": "36.6", "scrad": "1787.4", "scalt": "50", "el_cmd": "80", "az_cmd": "240",
    "af": "110", "orientlat": "0", "orientlon": "0", "c": "7", "det": "1", "vlookx": "0",
    "vlooky": "0", "vlookz": "-1", "radiance": "0.045", "tb": "103.3", "clat": "2.6",
    "clon": "36.6", "cemis": "1.5", "csunzen": "143.2", "csunazi": "86.4", "cloctime": "2.44",
    "qca": "0", "qge": "12", "qmi": "0",
}  # fmt: skip


def row(**changes) -> str:
    values = {**GOOD, **{k: str(v) for k, v in changes.items()}}
    return ",".join(values[c] for c in RDR_COLUMNS)


def write_table(path, rows, columns=RDR_COLUMNS, preamble=("# test table",)):
    return write_packaged(path, "\n".join([*preamble, ",".join(columns), *rows]) + "\n")


@pytest.fixture
def cfg(ingest_cfg):
    return ingest_cfg


def test_accepts_good_rows_plain_and_gzip(tmp_path, cfg):
    rows = [row(jdate=2455089.5 + i * 0.001, cloctime=(i % 24) + 0.5) for i in range(10)]
    for name in ("a.TAB", "a.TAB.gz"):
        path = write_table(tmp_path / name, rows)
        out = run([path], tmp_path / f"{name}.h5", cfg)
        assert out["rows_read"] == 10
        assert out["accepted"] == 10
        with h5py.File(tmp_path / f"{name}.h5") as h5:
            assert h5.attrs["ordering"] == "NESTED"
            assert int(h5.attrs["nside"]) == 32
            assert h5["tb"].dtype == np.float32
            np.testing.assert_allclose(h5["tb"][:], 103.3, rtol=1e-6)
            assert np.all(np.diff(h5["pix"][:]) >= 0)
            assert h5["tb"].chunks is not None and h5["tb"]._filters  # compressed


def test_columns_matched_by_name_not_position(tmp_path, cfg):
    cols = list(reversed(RDR_COLUMNS))
    values = [GOOD[c] for c in cols]
    path = write_table(tmp_path / "r.TAB", [",".join(values)], columns=cols)
    assert run([path], tmp_path / "r.h5", cfg)["accepted"] == 1


def test_missing_required_column_names_file_and_column(tmp_path, cfg):
    cols = [c for c in RDR_COLUMNS if c != "cemis"]
    values = [GOOD[c] for c in cols]
    path = write_table(tmp_path / "m.TAB", [",".join(values)], columns=cols)
    with pytest.raises(RdrFormatError, match=r"m\.TAB.*cemis"):
        run([path], tmp_path / "m.h5", cfg)


def test_non_numeric_value_error_names_line(tmp_path, cfg):
    path = write_table(tmp_path / "n.TAB", [row(), row(tb="abc"), row()])
    with pytest.raises(RdrFormatError, match=r"n\.TAB: line 4: column tb.*'abc'"):
        run([path], tmp_path / "n.h5", cfg)


def test_non_numeric_value_skipped_and_counted(tmp_path):
    cfg = validate_config({"ingest": {"on_malformed": "skip"}})
    path = write_table(tmp_path / "n.TAB", [row(), row(tb="abc", jdate=2455089.6), row(
        jdate=2455089.7)])
    out = run([path], tmp_path / "n.h5", cfg)
    assert out["rejected"] == {"malformed": 1}
    assert out["accepted"] == 2


def test_wrong_field_count_and_truncated_last_line(tmp_path, cfg):
    truncated = row(jdate=2455089.9)[:40]
    path = write_table(tmp_path / "t.TAB", [row(), row(jdate=2455089.8) + ",7", truncated])
    with pytest.raises(RdrFormatError, match=r"t\.TAB: line 4: expected 33 fields"):
        run([path], tmp_path / "t.h5", cfg)
    skip = validate_config({"ingest": {"on_malformed": "skip"}})
    out = run([path], tmp_path / "t.h5", skip)
    assert out == {**out, "rows_read": 3, "accepted": 1, "rejected": {"malformed": 2}}


def test_every_rejection_reason_is_counted(tmp_path, cfg):
    bad = {
        "fill_value": row(tb=-9999), "channel": row(c=4), "activity_flag": row(af=2),
        "emission_angle": row(cemis=25), "qca": row(qca=1), "qge": row(qge=2),
        "qmi": row(qmi=10), "latitude_range": row(clat=95), "longitude_range": row(clon=400),
        "local_time_range": row(cloctime=24.5), "tb_range": row(tb=900),
    }  # fmt: skip
    good = [row(jdate=2455089.5 + i * 0.01) for i in range(3)]
    path = write_table(tmp_path / "b.TAB", [*bad.values(), *good, good[0]])
    out = run([path], tmp_path / "b.h5", cfg)
    expected = dict.fromkeys(bad, 1) | {"duplicate": 1}
    assert out["rejected"] == expected
    assert out["accepted"] == 3
    assert out["accepted"] + sum(out["rejected"].values()) == out["rows_read"] == 15
    assert set(out["rejected"]) <= set(REJECTION_REASONS)
    with h5py.File(tmp_path / "b.h5") as h5:
        stored = json.loads(h5.attrs["rejected"])
        assert stored["qge"] == 1 and stored["duplicate"] == 1


def test_swapped_clat_and_clon_are_refused_not_filtered(tmp_path, cfg, caplog):
    """A header naming clon as clat (no label to say otherwise) made half the rows
    'latitude_range' rejections and mapped the other half at the wrong place."""
    rng = np.random.default_rng(3)
    lon, lat = rng.uniform(0, 360, 200), rng.uniform(-60, 60, 200)
    rows = [row(jdate=2455089.5 + i * 1e-3, clat=f"{a:.3f}", clon=f"{b:.3f}")
            for i, (a, b) in enumerate(zip(lon, lat, strict=True))]
    path = write_table(tmp_path / "swapped.TAB", rows)
    share = np.mean(lon > 90) * 100
    with pytest.raises(RdrFormatError, match=rf"swapped\.TAB: {np.sum(lon > 90)} of its 200 "
                       rf"rows .*\({share:.1f} %\) have a latitude \(clat\) beyond ±90°, up to "
                       rf"{lon.max():.1f}°; as longitudes would: are clat and clon swapped"):
        run([path], tmp_path / "s.h5", cfg)
    # the same table the right way round is accepted whole
    right = write_table(tmp_path / "right.TAB", [row(jdate=2455089.5 + i * 1e-3,
                                                     clat=f"{b:.3f}", clon=f"{a:.3f}")
                                                 for i, (a, b) in enumerate(zip(lon, lat,
                                                                                strict=True))])
    assert run([right], tmp_path / "r.h5", cfg)["accepted"] == 200
    # a few rows beyond the pole in a large table stay counted rejections, with a warning
    few = write_table(tmp_path / "few.TAB", [*rows[:3], *(
        row(jdate=2455090.5 + i * 1e-3, clat=f"{b:.3f}") for i, b in enumerate(lat))])
    with caplog.at_level("WARNING"):
        out = run([few], tmp_path / "f.h5", cfg)
    assert out["rejected"].get("latitude_range", 0) == int(np.sum(lon[:3] > 90))
    assert "few.TAB: " in caplog.text and "rejected as latitude_range" in caplog.text


def test_nan_and_second_fill_value(tmp_path, cfg):
    path = write_table(tmp_path / "f.TAB", [row(clat="NaN"), row(cloctime=-9998), row()])
    out = run([path], tmp_path / "f.h5", cfg)
    assert out["rejected"] == {"fill_value": 2}


def test_longitudes_wrap_into_0_360(tmp_path, cfg):
    path = write_table(tmp_path / "w.TAB", [row(clon=-90.0)])
    run([path], tmp_path / "w.h5", cfg)
    with h5py.File(tmp_path / "w.h5") as h5:
        assert h5["lon"][0] == pytest.approx(270.0)


def test_an_empty_file_is_an_error_not_an_empty_day(tmp_path, cfg):
    """A 0-byte table is a failed download: refused, naming it, and nothing written."""
    for name in ("e.TAB", "e_rdr.zip", "e_RDR.TAB.gz"):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(RdrFormatError, match=rf"{re.escape(str(path))}: empty file "
                                                 r"\(0 bytes\)"):
            run([path], tmp_path / "e.h5", cfg)
        assert not (tmp_path / "e.h5").exists()


def test_no_header_is_a_clear_error(tmp_path, cfg):
    path = tmp_path / "x.TAB"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(RdrFormatError, match="no RDR header"):
        run([path], tmp_path / "x.h5", cfg)


def test_same_inputs_give_identical_datasets(survey, tiny_config, tmp_path):
    run(survey["rdr"], tmp_path / "again.h5", tiny_config)
    with h5py.File(survey["samples"]) as a, h5py.File(tmp_path / "again.h5") as b:
        assert set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype
            assert a[key][...].tobytes() == b[key][...].tobytes()


def test_cli_json_summary_and_error_exit(tmp_path):
    path = write_table(tmp_path / "c.TAB", [row(), row(qca=1)])
    proc = subprocess.run([sys.executable, "-m", "vaemap.cli", "ingest", str(path), "--output",
                           str(tmp_path / "c.h5"), "--json", "-q"], capture_output=True,
                          text=True, check=True)
    summary = json.loads(proc.stdout)
    assert summary == {"rows_read": 2, "accepted": 1, "rejected": {"qca": 1},
                       "rejected_flag_bits": {"qca": {"marker_out_of_bounds": 1}},
                       "per_channel": {"7": {"qca": 1, "accepted": 1}},
                       "output": str(tmp_path / "c.h5")}
    bad = subprocess.run([sys.executable, "-m", "vaemap.cli", "ingest",
                          str(tmp_path / "missing.TAB"), "--output", str(tmp_path / "m.h5")],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert "missing.TAB" in bad.stderr
    assert not (tmp_path / "m.h5").exists()


def _datasets(path):
    with h5py.File(path) as h5:
        return {k: h5[k][...] for k in h5}, json.loads(h5.attrs["rejected"])


def test_small_chunks_stream_to_the_same_result(survey, tiny_config, tmp_path):
    """Many sorted runs and a k-way merge give exactly the one-chunk result."""
    small = {**tiny_config, "ingest": {**tiny_config["ingest"], "chunk_rows": 1000}}
    out = run(survey["rdr"], tmp_path / "small.h5", small)
    assert out == {**survey["ingest"], "output": str(tmp_path / "small.h5")}
    a, rej_a = _datasets(survey["samples"])
    b, rej_b = _datasets(tmp_path / "small.h5")
    assert rej_a == rej_b
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_scatter_then_merge_equals_one_ingest(survey, tiny_config, tmp_path):
    from vaemap.ingest import merge

    parts = []
    for i, path in enumerate(survey["rdr"]):
        parts.append(tmp_path / f"part{i}.h5")
        run([path], parts[-1], tiny_config)
    merged = merge(parts, tmp_path / "merged.h5", tiny_config)
    assert merged["rows_read"] == survey["ingest"]["rows_read"]
    assert merged["accepted"] == survey["ingest"]["accepted"]
    assert merged["rejected"] == survey["ingest"]["rejected"]
    a, _ = _datasets(survey["samples"])
    b, _ = _datasets(tmp_path / "merged.h5")
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_duplicates_across_files_are_dropped_in_the_merge(tmp_path, cfg):
    from vaemap.ingest import merge

    rows = [row(jdate=2455089.5 + i * 0.01) for i in range(4)]
    write_table(tmp_path / "a.TAB", rows)
    write_table(tmp_path / "b.TAB", [*rows[2:], row(jdate=2455090.0)])
    run([tmp_path / "a.TAB"], tmp_path / "a.h5", cfg)
    run([tmp_path / "b.TAB"], tmp_path / "b.h5", cfg)
    out = merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5", cfg)
    assert out["rows_read"] == 7
    assert out["accepted"] == 5
    assert out["rejected"] == {"duplicate": 2}


def test_blosc_compression_round_trips(tmp_path):
    cfg = validate_config({"ingest": {"compression": "blosc-lz4"}})
    path = write_table(tmp_path / "z.TAB", [row(jdate=2455089.5 + i * 0.01) for i in range(50)])
    run([path], tmp_path / "z.h5", cfg)
    with h5py.File(tmp_path / "z.h5") as h5:
        assert h5["tb"][...].size == 50
        np.testing.assert_allclose(h5["tb"][...], 103.3, rtol=1e-6)


@pytest.mark.parametrize("time_ordered", [True, False])
def test_sort_rows_equals_two_key_stable_sort(time_ordered):
    from vaemap.ingest import _sort_rows

    rng = np.random.default_rng(3)
    n = 5000
    jdate = np.round(rng.uniform(0, 50, n), 1)  # many equal times: ties must stay stable
    if time_ordered:
        jdate = np.sort(jdate)
    data = {"pix": rng.integers(0, 40, n), "jdate": jdate, "det": np.arange(n)}
    out = _sort_rows(data)
    order = np.lexsort((data["jdate"], data["pix"]))
    for key in data:
        np.testing.assert_array_equal(out[key], data[key][order])
