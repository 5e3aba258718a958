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
from ._model import ReluNetwork
from ._oracle import CallableOracle, CountingOracle, NetworkOracle, Oracle, as_oracle
from .fidelity import FidelityReport, evaluate_fidelity

__version__ = "0.1.0"

__all__ = [
    "BudgetExhausted",
    "CallableOracle",
    "ConfigError",
    "CountingOracle",
    "DistextractError",
    "FidelityReport",
    "JournalError",
    "NetworkOracle",
    "NonDeterministicOracle",
    "Oracle",
    "OracleError",
    "OracleHTTPError",
    "OracleShapeError",
    "OracleValueError",
    "ReluNetwork",
    "TargetMismatch",
    "__version__",
    "as_oracle",
    "evaluate_fidelity",
    "targets",
]
