"""Run-directory Arrow outputs: written, readable by pyarrow and pandas, consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyarrow import feather

import distextract as dx
from distextract._errors import ConfigError
from distextract._extract import extract
from distextract.rundir import FILES, match_kinks, write_run_outputs

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    net = dx.targets.random_network(12, 16, 3, seed=2)
    result = extract(net, seed=1)
    run = tmp_path_factory.mktemp("run")
    paths = write_run_outputs(run, result)
    return net, result, run, paths


def test_every_file_is_written(outputs):
    _, _, run, paths = outputs
    assert sorted(paths) == sorted(FILES)
    for name in FILES:
        assert (run / name).is_file()


def test_model_round_trips(outputs):
    _, result, run, _ = outputs
    back = dx.ReluNetwork.load(run / "model.arrow")
    np.testing.assert_array_equal(back.W, result.model.W)
    np.testing.assert_array_equal(back.A, result.model.A)


def test_neurons_table(outputs):
    _, result, run, _ = outputs
    table = feather.read_table(run / "neurons.arrow")
    k, d, m = result.model.hidden_dim, 12, 3
    assert table.num_rows == k
    assert table.column_names == ["index", "line", "t", "err", "rank_residual", "count",
                                  "kinks_matched", "w", "b", "a"]
    assert table.schema.field("w").type.list_size == d
    assert table.schema.field("a").type.list_size == m
    W = np.asarray(table.column("w").combine_chunks().flatten()).reshape(k, d)
    np.testing.assert_array_equal(W, result.model.W)
    meta = json.loads(table.schema.metadata[b"distextract.run"])
    assert meta["table"] == "neurons" and meta["input_dim"] == d
    frame = pd.read_feather(run / "neurons.arrow")
    assert len(frame) == k and frame["err"].dtype == np.float64
    assert np.asarray(frame["w"].iloc[0]).shape == (d,)
    assert (frame["kinks_matched"] >= 1).all()  # every neuron was seen on some line


def test_kinks_table_matches_kinks_to_neurons(outputs):
    _, result, run, _ = outputs
    table = feather.read_table(run / "kinks.arrow")
    total = sum(np.asarray(r.kinks).size for r in result.engine.lines)
    assert table.num_rows == total
    frame = pd.read_feather(run / "kinks.arrow")
    assert set(frame.columns) == {"line", "kink", "t", "resolved", "neuron", "distance"}
    matched = frame["neuron"].notna()
    assert matched.mean() > 0.9
    # a matched kink lies on its neuron's hyperplane
    lines = {r.index: r for r in result.engine.lines}
    W, b = result.model.W, result.model.b
    for _, row in frame[matched].head(20).iterrows():
        rec = lines[int(row["line"])]
        x = rec.u + row["t"] * rec.v
        i = int(row["neuron"])
        assert abs(W[i] @ x + b[i]) <= 1e-5 * (1 + abs(row["t"])) * abs(W[i] @ rec.v) + 1e-12


def test_lines_table_and_report(outputs):
    _, result, run, _ = outputs
    frame = pd.read_feather(run / "lines.arrow")
    assert len(frame) == len(result.engine.lines)
    assert frame["kind"].iloc[0] == "first"
    assert frame["queries"].sum() <= result.queries
    assert (frame["kinks_matched"] <= frame["kinks"]).all()
    report = json.loads((run / "report.json").read_text())
    assert report["queries"] == result.queries


def test_match_kinks_nearest_crossing_and_tolerance():
    W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) / np.array([[1.0], [1.0], [np.sqrt(2)]])
    b = np.array([-1.0, 2.0, 0.0])
    u, v = np.zeros(2), np.array([1.0, 0.0])
    # crossings: neuron 0 at t=1, neuron 1 never (parallel), neuron 2 at t=0
    nid, dist = match_kinks(W, b, u, v, np.array([1.0 + 1e-9, 0.0, 0.5]))
    assert nid.tolist() == [0, 2, -1]
    np.testing.assert_allclose(dist, [1e-9, 0.0, 0.5], atol=1e-15)


def test_write_run_outputs_refuses_other_objects(tmp_path):
    with pytest.raises(ConfigError, match="ExtractionResult returned by extract"):
        write_run_outputs(tmp_path, object())


def test_report_of_a_run_directory_written_from_python(outputs):
    """``write_run_outputs`` alone writes the extraction report, whose "queries" is the row
    count (``distextract extract`` writes a dict of counters): the summary and plots of
    ``distextract report`` read both (it raised AttributeError on an int)."""
    from distextract.report import write_report

    _, result, run, _ = outputs
    text, files = write_report(run)
    assert f"Queries: {result.queries:,} rows" in text
    assert "Probe lines:" in text and "kinks.png" in files
