"""Run an extraction on a Ray cluster: workers on every node share one API key's rate limit.

    # on the head node of a running cluster (see cluster/README.md: AWS, GCP, KubeRay)
    ray start --head                       # or use the cluster launcher
    python examples/03_ray_cluster.py      # connects with address="auto"

    # from a laptop, through Ray Client:
    RAY_ADDRESS=ray://<head-ip>:10001 python examples/03_ray_cluster.py

Without a cluster, set EXAMPLE_LOCAL=1 to start a local Ray instance instead.
The oracle must be picklable to travel to the workers (a ReluNetwork, a module-level function,
or an HTTPOracle, which each worker rebuilds from its settings; its key is read from the
environment on the worker).
"""

import os

import distextract as dx

D, K, M = 32, 128, 4
WORKERS = int(os.environ.get("EXAMPLE_WORKERS", "4"))

target = dx.targets.random_network(D, K, M, seed=3)   # stand-in for a real oracle
address = None if os.environ.get("EXAMPLE_LOCAL") else os.environ.get("RAY_ADDRESS", "auto")

result = dx.extract(target, input_dim=D, seed=0, workers=WORKERS, address=address)
dist = result.report["distributed"]
print(f"{result.queries} rows on {dist['workers']} workers across {dist['nodes']} node(s); "
      f"restarts {dist['restarts']}")
print(f"extracted {result.model}, certified={result.certified}, "
      f"validation relative L2 {result.val_rel_l2:.2g}")
