"""Extract a network behind a slow, rate-limited HTTP API that needs an API key.

    python examples/02_http_api.py                       # starts a local API to attack
    EXAMPLE_API_URL=https://... EXAMPLE_API_KEY=... EXAMPLE_INPUT_DIM=784 \\
        python examples/02_http_api.py                   # a real API (DESIGN.md section 4)

The key is read from the environment variable EXAMPLE_API_KEY by name; it never appears on a
command line, in a log or in the run directory. Every paid answer is journaled in the run
directory, so an interrupted run continues with ``resume=True`` without paying twice.
"""

import os
import secrets
import sys
import tempfile

import distextract as dx
from distextract.serve import launch_server_process

RATE = 30.0  # requests/s allowed by the API (the client stays under it)
BATCH = 16   # rows per request

url = os.environ.get("EXAMPLE_API_URL")
server = None
if url is None:
    # No API given: serve a planted network locally, as `distextract serve` does, with 20 ms
    # latency, a 30 requests/s limit (429 above it), 16 rows per request (413 above) and a key.
    os.environ.setdefault("EXAMPLE_API_KEY", secrets.token_hex(16))
    target = dx.targets.random_network(12, 24, 2, seed=2)
    model_file = os.path.join(tempfile.mkdtemp(), "target.arrow")
    target.save(model_file)
    server = launch_server_process(model_file, latency_ms=20, rate=RATE, max_batch=BATCH,
                                   api_key_env="EXAMPLE_API_KEY")
    url, d = server.url, 12
    print(f"local API at {url} (key in EXAMPLE_API_KEY)")
else:
    d = int(os.environ["EXAMPLE_INPUT_DIM"])

run_dir = tempfile.mkdtemp(prefix="distextract-example-")
try:
    oracle = dx.HTTPOracle(url, d, api_key_env="EXAMPLE_API_KEY", rate=RATE, max_batch=BATCH)
    dx.prepare_run_dir(run_dir, oracle=oracle.describe(), input_dim=d, seed=0)
    journaled = dx.JournaledOracle(oracle, os.path.join(run_dir, "journal"))
    try:
        result = dx.extract(journaled, input_dim=d, seed=0)
    finally:
        journaled.close()
    result.model.save(os.path.join(run_dir, "model.arrow"))
    print(f"queries: {result.queries} rows in {oracle.stats()['requests']} requests, "
          f"statuses {oracle.stats()['statuses']}")
    print(f"extracted {result.model}, validation relative L2 {result.val_rel_l2:.2g}, "
          f"certified={result.certified}")
    print(f"run directory: {run_dir}")
except dx.DistextractError as exc:
    sys.exit(f"Error: {exc}")
finally:
    if server is not None:
        server.stop()
