"""Extract a network hidden behind a plain Python callable, in-process.

    python examples/01_callable.py

The callable is the only thing the extractor sees: replace ``secret_model`` with a wrapper
around any prediction function ``(n, d) float64 -> (n, m)``.
"""

import numpy as np

import distextract as dx

D, K, M = 20, 40, 3

# The "secret" model: a planted network here, any black box in practice.
_target = dx.targets.random_network(D, K, M, seed=1)


def secret_model(X: np.ndarray) -> np.ndarray:
    return _target.predict(X)


result = dx.extract(secret_model, input_dim=D, seed=0)
print(f"queries: {result.queries} rows ({result.queries / (K * (D + 1)):.2f} x k(d+1))")
print(f"extracted: {result.model}, certified={result.certified} ({result.stop_reason})")

# Only possible here because we planted the target: compare with the truth.
fid = dx.evaluate_fidelity(result.model, _target)
print(f"relative L2 error {fid.rel_l2:.2g}, neurons matched {fid.matched_neurons}/{fid.live_neurons}")
