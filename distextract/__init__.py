"""distextract: extract a one-hidden-layer ReLU network from black-box queries."""

from . import targets
from ._errors import (
    BudgetExhausted,
    ConfigError,
    DistextractError,
    JournalError,
    NonDeterministicOracle,
    OracleError,
    OracleHTTPError,
    OracleShapeError,
    OracleValueError,
    TargetMismatch,
)
from ._extract import ExtractionResult, extract
from ._http import HTTPOracle
from ._journal import JournaledOracle, prepare_run_dir
from ._model import ReluNetwork
from ._oracle import (
    CallableOracle,
    CountingOracle,
    NetworkOracle,
    Oracle,
    SoftmaxLogitOracle,
    as_oracle,
)
from ._ratelimit import RateLimiter, TokenBucket
from .engine._config import ExtractConfig
from .fidelity import FidelityReport, evaluate_fidelity

__version__ = "0.1.0"

__all__ = [
    "BudgetExhausted",
    "CallableOracle",
    "ConfigError",
    "CountingOracle",
    "DistextractError",
    "ExtractConfig",
    "ExtractionResult",
    "FidelityReport",
    "HTTPOracle",
    "JournalError",
    "JournaledOracle",
    "NetworkOracle",
    "NonDeterministicOracle",
    "Oracle",
    "OracleError",
    "OracleHTTPError",
    "OracleShapeError",
    "OracleValueError",
    "RateLimiter",
    "ReluNetwork",
    "SoftmaxLogitOracle",
    "TargetMismatch",
    "TokenBucket",
    "__version__",
    "as_oracle",
    "evaluate_fidelity",
    "extract",
    "prepare_run_dir",
    "targets",
]
