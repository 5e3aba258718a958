"""ReluNetwork: shapes, prediction, and the Arrow (Feather v2) model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import distextract as dx


def _awkward(d: int = 5, k: int = 4, m: int = 3, seed: int = 0) -> dx.ReluNetwork:
    """A network whose floats do not survive anything short of a bit-exact round trip."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((k, d)) * np.logspace(-300, 300, k)[:, None]
    W[0, 0] = 5e-324  # smallest subnormal
    W[1, 1] = -0.0
    b = rng.standard_normal(k) / 3.0
    A = rng.standard_normal((m, k))
    A[0, 0] = np.nextafter(1.0, 2.0)
    c = np.array([1.0 / 3.0, -2.0 / 7.0, 1e308][:m])
    L = rng.standard_normal((m, d)) * 1e-17
    return dx.ReluNetwork(W, b, A, c, L, metadata={"note": "ünïcode", "seed": 7})


def test_predict_matches_the_formula():
    net = dx.targets.random_network(6, 8, 3, seed=1, skip=True)
    X = np.random.default_rng(1).standard_normal((20, 6))
    expected = np.maximum(X @ net.W.T + net.b, 0) @ net.A.T + X @ net.L.T + net.c
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-14, atol=1e-14)
    assert net.predict(X[0]).shape == (1, 3)  # one row given as a vector
    assert (net.input_dim, net.hidden_dim, net.output_dim) == (6, 8, 3)


def test_skip_term_defaults_to_zero_and_arrays_are_read_only():
    net = dx.ReluNetwork(np.ones((2, 3)), np.zeros(2), np.ones((1, 2)), np.zeros(1))
    assert_array_equal(net.L, np.zeros((1, 3)))
    with pytest.raises(ValueError):
        net.W[0, 0] = 2.0


def test_save_load_round_trip_is_bit_exact(tmp_path):
    net = _awkward()
    path = tmp_path / "model.arrow"
    net.save(path)
    back = dx.ReluNetwork.load(path)
    for name in ("W", "b", "A", "c", "L"):
        got, want = getattr(back, name), getattr(net, name)
        assert got.dtype == np.float64
        assert got.shape == want.shape
        # bit-exact, signed zeros and subnormals included
        assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    assert back.metadata == net.metadata
    assert not list(tmp_path.glob("*.tmp-*"))  # atomic write leaves no temporary file


def test_round_trip_of_an_extracted_model(tmp_path):
    target = dx.targets.random_network(8, 8, 2, seed=3)
    res = dx.extract(target, seed=0)
    path = tmp_path / "extracted.arrow"
    res.model.save(str(path))
    back = dx.ReluNetwork.load(str(path))
    X = np.random.default_rng(0).standard_normal((100, 8))
    assert_array_equal(back.predict(X), res.model.predict(X))
    assert back.metadata["queries"] == res.queries


def test_zero_neuron_network_round_trips(tmp_path):
    net = dx.ReluNetwork(np.zeros((0, 3)), np.zeros(0), np.zeros((2, 0)), np.array([1.0, 2.0]),
                         np.arange(6.0).reshape(2, 3))
    net.save(tmp_path / "empty.arrow")
    back = dx.ReluNetwork.load(tmp_path / "empty.arrow")
    assert back.hidden_dim == 0
    assert_array_equal(back.L, net.L)
    assert_array_equal(back.predict(np.ones((1, 3))), [[4.0, 14.0]])


def test_file_is_readable_by_pyarrow_and_pandas(tmp_path):
    import pandas as pd
    import pyarrow as pa
    from pyarrow import feather

    net = _awkward()
    path = tmp_path / "model.arrow"
    net.save(path)
    with pa.OSFile(str(path), "rb") as fh:  # an Arrow IPC *file* (Feather v2)
        table = pa.ipc.open_file(fh).read_all()
    assert table.num_rows == net.hidden_dim
    assert table.column_names == ["w", "b", "a"]
    meta = json.loads(table.schema.metadata[b"distextract"])
    assert (meta["input_dim"], meta["hidden_dim"], meta["output_dim"]) == (5, 4, 3)
    assert meta["format"] == "distextract.ReluNetwork"
    assert feather.read_table(path).equals(table)
    df = pd.read_feather(path)
    assert list(df.columns) == ["w", "b", "a"]
    assert_array_equal(np.stack(df["w"].to_numpy()), net.W)
    assert_array_equal(df["b"].to_numpy(), net.b)
    assert_array_equal(np.stack(df["a"].to_numpy()), net.A.T)


@pytest.mark.parametrize("kwargs,message", [
    ({"W": np.ones(3)}, r"W must have 2 dimension\(s\), got shape \(3,\)"),
    ({"b": np.ones(3)}, r"b must have shape \(2,\) to match W \(2, 4\), got \(3,\)"),
    ({"A": np.ones((1, 3))}, r"A must have shape \(1, 2\) \(m outputs, k neurons\), got \(1, 3\)"),
    ({"c": np.ones((1, 1))}, r"c must have 1 dimension\(s\), got shape \(1, 1\)"),
    ({"L": np.ones((1, 5))}, r"L must have shape \(1, 4\), got \(1, 5\)"),
    ({"W": np.full((2, 4), np.nan)}, "W holds NaN or Inf values"),
    ({"c": np.array([np.inf])}, "c holds NaN or Inf values"),
    ({"A": np.ones((0, 2)), "c": np.ones(0), "L": np.ones((0, 4))},
     "a network needs d >= 1 inputs and m >= 1 outputs, got d=4, m=0"),
])
def test_shape_errors_name_the_argument(kwargs, message):
    args = {"W": np.ones((2, 4)), "b": np.ones(2), "A": np.ones((1, 2)), "c": np.ones(1)}
    args.update(kwargs)
    with pytest.raises(dx.ConfigError, match=message):
        dx.ReluNetwork(**args)


def test_predict_checks_the_input_shape():
    net = dx.targets.random_network(4, 3, 1, seed=0)
    with pytest.raises(dx.ConfigError, match=r"X must have 4 columns, got shape \(2, 5\)"):
        net.predict(np.ones((2, 5)))
    with pytest.raises(dx.ConfigError, match=r"X must be a 2-D array of shape \(n, d\), got shape \(1, 2, 4\)"):
        net.predict(np.ones((1, 2, 4)))


def test_load_errors(tmp_path):
    with pytest.raises(dx.ConfigError, match="model file not found: .*missing.arrow"):
        dx.ReluNetwork.load(tmp_path / "missing.arrow")
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"not an arrow file")
    with pytest.raises(dx.ConfigError, match="cannot read model file .*junk.arrow"):
        dx.ReluNetwork.load(junk)
    import pyarrow as pa
    from pyarrow import feather

    plain = tmp_path / "plain.arrow"
    feather.write_feather(pa.table({"x": [1.0]}), str(plain))
    with pytest.raises(dx.ConfigError, match="the Arrow schema has no 'distextract' metadata"):
        dx.ReluNetwork.load(plain)
