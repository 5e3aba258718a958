"""JournaledOracle and run directories: never pay twice, survive kill -9, refuse wrong runs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import numpy as np
import pyarrow as pa
import pytest
from numpy.testing import assert_array_equal

import distextract as dx
from distextract._http import HTTPOracle
from distextract._journal import (
    JournaledOracle,
    journal_schema,
    load_journal,
    prepare_run_dir,
    read_segment,
    segment_is_live,
)


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(11)
    return dx.ReluNetwork(rng.normal(size=(10, 5)), rng.normal(size=10),
                          rng.normal(size=(3, 10)), rng.normal(size=3))


def counted(net, **kw):
    return dx.CountingOracle(dx.NetworkOracle(net, **kw))


def batches(seed, n_batches, rows=20, d=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(rows, d)) for _ in range(n_batches)]


def test_answers_are_journaled_and_served_back_without_paying(net, tmp_path):
    inner = counted(net)
    jo = JournaledOracle(inner, tmp_path, "w0")
    Xs = batches(0, 3)
    Ys = [jo.query(X) for X in Xs]
    assert inner.queries == 60
    # Repeated rows, within one query and across queries, are not paid again.
    Y = jo.query(np.vstack([Xs[0][:5], Xs[0][:5]]))
    assert_array_equal(Y, np.vstack([Ys[0][:5]] * 2))
    assert inner.queries == 60 and jo.rows_from_journal == 10
    jo.close()

    again = counted(net)
    jo2 = JournaledOracle(again, tmp_path, "w0")
    assert jo2.rows_loaded == 60
    for X, Yold in zip(Xs, Ys):
        assert_array_equal(jo2.query(X), Yold)
    assert again.queries == 0 and jo2.rows_sent == 0 and jo2.rows_from_journal == 60
    mixed = np.vstack([Xs[1], batches(9, 1)[0]])
    assert_array_equal(jo2.query(mixed), net.predict(mixed))
    assert again.queries == 20  # only the new rows
    jo2.close()
    X_all, Y_all = load_journal(tmp_path, 5)
    assert X_all.shape == (80, 5)
    assert_array_equal(Y_all, net.predict(X_all))


def test_each_attempt_writes_a_new_segment_and_never_touches_old_ones(net, tmp_path):
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    jo.query(batches(0, 1)[0])
    jo.close()
    first = tmp_path / "w0.0001.arrows"
    content = first.read_bytes()
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    jo.query(batches(1, 1)[0])
    jo.close()
    assert first.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["w0.0001.arrows", "w0.0002.arrows"]
    # A read-only attempt (everything served from the journal) creates no file.
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    jo.query(batches(1, 1)[0])
    jo.close()
    assert len(os.listdir(tmp_path)) == 2


def test_torn_last_batch_is_dropped_with_a_warning_and_the_file_kept(net, tmp_path, caplog):
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    Xs = batches(2, 3)
    for X in Xs:
        jo.query(X)
    jo.close()
    path = tmp_path / "w0.0001.arrows"
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # a kill -9 in the middle of the last write
        fh.truncate(size - 300)
    caplog.set_level(logging.WARNING)
    inner = counted(net)
    jo = JournaledOracle(inner, tmp_path, "w0")
    assert "dropped a torn last batch after 2 complete batches (40 rows)" in caplog.text
    assert jo.rows_loaded == 40 and jo.torn_segments == [str(path)]
    assert path.stat().st_size == size - 300  # nothing deleted
    for X in Xs:
        assert_array_equal(jo.query(X), net.predict(X))
    assert inner.queries == 20  # only the torn batch is asked again


def test_empty_segment_is_skipped(net, tmp_path, caplog):
    (tmp_path / "w0.0001.arrows").write_bytes(b"")
    caplog.set_level(logging.WARNING)
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    assert "is empty" in caplog.text
    jo.query(batches(0, 1)[0])
    jo.close()
    assert (tmp_path / "w0.0002.arrows").exists()


@pytest.mark.parametrize("keep", [3, 6, 8, 40])
def test_segment_torn_inside_its_header_is_skipped(net, tmp_path, caplog, keep):
    """A writer killed while opening its segment (CI, under load: SIGKILL after the schema's
    length prefix, before the schema) leaves a file that ends inside its first message: it
    holds no batch, so it is skipped (and kept), not refused as corrupt; the rows of the
    complete segment beside it are served."""
    X0, X1 = batches(4, 2)
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    jo.query(X0)
    jo.close()
    jo = JournaledOracle(counted(net), tmp_path, "w1")
    jo.query(X1)
    jo.close()
    path = tmp_path / "w1.0001.arrows"
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    caplog.set_level(logging.WARNING)
    inner = counted(net)
    jo = JournaledOracle(inner, tmp_path, "w1")
    assert "ends inside its stream header" in caplog.text
    assert jo.rows_loaded == 20 and jo.torn_segments == [str(path)]
    assert path.stat().st_size == keep  # nothing deleted
    assert_array_equal(jo.query(X0), net.predict(X0))
    assert inner.queries == 0
    jo.query(X1)
    assert inner.queries == 20  # the torn segment's batch was never written: paid again
    jo.close()


def test_sealed_only_readers_skip_the_segment_a_writer_still_holds(net, tmp_path):
    """A Ray worker starting mid-run reads only sealed segments: never the one the driver is
    still appending to (it parsed ~115 MB of it and hit a half-written batch before). The
    writer seals its segment (end marker, lock released) and goes on in a new one."""
    X1, X2 = batches(3, 2)
    driver = JournaledOracle(counted(net), tmp_path, "main")
    driver.query(X1)
    first = driver.segment_path
    assert segment_is_live(first)
    assert driver.seal() == first and not segment_is_live(first)
    driver.query(X2)  # goes to the next segment, live
    assert driver.segment_path != first and segment_is_live(driver.segment_path)
    assert sorted(os.listdir(tmp_path)) == ["main.0001.arrows", "main.0002.arrows"]
    inner = counted(net)
    worker = JournaledOracle(inner, tmp_path, "w0", sealed_only=True)
    assert worker.rows_loaded == 20 and worker.torn_segments == []
    assert worker.live_segments == [str(tmp_path / "main.0002.arrows")]
    assert_array_equal(worker.query(X1), net.predict(X1))
    assert inner.queries == 0  # the sealed segment's rows are served
    worker.query(X2)
    assert inner.queries == 20  # the live segment's are not known to it
    worker.close()
    # a reader that is not sealed_only (a resumed driver) reads everything, as before
    everything = JournaledOracle(counted(net), tmp_path, "main")
    assert everything.rows_loaded == 40
    driver.close()
    assert not segment_is_live(str(tmp_path / "main.0002.arrows"))
    assert JournaledOracle(counted(net), tmp_path, "w9", sealed_only=True).rows_loaded == 40


def test_corrupt_header_is_refused(net, tmp_path):
    (tmp_path / "w0.0001.arrows").write_bytes(b"this is not arrow at all" * 10)
    with pytest.raises(dx.JournalError, match=r"w0\.0001\.arrows is corrupt: its stream header "
                                              r"is unreadable .*nothing was deleted"):
        JournaledOracle(counted(net), tmp_path, "w0")
    assert (tmp_path / "w0.0001.arrows").exists()


def test_segment_of_another_dimension_is_refused(net, tmp_path):
    with (pa.OSFile(str(tmp_path / "x.0001.arrows"), "w") as sink,
          pa.ipc.new_stream(sink, journal_schema(3, 1))):
        pass
    with pytest.raises(dx.JournalError, match="holds rows of input_dim=3, but this run has "
                                              "input_dim=5; .*use a new run directory"):
        JournaledOracle(counted(net), tmp_path, "w0")


def test_foreign_arrow_stream_and_other_output_dim_are_refused(net, tmp_path):
    with (pa.OSFile(str(tmp_path / "a.0001.arrows"), "w") as sink,
          pa.ipc.new_stream(sink, pa.schema([("z", pa.int64())]))):
        pass
    with pytest.raises(dx.JournalError, match="not a distextract journal segment"):
        read_segment(str(tmp_path / "a.0001.arrows"), 5)
    os.remove(tmp_path / "a.0001.arrows")
    jo = JournaledOracle(counted(net, output="softmax"), tmp_path, "w0")
    jo.query(batches(0, 1)[0])
    jo.close()
    one_output = dx.ReluNetwork(net.W, net.b, net.A[:1], net.c[:1])
    with pytest.raises(dx.JournalError, match=r"w0\.0001\.arrows has 3 outputs per row, but 1 "
                                              r"were seen before"):
        JournaledOracle(counted(one_output), tmp_path, "w1")  # output_dim known up front
    jo = JournaledOracle(dx.CallableOracle(one_output.predict, 5), tmp_path, "w1")
    with pytest.raises(dx.JournalError, match="the oracle's new answer has 1 outputs per row, "
                                              "but 3 were seen before"):
        jo.query(batches(1, 1)[0])


def test_verify_detects_another_network_behind_the_oracle(net, tmp_path):
    jo = JournaledOracle(counted(net), tmp_path, "w0")
    jo.query(batches(0, 1)[0])
    jo.close()
    assert JournaledOracle(counted(net), tmp_path, "w0").verify(2) == 2
    other = dx.ReluNetwork(net.W, net.b, net.A * 1.01, net.c)
    with pytest.raises(dx.JournalError, match="the oracle now answers differently from the "
                                              "journal .*max abs difference"):
        JournaledOracle(counted(other), tmp_path, "w0").verify(2)
    assert JournaledOracle(counted(net), tmp_path / "empty", "w0").verify() == 0


def test_answered_batches_are_journaled_before_an_error_propagates(net, tmp_path):
    def handler(request):
        X = np.asarray(json.loads(request.content)["inputs"])
        if np.any(X[:, 0] == 99.0):
            return httpx.Response(400, json={"error": "rejected"})
        return httpx.Response(200, json={"outputs": net.predict(X).tolist()})

    http = HTTPOracle("http://api.test/", 5, max_batch=4, max_in_flight=1,
                      transport=httpx.MockTransport(handler))
    jo = JournaledOracle(http, tmp_path, "w0")
    X = batches(0, 1, rows=12)[0]
    X[9, 0] = 99.0
    with pytest.raises(dx.OracleHTTPError, match="HTTP 400"):
        jo.query(X)
    jo.close()
    X_j, _ = load_journal(tmp_path, 5)
    assert X_j.shape[0] == 8 == http.rows_answered  # every answered row was kept


def test_bad_arguments(net, tmp_path):
    with pytest.raises(dx.ConfigError, match="writer_id must be 1-64 letters"):
        JournaledOracle(counted(net), tmp_path, "../evil")
    with pytest.raises(dx.ConfigError, match="inner must be an Oracle, got function"):
        JournaledOracle(lambda X: X, tmp_path)


# ------------------------------------------------------------------ run directory
DESC = {"type": "HTTPOracle", "url": "http://127.0.0.1:1/", "input_dim": 5, "output_dim": None,
        "api_key_env": None, "settings": {"rate": 10}}


def test_run_dir_created_then_resumed(tmp_path):
    run = tmp_path / "run"
    info = prepare_run_dir(run, oracle=DESC, input_dim=5, seed=3, config={"lines": 4})
    saved = json.loads((run / "run.json").read_text())
    assert saved == info and saved["seed"] == 3 and (run / "journal").is_dir()
    # Learned output_dim and throughput settings may change between attempts.
    later = {**DESC, "output_dim": 3, "settings": {"rate": 50}}
    assert prepare_run_dir(run, oracle=later, input_dim=5, seed=3, config={"lines": 4},
                           resume=True)["seed"] == 3


@pytest.mark.parametrize("change, match", [
    ({"seed": 4}, r"different seed \(run.json has 3, now 4\)"),
    ({"input_dim": 6}, r"different input_dim \(run.json has 5, now 6\)"),
    ({"oracle": {**DESC, "url": "http://other/"}},
     r"different oracle \(url: run.json has 'http://127.0.0.1:1/', now 'http://other/'\)"),
    ({"config": {"lines": 5}}, r"different config \(lines: run.json has 4, now 5\)"),
])
def test_resume_refuses_a_different_run(tmp_path, change, match):
    base = {"oracle": DESC, "input_dim": 5, "seed": 3, "config": {"lines": 4}}
    prepare_run_dir(tmp_path, **base)
    with pytest.raises(dx.JournalError, match=match):
        prepare_run_dir(tmp_path, **{**base, **change}, resume=True)


def test_run_dir_misuse(tmp_path):
    prepare_run_dir(tmp_path / "a", oracle=DESC, input_dim=5, seed=1)
    with pytest.raises(dx.JournalError, match="already holds a run .*pass --resume"):
        prepare_run_dir(tmp_path / "a", oracle=DESC, input_dim=5, seed=1)
    with pytest.raises(dx.JournalError, match="nothing to resume in .*: no run.json"):
        prepare_run_dir(tmp_path / "b", oracle=DESC, input_dim=5, seed=1, resume=True)
    (tmp_path / "a" / "run.json").write_text("{not json")
    with pytest.raises(dx.JournalError, match="cannot read .*run.json.*nothing was deleted"):
        prepare_run_dir(tmp_path / "a", oracle=DESC, input_dim=5, seed=1, resume=True)
    (tmp_path / "c" / "journal").mkdir(parents=True)
    (tmp_path / "c" / "journal" / "w.0001.arrows").write_bytes(b"")
    with pytest.raises(dx.JournalError, match="holds journal segments but .* has no run.json"):
        prepare_run_dir(tmp_path / "c", oracle=DESC, input_dim=5, seed=1)
    with pytest.raises(dx.ConfigError, match="must be JSON-serialisable"):
        prepare_run_dir(tmp_path / "d", oracle=DESC, input_dim=5, seed=1, config={"x": object()})


# ------------------------------------------------------------------------- kill -9
CHILD = textwrap.dedent("""
    import sys, numpy as np, distextract as dx
    from distextract._journal import JournaledOracle
    net = dx.ReluNetwork.load(sys.argv[1])
    jo = JournaledOracle(dx.NetworkOracle(net), sys.argv[2], "w0")
    rng = np.random.default_rng(5)
    i = 0
    while True:
        jo.query(rng.normal(size=(200, net.input_dim)))
        i += 1
        print(i, flush=True)
""")


def test_kill_9_while_journaling_loses_at_most_the_batch_in_flight(net, tmp_path):
    model = tmp_path / "net.arrow"
    net.save(model)
    journal = tmp_path / "journal"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(model), str(journal)],
                            stdout=subprocess.PIPE, text=True)
    done = 0
    deadline = time.monotonic() + 30
    while done < 40 and time.monotonic() < deadline:
        done = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert done >= 40
    X, Y = load_journal(journal, 5)
    assert X.shape[0] >= done * 200
    assert_array_equal(Y, net.predict(X))
    # Replaying the same seeded decisions pays only for what the crash lost; the killed
    # writer's lock died with it, so a sealed_only reader (a restarted worker) reads it too.
    assert not segment_is_live(str(journal / "w0.0001.arrows"))
    inner = counted(net)
    jo = JournaledOracle(inner, journal, "w0", sealed_only=True)
    rng = np.random.default_rng(5)
    for _ in range(X.shape[0] // 200 + 1):
        Xb = rng.normal(size=(200, 5))
        assert_array_equal(jo.query(Xb), net.predict(Xb))
    assert inner.queries <= 200
    jo.close()
