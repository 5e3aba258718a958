"""HTTPOracle: client logic against httpx.MockTransport, then against the real test server."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import distextract as dx
from distextract._http import (
    PROXY_ENV,
    HTTPOracle,
    parse_retry_after,
    redact_url,
    retry_after_seconds,
    tls_verify,
)
from distextract._ratelimit import TokenBucket
from distextract.serve import start_server

URL = "http://api.test/v1/predict"
KEY = "sk-test-5f1d9c0e7a2b4c68"


def fake_f(X: np.ndarray) -> np.ndarray:
    """A deterministic (n, 2) answer used by the mock handlers."""
    return np.stack([X.sum(axis=1), X[:, 0] * 2.0], axis=1)


class Recorder:
    """A MockTransport handler with scripted failures; records every request."""

    def __init__(self, script=None, limit=None):
        self.script = list(script or [])  # responses (or exceptions) for the first calls
        self.limit = limit
        self.sizes: list[int] = []
        self.bodies: list[dict] = []
        self.headers: list[httpx.Headers] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        X = np.asarray(body["inputs"], dtype=np.float64)
        with self.lock:
            self.sizes.append(X.shape[0])
            self.bodies.append(body)
            self.headers.append(request.headers)
            step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(request)
        if step is not None:
            return step
        if self.limit is not None and X.shape[0] > self.limit:
            return httpx.Response(413, json={"error": "too many rows"})
        return httpx.Response(200, json={"outputs": fake_f(X).tolist()})


def mock_oracle(handler, d=3, **kwargs) -> HTTPOracle:
    kwargs.setdefault("backoff", 0.001)
    kwargs.setdefault("seed", 0)
    return HTTPOracle(URL, d, transport=httpx.MockTransport(handler), **kwargs)


@pytest.fixture
def X():
    return np.random.default_rng(1).normal(size=(25, 3))


# ------------------------------------------------------------------ mock transport
def test_floats_travel_with_full_precision_and_answers_come_back_in_order(X):
    rec = Recorder()
    X = X.copy()
    X[0] = [0.1 + 0.2, 1.0 / 3.0, 1e-300]
    with mock_oracle(rec, max_batch=10) as oracle:
        Y = oracle.query(X)
    assert sorted(rec.sizes) == [5, 10, 10]
    sent = np.vstack([np.asarray(b["inputs"]) for b in rec.bodies])
    assert_array_equal(np.sort(sent, axis=0), np.sort(X, axis=0))  # bit-exact round trip
    assert_array_equal(Y, fake_f(X))
    assert oracle.rows_paid == oracle.rows_answered == 25
    assert oracle.requests == 3
    assert oracle.output_dim == 2
    assert rec.headers[0]["content-type"] == "application/json"
    assert "authorization" not in rec.headers[0]


def test_custom_field_names():
    def handler(request):
        X = np.asarray(json.loads(request.content)["x"])
        return httpx.Response(200, json={"y": X[:, 0].tolist()})

    oracle = mock_oracle(handler, input_field="x", output_field="y")
    assert_array_equal(oracle.query(np.eye(3)), [[1.0], [0.0], [0.0]])


def test_413_halves_the_batch_and_lowers_max_batch(X):
    rec = Recorder(limit=8)
    oracle = mock_oracle(rec, max_batch=20)
    Y = oracle.query(X)
    assert_array_equal(Y, fake_f(X))
    assert oracle.max_batch <= 8
    assert max(s for s in rec.sizes[-3:]) <= 8
    assert oracle.retries["413"] == oracle.statuses[413] >= 2
    assert oracle.rows_paid == oracle.rows_answered == 25
    assert oracle.rows_refused == sum(s for s in rec.sizes if s > 8)


def test_413_for_a_single_row_is_permanent():
    oracle = mock_oracle(Recorder(limit=0), max_batch=2)
    with pytest.raises(dx.OracleHTTPError, match="HTTP 413 .* refuses even one row of d=3"):
        oracle.query(np.ones((2, 3)))


def test_429_honours_retry_after_through_the_limiter():
    calls = []

    class Spy(TokenBucket):
        def penalize(self, seconds):
            calls.append(seconds)
            super().penalize(seconds)

    rec = Recorder([httpx.Response(429, headers={"Retry-After": "0.2"}),
                    httpx.Response(429, headers={"Retry-After": "0.1"})])
    oracle = mock_oracle(rec, limiter=Spy())
    t0 = time.monotonic()
    assert_array_equal(oracle.query(np.ones((4, 3))), fake_f(np.ones((4, 3))))
    assert time.monotonic() - t0 >= 0.3 - 0.01
    assert calls == [0.2, 0.1]
    assert oracle.retries["429"] == 2
    assert oracle.rows_refused == 8 and oracle.rows_paid == 4


def test_429_with_retry_after_zero_still_pauses_with_backoff():
    """``Retry-After: 0`` (or a past HTTP date) asks for no wait; resending at once only
    meets the limit again, so the client pauses as for a 429 without the header (capped
    exponential backoff with jitter), and the limiter sees the refusals."""
    calls = []

    class Spy(TokenBucket):
        def penalize(self, seconds):
            calls.append(seconds)
            super().penalize(seconds)

    rec = Recorder([httpx.Response(429, headers={"Retry-After": "0"})] * 2)
    oracle = mock_oracle(rec, limiter=Spy(), backoff=0.05)
    assert_array_equal(oracle.query(np.ones((4, 3))), fake_f(np.ones((4, 3))))
    assert len(calls) == 2 and all(c > 0 for c in calls), calls
    assert oracle.retries["429"] == 2


def test_429_asking_for_too_long_a_wait_stops():
    rec = Recorder([httpx.Response(429, headers={"Retry-After": "3600"})])
    with pytest.raises(dx.OracleHTTPError, match="asks to wait 3600 s, more than max_retry_after"):
        mock_oracle(rec, max_retry_after=60).query(np.ones((1, 3)))


def test_persistent_429_gives_up():
    rec = Recorder([httpx.Response(429)] * 3)
    with pytest.raises(dx.OracleHTTPError, match="still rate limited .* after 2 retries"):
        mock_oracle(rec, rate_limit_retries=2).query(np.ones((1, 3)))


def test_idle_sender_threads_exit_and_start_again(monkeypatch, X):
    import distextract._http as http_module

    monkeypatch.setattr(http_module, "SENDER_IDLE_S", 0.05)
    oracle = mock_oracle(Recorder(), max_batch=10, max_in_flight=3)
    assert_array_equal(oracle.query(X), fake_f(X))
    deadline = time.monotonic() + 5
    while oracle._senders and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not oracle._senders  # an oracle nobody closes leaves no threads behind
    assert_array_equal(oracle.query(X), fake_f(X))
    oracle.close()
    assert oracle.rows_paid == 50


def test_retry_after_ms_is_preferred_to_whole_seconds():
    rec = Recorder([httpx.Response(429, headers={"Retry-After": "1", "Retry-After-Ms": "40"})])
    oracle = mock_oracle(rec)
    t0 = time.monotonic()
    oracle.query(np.ones((2, 3)))
    elapsed = time.monotonic() - t0
    assert 0.035 <= elapsed < 0.5
    assert oracle.retries["429"] == 1
    headers = httpx.Headers({"Retry-After": "2", "Retry-After-Ms": "soon"})
    assert retry_after_seconds(headers) == 2.0  # unreadable ms: the standard header
    assert retry_after_seconds(httpx.Headers({"Retry-After-Ms": "12.5"})) == 0.0125


def test_real_server_sends_retry_after_ms_when_asked(net):
    # one token a second: the second request is refused unless the first took a whole
    # second (at 5 a second a loaded machine let the bucket refill between them)
    with start_server(net, rate=1, burst=1, retry_after_ms=True) as srv:
        r1 = httpx.post(srv.url, json={"inputs": [[0.0] * 4]})
        r2 = httpx.post(srv.url, json={"inputs": [[0.0] * 4]})
    assert r1.status_code == 200 and r2.status_code == 429
    assert r2.headers["retry-after"] == "1"
    assert 1 <= int(r2.headers["retry-after-ms"]) <= 1000


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(date, now=1445412480.0) == pytest.approx(10.0)


def test_5xx_timeouts_and_resets_are_retried_and_counted():
    req = httpx.Request("POST", URL)
    rec = Recorder([httpx.Response(503, text="busy"), httpx.ReadTimeout("slow", request=req),
                    httpx.RemoteProtocolError("Server disconnected", request=req),
                    httpx.ConnectError("refused", request=req)])
    oracle = mock_oracle(rec, retries=4)
    assert_array_equal(oracle.query(np.ones((5, 3))), fake_f(np.ones((5, 3))))
    assert oracle.retries == {"429": 0, "5xx": 1, "timeout": 1, "reset": 1, "connect": 1,
                              "413": 0}
    # The timed-out and reset requests were sent: the server may have computed them.
    assert oracle.rows_paid == 15
    assert oracle.rows_answered == 5
    assert oracle.rows_refused == 5  # the 503
    assert oracle.requests == 5


def test_transient_failures_exhausting_retries_name_the_last_failure():
    rec = Recorder([httpx.Response(500, json={"error": "boom"})] * 3)
    with pytest.raises(dx.OracleHTTPError,
                       match=r"giving up on .* after 3 attempts; last failure: HTTP 500: boom; "
                             r"raise retries= \(now 2\)") as info:
        mock_oracle(rec, retries=2).query(np.ones((1, 3)))
    assert info.value.status == 500


def test_connection_refused_is_not_paid():
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    oracle = mock_oracle(refuse, retries=1)
    with pytest.raises(dx.OracleHTTPError, match="cannot connect to .*Connection refused .*"
                                                 "tried 2 times.* check the URL"):
        oracle.query(np.ones((3, 3)))
    assert oracle.rows_paid == 0 and oracle.retries["connect"] == 2


def test_permanent_4xx_quotes_the_server_message_truncated():
    long_msg = "inputs rejected: " + "x" * 1000
    rec = Recorder([httpx.Response(422, json={"detail": long_msg})])
    oracle = mock_oracle(rec)
    with pytest.raises(dx.OracleHTTPError, match=r"HTTP 422 from http://api.test/v1/predict: "
                                                 r"inputs rejected: x+\.\.\. \(truncated\)") as info:
        oracle.query(np.ones((2, 3)))
    assert info.value.status == 422
    assert len(str(info.value)) < 500
    assert oracle.requests == 1  # not retried
    assert oracle.rows_refused == 2 and oracle.rows_paid == 0


@pytest.mark.parametrize("response, error, match", [
    (httpx.Response(200, text="<html><body>Welcome</body></html>",
                    headers={"content-type": "text/html"}),
     dx.OracleValueError, r"body that is not JSON \(text/html\): '<html><body>Welcome"),
    (httpx.Response(200, json={"result": [[1.0]]}),
     dx.OracleShapeError, r"without an 'outputs' field \(got \['result'\]\); set output_field="),
    (httpx.Response(200, json={"outputs": [[1.0, 2.0]] * 4}),
     dx.OracleShapeError, r"answered shape \(4, 2\) for 5 input rows; expected \(5, m\)"),
    (httpx.Response(200, json={"outputs": [[1.0, 2.0], [1.0]] + [[1.0, 2.0]] * 3}),
     dx.OracleShapeError, r"not an \(n, m\) array of numbers for 5 rows"),
    (httpx.Response(200, json={"outputs": [[1.0, None]] + [[1.0, 2.0]] * 4}),
     dx.OracleValueError, r"NaN, Inf or null in 1 of 5 rows"),
    (httpx.Response(200, content=b'{"outputs": [[NaN, 1], [1, 1], [1, 1], [1, 1], [1, 1]]}'),
     dx.OracleValueError, r"NaN, Inf or null in 1 of 5 rows"),
])
def test_unusable_answers_are_clear_errors(response, error, match):
    oracle = mock_oracle(Recorder([response]))
    with pytest.raises(error, match=match):
        oracle.query(np.ones((5, 3)))
    assert oracle.rows_paid == 5 and oracle.rows_answered == 0


def test_output_dim_must_stay_the_same():
    rec = Recorder([None, httpx.Response(200, json={"outputs": [[1.0, 2.0, 3.0]]})])
    oracle = mock_oracle(rec)
    oracle.query(np.ones((1, 3)))
    with pytest.raises(dx.OracleShapeError, match="answered 3 outputs per row; earlier "
                                                  "answers had 2"):
        oracle.query(np.ones((1, 3)))


def test_budget_is_checked_before_sending_and_never_exceeded_under_concurrency():
    rec = Recorder()
    oracle = mock_oracle(rec, budget=100, max_batch=7, max_in_flight=4)
    with pytest.raises(dx.BudgetExhausted, match="budget=100 rows, already sent 0, next "
                                                 "request needs 150"):
        oracle.query(np.ones((150, 3)))
    assert rec.sizes == []
    errors = []

    def spend():
        try:
            while True:
                oracle.query(np.ones((9, 3)))
        except dx.BudgetExhausted as exc:
            errors.append(exc)

    threads = [threading.Thread(target=spend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6
    assert oracle.rows_paid == sum(rec.sizes) <= 100
    assert oracle.rows_paid >= 100 - 9 - 7 * 4  # it did spend most of the budget


def test_query_stream_yields_answered_batches_before_raising():
    def handler(request):
        X = np.asarray(json.loads(request.content)["inputs"])
        if np.any(X[:, 0] == 99.0):
            return httpx.Response(400, json={"error": "row rejected"})
        return httpx.Response(200, json={"outputs": fake_f(X).tolist()})

    X = np.ones((12, 3))
    X[5, 0] = 99.0
    oracle = mock_oracle(handler, max_batch=4, max_in_flight=1)
    got = []
    with pytest.raises(dx.OracleHTTPError, match="HTTP 400 .*row rejected"):
        for rows, Y in oracle.query_stream(X):
            got.append((rows.start, rows.stop))
            assert_array_equal(Y, fake_f(X[rows]))
    assert (0, 4) in got and (4, 8) not in got


def test_api_key_is_sent_but_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("DX_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)

    def echo_key(request):
        # A careless server that echoes the credentials in its error message.
        return httpx.Response(401, json={"error": f"bad token {request.headers['authorization']}"})

    rec = Recorder([None, echo_key])
    oracle = mock_oracle(rec, api_key_env="DX_TEST_KEY")
    oracle.query(np.ones((2, 3)))
    assert rec.headers[0]["authorization"] == f"Bearer {KEY}"
    with pytest.raises(dx.OracleHTTPError, match="HTTP 401 .*bad token Bearer <secret>; check "
                                                 "the API key in environment variable "
                                                 "DX_TEST_KEY") as info:
        oracle.query(np.ones((2, 3)))
    texts = [repr(oracle), str(oracle), json.dumps(oracle.describe()), str(info.value),
             repr(info.value), caplog.text, json.dumps(oracle.stats()), repr(vars(oracle))]
    for text in texts:
        assert KEY not in text
    assert oracle.describe()["api_key_env"] == "DX_TEST_KEY"


def test_missing_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DX_MISSING_KEY", raising=False)
    with pytest.raises(dx.ConfigError, match="environment variable DX_MISSING_KEY "
                                             r"\(api_key_env\) is not set"):
        HTTPOracle(URL, 3, api_key_env="DX_MISSING_KEY")


@pytest.mark.parametrize("kwargs, match", [
    ({"url": "ftp://x"}, "url must start with http:// or https://, got 'ftp://x'"),
    ({"max_batch": 0}, "max_batch must be >= 1, got 0"),
    ({"timeout": 0}, "timeout must be a positive number of seconds"),
    ({"rate": 5, "limiter": TokenBucket()}, "give either limiter= or rate="),
    ({"limiter": object()}, "limiter must offer acquire"),
    ({"budget": 0}, "budget must be >= 1"),
])
def test_bad_settings_name_the_argument(kwargs, match):
    kwargs = {"url": URL, **kwargs}
    with pytest.raises(dx.ConfigError, match=match):
        HTTPOracle(input_dim=3, **kwargs)


def test_bad_inputs_and_closed_oracle():
    oracle = mock_oracle(Recorder())
    with pytest.raises(dx.ConfigError, match="X must have 3 columns"):
        oracle.query(np.ones((2, 4)))
    with pytest.raises(dx.ConfigError, match="X holds NaN or Inf"):
        oracle.query(np.full((1, 3), np.nan))
    with pytest.raises(TypeError, match="HTTPOracle cannot be pickled"):
        pickle.dumps(oracle)
    oracle.close()
    with pytest.raises(dx.ConfigError, match="this HTTPOracle is closed"):
        oracle.query(np.ones((1, 3)))


def test_redact_url_hides_credentials():
    assert redact_url("https://user:pw@h.test/p?api_key=abc&model=v2") == \
        "https://h.test/p?api_key=%2A%2A%2A&model=v2"
    oracle = HTTPOracle("https://u:topsecret@h.test/p?token=zzz", 2)
    assert "topsecret" not in repr(oracle) and "zzz" not in json.dumps(oracle.describe())


# ------------------------------------------------------------------------ real server
@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(7)
    return dx.ReluNetwork(rng.normal(size=(12, 4)), rng.normal(size=12),
                          rng.normal(size=(2, 12)), rng.normal(size=2))


@pytest.fixture
def Xr():
    return np.random.default_rng(3).normal(size=(192, 4))


def real(url, **kwargs) -> HTTPOracle:
    kwargs.setdefault("backoff", 0.005)
    kwargs.setdefault("seed", 0)
    return HTTPOracle(url, 4, **kwargs)


def test_real_server_exact_answers_and_concurrency(net, Xr):
    with start_server(net, latency_ms=200) as srv, real(srv.url, max_batch=16,
                                                        max_in_flight=12) as oracle:
        Y = oracle.query(Xr)
        assert_array_equal(Y, net.predict(Xr))
        stats = srv.stats()
        # 12 requests of 200 ms each, in flight together (one after another: 1)
        assert stats["peak_concurrent"] >= 8, stats
        assert stats["rows_served"] == oracle.rows_paid == 192


def test_real_429_pauses_all_in_flight_traffic(net, Xr):
    acquired: list[float] = []
    pauses: list[float] = []

    class Spy(TokenBucket):
        def acquire(self, rows=1):
            super().acquire(rows)
            acquired.append(time.monotonic())

        def penalize(self, seconds):
            pauses.append(time.monotonic())
            super().penalize(seconds)

    with start_server(net, rate=20, burst=2) as srv:
        with real(srv.url, max_batch=8, max_in_flight=6, limiter=Spy()) as oracle:
            t0 = time.monotonic()
            Y = oracle.query(Xr[:48])
            assert_array_equal(Y, net.predict(Xr[:48]))
            assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 honoured
        stats = srv.stats()
    assert oracle.retries["429"] == stats["statuses"]["429"] >= 1
    assert oracle.rows_paid == stats["rows_served"] == 48
    for p in pauses:  # nobody sent while a pause was running
        assert not [a for a in acquired if p + 0.01 < a < p + 0.95]


def test_real_strict_limit_slows_the_pace_instead_of_being_refused_on_and_on(net):
    """A server whose limit keeps no burst (requests must arrive 1/rate apart) refuses the
    requests that arrival jitter brings early. Pacing at its exact rate, the client was
    refused 64 times for 120 answers (each 429 pausing it a whole second); the limiter now
    slows its pace when the server refuses it again right after a pause."""
    X = np.random.default_rng(3).normal(size=(960, 4))
    with start_server(net, rate=50, burst=1, latency_ms=5) as srv:
        with real(srv.url, max_batch=8, max_in_flight=8, rate=50) as oracle:
            for i in range(0, X.shape[0], 64):
                assert_array_equal(oracle.query(X[i:i + 64]), net.predict(X[i:i + 64]))
        stats = srv.stats()
    assert stats["statuses"]["200"] == 120
    assert stats["statuses"].get("429", 0) <= 16, stats["statuses"]
    assert oracle.limiter.pace.factor < 1.0


def test_real_413_split(net, Xr):
    with start_server(net, max_batch=16) as srv, real(srv.url, max_batch=64) as oracle:
        # rows come back in other batch compositions than net.predict's: last-ulp differences
        assert_allclose(oracle.query(Xr[:100]), net.predict(Xr[:100]), rtol=1e-13, atol=1e-14)
        stats = srv.stats()
    assert oracle.max_batch <= 16
    assert oracle.retries["413"] == stats["statuses"]["413"]
    assert oracle.rows_paid == stats["rows_served"] == 100


def test_real_503_and_dropped_connections_paid_equals_served(net, Xr):
    with start_server(net, fail_rate=0.2, drop_rate=0.15, seed=3) as srv, \
            real(srv.url, max_batch=8, retries=20) as oracle:
        assert_array_equal(oracle.query(Xr), net.predict(Xr))
        stats = srv.stats()
    assert stats["dropped"] >= 1 and stats["statuses"]["503"] >= 1
    assert oracle.retries["5xx"] == stats["statuses"]["503"]
    assert oracle.retries["reset"] == stats["dropped"]
    assert oracle.rows_paid == stats["rows_served"] > oracle.rows_answered == 192


def test_real_timeouts_are_paid_once_the_server_computed_them(net):
    with start_server(net, latency_ms=300) as srv:
        oracle = real(srv.url, timeout=0.1, retries=1)
        with pytest.raises(dx.OracleHTTPError, match="after 2 attempts; last failure: "
                                                     "ReadTimeout after 0.1 s"):
            oracle.query(np.ones((3, 4)))
        time.sleep(0.5)
        assert oracle.retries["timeout"] == 2
        assert oracle.rows_paid == srv.stats()["rows_served"] == 6
        oracle.close()


def test_real_401_wrong_or_missing_key(net, monkeypatch):
    monkeypatch.setenv("DX_SERVER_KEY", KEY)
    monkeypatch.setenv("DX_WRONG_KEY", "not-the-key")
    with start_server(net, api_key_env="DX_SERVER_KEY") as srv:
        with pytest.raises(dx.OracleHTTPError, match="HTTP 401 .*missing or invalid API key.*"
                                                     "the server wants an API key"):
            real(srv.url).query(np.ones((1, 4)))
        with pytest.raises(dx.OracleHTTPError, match="check the API key in environment "
                                                     "variable DX_WRONG_KEY"):
            real(srv.url, api_key_env="DX_WRONG_KEY").query(np.ones((1, 4)))
        good = real(srv.url, api_key_env="DX_SERVER_KEY")
        assert_array_equal(good.query(np.ones((2, 4))), net.predict(np.ones((2, 4))))
        assert srv.stats()["statuses"]["401"] == 2


def test_real_permanent_4xx_names_status_and_message(net):
    with start_server(net) as srv:
        oracle = HTTPOracle(srv.url, 5)
        with pytest.raises(dx.OracleHTTPError, match=r"HTTP 400 from http://127\.0\.0\.1:\d+/: "
                                                     r"inputs must have shape \(n, 4\), got "
                                                     r"\(2, 5\)"):
            oracle.query(np.ones((2, 5)))


@pytest.mark.parametrize("corrupt, error, match", [
    ("html", dx.OracleValueError, r"not JSON \(text/html\): '<html>"),
    ("shape", dx.OracleShapeError, r"answered shape \(2, 2\) for 3 input rows"),
    ("nan", dx.OracleValueError, "NaN, Inf or null in 1 of 3 rows"),
])
def test_real_misbehaving_server(net, corrupt, error, match):
    with start_server(net, corrupt=corrupt) as srv, real(srv.url) as oracle:
        with pytest.raises(error, match=match):
            oracle.query(np.ones((3, 4)))
        assert oracle.rows_paid == srv.stats()["rows_served"] == 3


def test_real_budget_never_exceeded_with_concurrency(net):
    with start_server(net, latency_ms=10) as srv:
        oracle = real(srv.url, budget=200, max_batch=16, max_in_flight=8)
        failures = []

        def spend(seed):
            rng = np.random.default_rng(seed)
            try:
                while True:
                    oracle.query(rng.normal(size=(40, 4)))
            except dx.BudgetExhausted as exc:
                failures.append(exc)

        threads = [threading.Thread(target=spend, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        oracle.close()
        assert len(failures) == 4
        assert oracle.rows_paid == srv.stats()["rows_served"] <= 200


def test_real_small_concurrent_queries_share_requests(net):
    """Coalescing: 12 threads asking 3 rows at a time under a 20 requests/s limit. Each thread
    gets exactly its own rows' answers; the server sees few, full requests; counts are exact."""
    per_thread, rounds = 3, 5
    results: dict[int, list] = {}

    with start_server(net) as srv:
        oracle = real(srv.url, max_batch=16, max_in_flight=4, rate=20)

        def ask(seed):
            rng = np.random.default_rng(seed)
            got = []
            for _ in range(rounds):
                X = rng.normal(size=(per_thread, 4))
                got.append((X, oracle.query(X)))
            results[seed] = got

        threads = [threading.Thread(target=ask, args=(s,)) for s in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        oracle.close()
        stats = srv.stats()
    for got in results.values():
        for X, Y in got:  # the server's product over a mixed batch: last-ulp differences only
            assert_allclose(Y, net.predict(X), rtol=1e-13, atol=1e-14)
    total = 12 * rounds * per_thread
    assert oracle.rows_paid == oracle.rows_answered == stats["rows_served"] == total
    assert oracle.requests == stats["requests"]
    # 60 queries of 3 rows would be 60 requests one by one; shared, about total / 16
    assert oracle.requests <= 20
    assert oracle.requests_shared >= 5
    assert max(int(k) for k in stats["batch_rows"]) == 16


def test_real_budget_exact_with_coalesced_small_queries(net):
    """Small queries of 1-7 rows from 6 threads coalesced into shared requests: every answered
    query is exact, every thread ends with BudgetExhausted, and the budget is never exceeded
    (queued rows count against it before they are sent)."""
    budget = 150
    failures, wrong = [], []

    with start_server(net, latency_ms=5) as srv:
        oracle = real(srv.url, budget=budget, max_batch=16, max_in_flight=3, rate=100)

        def spend(seed):
            rng = np.random.default_rng(seed)
            try:
                while True:
                    X = rng.normal(size=(int(rng.integers(1, 8)), 4))
                    if not np.allclose(oracle.query(X), net.predict(X), rtol=1e-13,
                                       atol=1e-14):
                        wrong.append(seed)
            except dx.BudgetExhausted as exc:
                failures.append(exc)

        threads = [threading.Thread(target=spend, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        oracle.close()
        stats = srv.stats()
    assert not wrong and len(failures) == 6
    assert oracle.rows_paid == oracle.rows_answered == stats["rows_served"] <= budget
    assert oracle.rows_paid > budget - 8  # only a last query too large to fit was refused
    assert oracle.requests_shared >= 1


def test_query_stream_of_coalesced_query_gives_each_row_once(net):
    """A query larger than max_batch, sent together with others, streams every row exactly
    once (slices may be cut anywhere, rows may ride in requests shared with other queries)."""
    X = np.random.default_rng(5).normal(size=(37, 4))
    with start_server(net, latency_ms=5) as srv, real(srv.url, max_batch=16, max_in_flight=2,
                                                      rate=50) as oracle:
        side = threading.Thread(target=lambda: oracle.query(np.ones((5, 4))))
        side.start()
        seen = np.zeros(37, dtype=int)
        for rows, Y in oracle.query_stream(X):
            seen[rows] += 1
            assert_allclose(Y, net.predict(X[rows]), rtol=1e-13, atol=1e-14)
        side.join()
    assert (seen == 1).all()


def test_real_unreachable_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    oracle = HTTPOracle(f"http://127.0.0.1:{port}/", 2, retries=1, backoff=0.01)
    with pytest.raises(dx.OracleHTTPError, match=rf"cannot connect to http://127\.0\.0\.1:{port}/"
                                                 r": ConnectError.*check the URL"):
        oracle.query(np.ones((1, 2)))
    assert oracle.rows_paid == 0


def test_real_key_never_logged(net, monkeypatch, caplog):
    monkeypatch.setenv("DX_SERVER_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with start_server(net, api_key_env="DX_SERVER_KEY", fail_rate=0.3, seed=1) as srv:
        oracle = real(srv.url, api_key_env="DX_SERVER_KEY", max_batch=4, retries=30)
        oracle.query(np.ones((16, 4)))
        assert oracle.retries["5xx"] >= 1  # retries were logged
    assert "503" in caplog.text or "transient" in caplog.text
    assert KEY not in caplog.text


def test_oracle_layer_is_exported():
    assert {"HTTPOracle", "JournaledOracle", "RateLimiter", "TokenBucket",
            "prepare_run_dir"} <= set(dx.__all__)
    assert dx.HTTPOracle is HTTPOracle


class _Stamped:
    """A network stream that records when each write reached it (the pacer's collaborator)."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, int]] = []

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.writes.append((time.monotonic(), len(buffer)))


def test_wire_pacer_writes_a_body_at_its_slot_and_spaced_after_the_previous():
    from distextract._http import _WirePacer

    pacer, stream = _WirePacer(), _Stamped()
    t0 = time.monotonic()
    pacer.arm(t0 + 0.05, 0.0, 100)
    pacer.write(stream, b"h" * 30, None)  # the headers: not armed for their length, at once
    pacer.write(stream, b"b" * 100, None)  # the body: held until its slot
    assert stream.writes[0][0] - t0 < 0.04 <= stream.writes[1][0] - t0
    # a body whose slot has passed still leaves a gap after the previous one
    pacer.arm(t0, 0.04, 10)
    pacer.write(stream, b"c" * 10, None)
    assert stream.writes[2][0] - stream.writes[1][0] >= 0.04 - 1e-3  # from the start of a write
    assert pacer.stats()["paced"] == 2 and pacer.stats()["spaced"] == 1


def test_wire_pacer_takes_a_new_slot_for_a_late_body_of_a_shared_limiter():
    from distextract._http import _WirePacer

    pacer, stream = _WirePacer(), _Stamped()
    new_slots = []

    def reslot() -> float:
        new_slots.append(time.monotonic() + 0.02)
        return new_slots[-1]

    pacer.arm(time.monotonic() - 0.1, 0.01, 5, reslot)  # 100 ms late, 10 ms gap
    pacer.write(stream, b"x" * 5, None)
    assert len(new_slots) == 1 and stream.writes[0][0] >= new_slots[0]
    pacer.arm(time.monotonic() + 0.001, 0.01, 5, reslot)  # on time: its own slot
    pacer.write(stream, b"y" * 5, None)
    assert len(new_slots) == 1 and pacer.stats()["reslotted"] == 1


def test_wire_pacer_lets_late_bodies_catch_up_at_most_burst_at_once():
    """Bodies whose slots passed while their process stalled leave ``burst`` back to back,
    then one gap apart (a GCRA at the wire); all at once, five met a server keeping a burst
    of 5 with its bucket empty."""
    from distextract._http import _WirePacer

    pacer, stream = _WirePacer(), _Stamped()
    late = time.monotonic() - 0.2  # every slot 200 ms past
    for i in range(6):
        pacer.arm(late + 0.01 * i, 0.02, 7, None, None, 3)
        pacer.write(stream, b"w" * 7, None)
    t = [w[0] - stream.writes[0][0] for w in stream.writes]
    assert t[2] < 0.01  # three back to back
    for i in range(3, 6):  # then one 20 ms gap each
        assert t[i] >= 0.02 * (i - 2) - 1e-3, (i, t)
    assert pacer.stats()["spaced"] == 3


def test_paced_requests_go_through_the_wire_pacer_of_httpx_transport(X):
    """On httpx's own transport every paced body is written by the wire pacer (a test that
    fails if another httpx no longer lets the client hook its connections' writes)."""
    net = dx.targets.random_network(3, 5, 2, seed=0)
    X = np.vstack([X, X])[:20]
    with start_server(net) as server:
        oracle = HTTPOracle(server.url, 3, max_batch=4, rate=200, max_in_flight=2)
        try:
            assert_allclose(oracle.query(X), net.predict(X), rtol=1e-12)
            stats = oracle.stats()
        finally:
            oracle.close()
    assert stats["wire"]["paced"] == stats["requests"] == 5


def test_wire_pacer_holds_a_body_let_go_early_until_the_limiters_pause_ends():
    """A quota hold (X-RateLimit-Remaining: 0) or a 429 that comes after a body was let go
    early (the lead) still holds it: it would be refused during the pause."""
    from distextract._http import _WirePacer

    pacer, stream = _WirePacer(), _Stamped()
    t0 = time.monotonic()
    pauses = [t0 + 0.03]
    pacer.arm(t0 + 0.005, 0.0, 4, None, lambda: pauses[-1])
    pacer.write(stream, b"z" * 4, None)
    assert stream.writes[0][0] >= t0 + 0.03


def test_token_bucket_reports_the_end_of_its_pause():
    bucket = TokenBucket(rate=50)
    assert bucket.resume_at() == -np.inf
    bucket.hold(0.2)
    assert bucket.resume_at() == pytest.approx(time.monotonic() + 0.2, abs=0.05)


def test_http_url_client_loads_no_ca_bundle_and_fails_closed_on_tls(net, monkeypatch):
    """An ``http://`` oracle's client gets a TLS context with no CA loaded (httpx loads the
    CA bundle when the client is made: ~50 ms of each process's start) that would refuse any
    certificate; it answers over plain HTTP as before. ``https://`` and a proxy from the
    environment keep httpx's default."""
    import ssl

    for var in PROXY_ENV:
        monkeypatch.delenv(var, raising=False)
    ctx = tls_verify("http://127.0.0.1:1/")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs() == []
    assert tls_verify("HTTPS://api.test/") is True
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.test:8443")
    assert tls_verify("http://127.0.0.1:1/") is True
    monkeypatch.delenv("HTTP_PROXY")
    with start_server(net) as srv:
        oracle = HTTPOracle(srv.url, 4)
        try:
            pool_ctx = oracle._client._transport._pool._ssl_context
            assert pool_ctx.get_ca_certs() == [] and pool_ctx.verify_mode == ssl.CERT_REQUIRED
            X = np.random.default_rng(0).normal(size=(5, 4))
            assert_allclose(oracle.query(X), net(X), rtol=1e-12)
        finally:
            oracle.close()
