"""Benchmark result files, plain and gzip-compressed (bench.result_files)."""

import gzip

from bench.result_files import read_result, result_name, write_result


def test_a_result_reads_back_the_same_plain_or_compressed(tmp_path):
    text = '{"methods": {"qf": {"efficacy": 1.0}}, "note": "Zürich"}'
    for name in ("run.json", "run.json.gz"):
        write_result(tmp_path / name, text)
        assert read_result(tmp_path / name) == {"methods": {"qf": {"efficacy": 1.0}}, "note": "Zürich"}
        assert result_name(tmp_path / name) == "run"
    assert gzip.decompress((tmp_path / "run.json.gz").read_bytes()) == (tmp_path / "run.json").read_bytes()
    write_result(tmp_path / "again.json.gz", text)  # no time stamp in the header: the same bytes each time
    assert (tmp_path / "again.json.gz").read_bytes() == (tmp_path / "run.json.gz").read_bytes()
