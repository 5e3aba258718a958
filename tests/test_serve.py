"""The test server: protocol, limits, failures, counters, process mode, CLI."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose, assert_array_equal

import distextract as dx
from distextract._oracle import output_transform
from distextract.cli import main
from distextract.serve import ServerConfig, launch_server_process, start_server


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(2)
    return dx.ReluNetwork(rng.normal(size=(9, 4)), rng.normal(size=9),
                          rng.normal(size=(3, 9)), rng.normal(size=3))


X = np.random.default_rng(0).normal(size=(6, 4))


def post(url, rows=X, **kw):
    return httpx.post(url, json={"inputs": np.asarray(rows).tolist()}, timeout=10, **kw)


@pytest.mark.parametrize("output", ["float64", "float32", "round:3", "softmax"])
def test_answers_follow_the_protocol_and_output_kind(net, output):
    with start_server(net, output=output) as srv:
        resp = post(srv.url)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        Y = np.asarray(resp.json()["outputs"])
        assert_array_equal(Y, output_transform(output)(net.predict(X)))
        stats = srv.stats()
    assert stats["rows_served"] == 6 and stats["requests"] == 1
    assert stats["statuses"] == {"200": 1}
    if output == "softmax":
        assert_allclose(Y.sum(axis=1), 1.0, rtol=1e-12)


def test_stats_endpoint_and_unknown_paths(net):
    with start_server(net) as srv:
        post(srv.url)
        stats = httpx.get(srv.url + "stats").json()
        assert stats["rows_served"] == 6 and stats["input_dim"] == 4 and stats["output_dim"] == 3
        resp = httpx.get(srv.url + "nope")
        assert resp.status_code == 404 and "GET /stats" in resp.json()["error"]


def test_bad_requests_get_400_with_a_reason(net):
    with start_server(net) as srv:
        resp = httpx.post(srv.url, content=b"{oops", timeout=5)
        assert resp.status_code == 400 and "body must be JSON" in resp.json()["error"]
        resp = post(srv.url, np.ones((2, 3)))
        assert resp.status_code == 400
        assert resp.json()["error"] == "inputs must have shape (n, 4), got (2, 3)"
        assert srv.stats()["rows_served"] == 0


def test_api_key(net, monkeypatch):
    monkeypatch.setenv("DX_SERVE_KEY", "k-123")
    with start_server(net, api_key_env="DX_SERVE_KEY") as srv:
        assert post(srv.url).status_code == 401
        assert post(srv.url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(srv.url, headers={"Authorization": "Bearer k-123"}).status_code == 200
        assert srv.stats()["statuses"] == {"200": 1, "401": 2}
        assert srv.stats()["rows_served"] == 6


def test_batch_limit_413(net):
    with start_server(net, max_batch=5) as srv:
        resp = post(srv.url)
        assert resp.status_code == 413
        assert resp.json()["error"] == "batch of 6 rows exceeds the limit of 5 rows"
        assert post(srv.url, X[:5]).status_code == 200


def test_rate_limit_429_with_retry_after(net):
    with start_server(net, rate=2, burst=1) as srv:
        codes = [post(srv.url, X[:1]) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 429, 429]
        assert codes[1].headers["retry-after"] == "1"
        time.sleep(0.55)
        assert post(srv.url, X[:1]).status_code == 200  # refilled at 2/s
        assert srv.stats()["rows_served"] == 2


def test_failures_and_drops(net):
    with start_server(net, fail_rate=1.0) as srv:
        resp = post(srv.url)
        assert resp.status_code == 503 and "temporarily unavailable" in resp.json()["error"]
        assert srv.stats()["rows_served"] == 0
    with start_server(net, drop_rate=1.0) as srv:
        with pytest.raises(httpx.RemoteProtocolError):
            post(srv.url)
        stats = srv.stats()
        assert stats["dropped"] == 1 and stats["rows_served"] == 6


def test_random_failures_are_seeded(net):
    def codes(seed):
        with start_server(net, fail_rate=0.5, seed=seed) as srv:
            return [post(srv.url, X[:1]).status_code for _ in range(12)]

    first = codes(4)
    assert first == codes(4)
    assert 200 in first and 503 in first


def test_many_concurrent_requests_overlap_their_latency(net):
    with start_server(net, latency_ms=200) as srv:
        results = []

        def one():
            with httpx.Client(timeout=10) as client:
                results.append(client.post(srv.url, json={"inputs": X.tolist()}).status_code)

        threads = [threading.Thread(target=one) for _ in range(48)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    assert results == [200] * 48
    # serial service would take 48 × 0.2 s; overlapping requests take a fraction of it
    # (loose bound: this machine is shared and CI runs beside other work)
    assert elapsed < 48 * 0.2 / 2


@pytest.mark.parametrize("kwargs, match", [
    ({"fail_rate": 1.5}, r"fail_rate must be a probability in \[0, 1\], got 1.5"),
    ({"drop_rate": -0.1}, "drop_rate must be a probability"),
    ({"latency_ms": -1}, "latency_ms must be >= 0"),
    ({"rate": 0}, "rate must be > 0 requests/s"),
    ({"max_batch": 0}, "max_batch must be >= 1"),
    ({"corrupt": "bits"}, "corrupt must be one of"),
    ({"output": "int8"}, "unknown output kind 'int8'"),
    ({"api_key_env": "DX_NOT_SET_ANYWHERE"}, "environment variable DX_NOT_SET_ANYWHERE"),
])
def test_bad_server_settings(kwargs, match):
    with pytest.raises(dx.ConfigError, match=match):
        ServerConfig(**kwargs)


def test_port_in_use_is_a_clear_error(net):
    with start_server(net) as srv:
        port = int(srv.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(dx.ConfigError, match=rf"cannot listen on 127.0.0.1:{port}"):
            start_server(net, port=port)


def test_server_process_reports_url_counts_and_stops(net, tmp_path):
    model = tmp_path / "net.arrow"
    net.save(model)
    with launch_server_process(model, max_batch=4, seed=1) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        assert post(proc.url, X[:3]).status_code == 200
        assert post(proc.url, X).status_code == 413
        assert proc.stats()["rows_served"] == 3
        out = proc.stop()
    assert "rows served: 3" in out
    assert proc.proc.returncode == 0


def test_server_process_kill_9(net, tmp_path):
    model = tmp_path / "net.arrow"
    net.save(model)
    proc = launch_server_process(model)
    proc.kill()
    assert proc.proc.returncode == -9
    with pytest.raises(httpx.ConnectError):
        post(proc.url)


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["serve", str(tmp_path / "missing.arrow")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: model file not found: {tmp_path / 'missing.arrow'}"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    net_path = tmp_path / "net.arrow"
    dx.ReluNetwork(np.ones((1, 2)), [0.0], [[1.0]], [0.0]).save(net_path)
    result = runner.invoke(main, ["serve", str(net_path), "--fail-rate", "2"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: fail_rate must be a probability")
    assert "Traceback" not in result.output


def test_cli_help_lists_serve():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "serve" in result.output


def test_server_process_stops_on_sigint_even_when_started_with_sigint_ignored(net, tmp_path):
    """A parent that ignores SIGINT (nohup, some test runners beside Ray) passes SIG_IGN on to
    the server process; it must still stop cleanly on stop()'s SIGINT, not be killed after
    the timeout with its final counts lost."""
    import signal

    model = tmp_path / "net.arrow"
    net.save(model)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with launch_server_process(model, max_batch=4, seed=1) as proc:
            assert post(proc.url, X[:3]).status_code == 200
            out = proc.stop(timeout=8.0)
    finally:
        signal.signal(signal.SIGINT, before)
    assert "rows served: 3" in out
    assert proc.proc.returncode == 0
