"""Export an extracted network to ONNX, PyTorch or NumPy, and verify the export.

Every format computes ``F(x) = A · relu(W x + b) + c + L x`` in float64:

``onnx`` (needs ``pip install "distextract[export]"``: onnx, onnxruntime)
    A graph of opset :data:`ONNX_OPSET` with input ``x`` of shape ``(N, d)`` and output ``y`` of
    shape ``(N, m)``, both ``tensor(double)``::

        y = MatMul(Relu(MatMul(x, Wᵀ) + b), Aᵀ) + c  [+ MatMul(x, Lᵀ) when L ≠ 0]

``torch`` (needs PyTorch: ``pip install torch``; the CPU build is enough)
    A ``torch.save``-d state dict of ``nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, m))``
    in float64 (keys ``0.weight`` ``0.bias`` ``2.weight`` ``2.bias``). A linear skip term is
    folded into the hidden layer exactly, with ``x = relu(x) − relu(−x)``: when ``L ≠ 0`` the
    hidden layer has ``h = k + 2d`` units (``[W; I; −I]``, biases ``[b; 0; 0]``, output weights
    ``[A, L, −L]``); otherwise ``h = k``. Load it with :func:`load_torch`, or by hand::

        import torch
        sd = torch.load("model.pt", weights_only=True)
        (h, d), m = sd["0.weight"].shape, sd["2.weight"].shape[0]
        net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(),
                                  torch.nn.Linear(h, m)).double()
        net.load_state_dict(sd)

``npz``
    ``numpy.savez`` of ``W`` (k, d), ``b`` (k,), ``A`` (m, k), ``c`` (m,), ``L`` (m, d).

:func:`verify_export` evaluates the exported file (onnxruntime on CPU, torch on CPU, numpy) and
the Arrow model on the same random ``N(0, I_d)`` inputs and returns the largest differences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import ConfigError
from ._model import ReluNetwork

#: Export formats and the file suffix each writes by default.
FORMATS = {"onnx": ".onnx", "torch": ".pt", "npz": ".npz"}
#: ONNX opset of the exported graph (float64 MatMul, Add and Relu are all defined there).
ONNX_OPSET = 17
#: Largest accepted ``max |Y_export − Y_model| / max(max |Y_model|, tiny)`` of a float64 export.
#: Both evaluate the same float64 formula; only summation order differs (about 1e-16 · k).
VERIFY_RTOL = 1e-9
#: Random inputs used by :func:`verify_export`.
VERIFY_POINTS = 1000

_INSTALL = {
    "onnx": 'pip install "distextract[export]"   (onnx and onnxruntime)',
    "torch": 'pip install "distextract[torch]"   (PyTorch; the CPU build is enough)',
}


@dataclass(frozen=True)
class ExportCheck:
    """Result of :func:`verify_export`.

    Attributes
    ----------
    format : str
    path : str
    n_points : int
        Random N(0, I_d) inputs compared.
    max_abs_diff : float
        ``max |Y_export − Y_model|`` over points and outputs.
    rel_diff : float
        ``max_abs_diff / max |Y_model|``.
    ok : bool
        ``rel_diff <= VERIFY_RTOL``.
    """

    format: str
    path: str
    n_points: int
    max_abs_diff: float
    rel_diff: float
    ok: bool


def _require(module: str, fmt: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"exporting to {fmt} needs the package {module!r}, which is not "
                          f"installed ({exc}); install it with: {_INSTALL[fmt]}") from None


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of "
                          f"{', '.join(FORMATS)}")
    return fmt


def default_path(model_path: str | os.PathLike, fmt: str) -> str:
    """``model_path`` with the suffix of ``fmt`` (``run/model.arrow`` -> ``run/model.onnx``)."""
    root, _ = os.path.splitext(os.fspath(model_path))
    return root + FORMATS[_check_format(fmt)]


def _has_skip(model: ReluNetwork) -> bool:
    return bool(np.any(model.L != 0.0))


def onnx_model(model: ReluNetwork) -> Any:
    """The network as an ``onnx.ModelProto`` (float64, opset :data:`ONNX_OPSET`)."""
    onnx = _require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    d, m = model.input_dim, model.output_dim
    inits = [numpy_helper.from_array(np.ascontiguousarray(model.W.T), "Wt"),
             numpy_helper.from_array(np.ascontiguousarray(model.b), "b"),
             numpy_helper.from_array(np.ascontiguousarray(model.A.T), "At"),
             numpy_helper.from_array(np.ascontiguousarray(model.c), "c")]
    nodes = [helper.make_node("MatMul", ["x", "Wt"], ["xW"], name="hidden_matmul"),
             helper.make_node("Add", ["xW", "b"], ["z"], name="hidden_bias"),
             helper.make_node("Relu", ["z"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "At"], ["hA"], name="output_matmul")]
    if _has_skip(model):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(model.L.T), "Lt"))
        nodes += [helper.make_node("MatMul", ["x", "Lt"], ["xL"], name="skip_matmul"),
                  helper.make_node("Add", ["hA", "xL"], ["hAL"], name="skip_add"),
                  helper.make_node("Add", ["hAL", "c"], ["y"], name="output_bias")]
    else:
        nodes.append(helper.make_node("Add", ["hA", "c"], ["y"], name="output_bias"))
    graph = helper.make_graph(
        nodes, "distextract_relu_network",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", m])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="distextract")
    proto.doc_string = ("F(x) = A relu(W x + b) + c + L x, extracted by distextract "
                        f"(d={d}, k={model.hidden_dim}, m={m})")
    onnx.checker.check_model(proto)
    return proto


def torch_state_dict(model: ReluNetwork) -> dict:
    """The network as a float64 ``nn.Sequential(Linear, ReLU, Linear)`` state dict."""
    torch = _require("torch", "torch")
    W, b, A = model.W, model.b, model.A
    if _has_skip(model):
        eye = np.eye(model.input_dim)
        W = np.vstack([W, eye, -eye])
        b = np.concatenate([b, np.zeros(2 * model.input_dim)])
        A = np.hstack([A, model.L, -model.L])
    return {"0.weight": torch.from_numpy(np.array(W, dtype=np.float64)),
            "0.bias": torch.from_numpy(np.array(b, dtype=np.float64)),
            "2.weight": torch.from_numpy(np.array(A, dtype=np.float64)),
            "2.bias": torch.from_numpy(np.array(model.c, dtype=np.float64))}


def load_torch(path: str | os.PathLike) -> Any:
    """An ``nn.Sequential`` (float64, eval mode) loaded from a file written by :func:`export`."""
    torch = _require("torch", "torch")
    sd = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    (h, d), m = tuple(sd["0.weight"].shape), int(sd["2.weight"].shape[0])
    net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(),
                              torch.nn.Linear(h, m)).double()
    net.load_state_dict(sd)
    return net.eval()


def export(model: ReluNetwork | str | os.PathLike, fmt: str,
           path: str | os.PathLike | None = None) -> str:
    """Write ``model`` in format ``fmt``.

    Parameters
    ----------
    model : ReluNetwork or path
        The network, or a model file (``model.arrow``).
    fmt : {"onnx", "torch", "npz"}
    path : path, optional
        Output file; default: the model file's path with the format's suffix
        (required when ``model`` is a ReluNetwork).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ConfigError
        Unknown format, missing optional package (the message says what to install), or no
        output path.
    """
    _check_format(fmt)
    if not isinstance(model, ReluNetwork):
        if path is None:
            path = default_path(model, fmt)
        model = ReluNetwork.load(model)
    if path is None:
        raise ConfigError("path is required when exporting a ReluNetwork object")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"cannot write {path}: the directory {parent} does not exist")
    tmp = f"{path}.tmp-{os.getpid()}"
    if fmt == "onnx":
        proto = onnx_model(model)
        with open(tmp, "wb") as fh:
            fh.write(proto.SerializeToString())
    elif fmt == "torch":
        torch = _require("torch", "torch")
        sd = torch_state_dict(model)
        with open(tmp, "wb") as fh:
            torch.save(sd, fh)
    else:
        with open(tmp, "wb") as fh:
            np.savez(fh, W=model.W, b=model.b, A=model.A, c=model.c, L=model.L)
    os.replace(tmp, path)
    return path


def predict_exported(path: str | os.PathLike, fmt: str, X: np.ndarray) -> np.ndarray:
    """Evaluate an exported file on ``X`` of shape (n, d) (onnxruntime / torch on CPU / numpy).

    Returns
    -------
    ndarray of shape (n, m), float64
    """
    _check_format(fmt)
    path = os.fspath(path)
    X = np.ascontiguousarray(X, dtype=np.float64)
    if fmt == "onnx":
        ort = _require("onnxruntime", "onnx")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(["y"], {"x": X})[0], dtype=np.float64)
    if fmt == "torch":
        torch = _require("torch", "torch")
        net = load_torch(path)
        with torch.no_grad():
            return net(torch.from_numpy(X)).numpy().astype(np.float64)
    with np.load(path) as z:
        W, b, A, c, L = (z[key] for key in ("W", "b", "A", "c", "L"))
    return np.maximum(X @ W.T + b, 0.0) @ A.T + X @ L.T + c


def verify_export(model: ReluNetwork | str | os.PathLike, path: str | os.PathLike, fmt: str,
                  n_points: int = VERIFY_POINTS, seed: int = 0) -> ExportCheck:
    """Compare an exported file with the model on ``n_points`` random N(0, I_d) inputs.

    Returns
    -------
    ExportCheck
    """
    if not isinstance(model, ReluNetwork):
        model = ReluNetwork.load(model)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_points, model.input_dim))
    ref = model.predict(X)
    got = predict_exported(path, fmt, X)
    if got.shape != ref.shape:
        raise ConfigError(f"the exported {fmt} model answers shape {got.shape}, expected "
                          f"{ref.shape}")
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = diff / scale if scale > 0 else diff
    return ExportCheck(fmt, os.fspath(path), int(n_points), diff, rel, rel <= VERIFY_RTOL)


__all__ = ["FORMATS", "ONNX_OPSET", "VERIFY_POINTS", "VERIFY_RTOL", "ExportCheck",
           "default_path", "export", "load_torch", "onnx_model", "predict_exported",
           "torch_state_dict", "verify_export"]
