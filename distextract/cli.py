"""The ``distextract`` command line (click).

Commands: ``demo``, ``make-target``, ``serve``, ``extract``, ``evaluate``, ``report``,
``export``; every one has ``--help`` with examples.

Errors raised on purpose by distextract, usage errors and unreadable files print
``Error: message`` and exit with status 1, without a traceback; ``--verbose`` turns on logging.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from ._errors import DistextractError
from .fidelity import BIAS_RTOL, COS_TOL
from .targets import HARD_CASES

#: Target kinds of ``make-target``: a plain random network and each hard case.
TARGET_KINDS = ("random",) + tuple(HARD_CASES)


class _Exit:
    """How this process ends: ``own_process`` when :func:`main` runs this process's own
    command line (``python -m distextract``, the ``distextract`` script; not a caller passing
    ``args``, e.g. click's test runner); ``fast`` when a command finished its work and asks
    to end without the interpreter's teardown (:func:`_exit_now`)."""

    own_process = False
    fast = False


def _exit_now(code: int) -> None:
    """End this process at once with ``code``: output flushed, the local Ray a run left
    (:func:`~distextract.distributed.run.stop_left_ray`) handed to a detached stopper,
    logging flushed, then ``os._exit`` — without ``ray.shutdown``'s waits and the
    interpreter's teardown (about 1 s together with Ray loaded, 0.4 s without). Called only
    after the command's files are written and closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    run = sys.modules.get("distextract.distributed.run")
    if run is not None:
        try:
            run.stop_left_ray()
        except Exception as exc:  # noqa: BLE001 - Ray's atexit handler is skipped: say so
            logging.getLogger(__name__).warning("could not stop Ray's processes: %s", exc)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _Group(click.Group):
    """A click group that turns library errors into ``Error: message``, exit 1.

    Usage errors (a missing argument, an unknown option) also exit with status 1 after click's
    usual usage line and ``Error: ...`` message. A command that finished its work in this
    process's own command line may end it at once (:class:`_Exit`).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistextractError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # unreadable or unwritable files, ports, ...
            raise click.ClickException(str(exc)) from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        if not standalone:
            return super().main(*args, standalone_mode=False, **kwargs)
        _Exit.own_process = not args and kwargs.get("args") is None
        _Exit.fast = False
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        # --help and friends return their exit code instead of raising
        code = rv if isinstance(rv, int) else 0
        if _Exit.own_process and _Exit.fast:
            _exit_now(code)
        sys.exit(code)


EPILOG = """\b
Examples:
  distextract demo                                  # everything on this machine (< 1 min)
  distextract make-target target.arrow --hidden 64
  distextract serve target.arrow --rate 40 --max-batch 16 &
  distextract extract --url http://127.0.0.1:8000/ --input-dim 32 --out run
  distextract evaluate run/model.arrow --target target.arrow
  distextract report run
  distextract export run/model.arrow --to onnx
"""


@click.group(cls=_Group, epilog=EPILOG)
@click.option("--verbose", "-v", count=True, help="Log progress (-vv: debug).")
@click.version_option(package_name="distextract")
def main(verbose: int) -> None:
    """Extract a one-hidden-layer ReLU network from black-box query access."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
        )


# ---------------------------------------------------------------------------- demo
@main.command(epilog="""\b
Examples:
  distextract demo                        # d=32, k=64, m=4 behind a 40 requests/s API
  distextract demo --no-ray               # in-process, without starting Ray
  distextract demo --workers 4 --rate 100 --out /tmp/demo
  distextract demo --input-dim 8 --hidden 16 --outputs 2   # a quick small run
""")
@click.option("--out", "out_dir", default="distextract-demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Run directory (a directory made by an earlier demo is replaced).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Ray worker actors sharing the API's rate limit.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=40.0,
              show_default=True, help="The API's limit in requests/s (429 above it).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most rows per request the API accepts (413 above it).")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Delay of every answer of the API.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the target network and of the extraction.")
@click.option("--input-dim", "-d", type=click.IntRange(min=1), default=32, show_default=True,
              help="d: inputs of the target network.")
@click.option("--hidden", "-k", type=click.IntRange(min=1), default=64, show_default=True,
              help="k: hidden neurons of the target network.")
@click.option("--outputs", "-m", type=click.IntRange(min=1), default=4, show_default=True,
              help="m: outputs of the target network.")
@click.option("--no-ray", is_flag=True, help="Extract in-process instead of on Ray workers.")
def demo(out_dir: str, workers: int, rate: float, max_batch: int, latency_ms: float, seed: int,
         input_dim: int, hidden: int, outputs: int, no_ray: bool) -> None:
    """Make a target network, serve it behind a local rate-limited HTTP API, extract it with
    Ray workers, check the result against the target, and write a run directory with plots.

    Nothing else needs to run: the API is served from this process on loopback. A live
    progress line is shown on a terminal.
    """
    from .demo import DemoSettings, format_summary, run_demo

    settings = DemoSettings(input_dim=input_dim, hidden=hidden, outputs=outputs, seed=seed,
                            workers=workers, rate=rate, max_batch=max_batch,
                            latency_ms=latency_ms, no_ray=no_ray)
    summary = run_demo(out_dir, settings, echo=click.echo)
    click.echo(format_summary(summary))


# --------------------------------------------------------------------- make-target
@main.command("make-target", epilog="""\b
Examples:
  distextract make-target target.arrow                      # random, d=32 k=64 m=1
  distextract make-target wide.arrow --kind wide -d 16 -k 256 -m 3
  distextract make-target dup.arrow --kind duplicates --seed 7
Kinds: random, """ + ", ".join(HARD_CASES) + " (DESIGN.md section 2).")
@click.argument("out_path", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(TARGET_KINDS), default="random", show_default=True,
              help="A random network or one hard case of DESIGN.md section 2.")
@click.option("--input-dim", "-d", type=click.IntRange(min=1), default=32, show_default=True,
              help="d: inputs.")
@click.option("--hidden", "-k", type=click.IntRange(min=1), default=64, show_default=True,
              help="k: hidden neurons.")
@click.option("--outputs", "-m", type=click.IntRange(min=1), default=1, show_default=True,
              help="m: outputs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed: the same options give the same network.")
def make_target(out_path: str, kind: str, input_dim: int, hidden: int, outputs: int,
                seed: int) -> None:
    """Write a target network to OUT_PATH (an Arrow model file) to serve or extract."""
    from . import targets

    if kind == "random":
        net = targets.random_network(input_dim, hidden, outputs, seed=seed)
    else:
        net = targets.hard_case(kind, input_dim, hidden, outputs, seed=seed)
    net.save(out_path)
    click.echo(f"Wrote {out_path}: {kind} network, d={net.input_dim}, k={net.hidden_dim}, "
               f"m={net.output_dim}, seed {seed}")


# ---------------------------------------------------------------------------- serve
@main.command(epilog="""\b
Examples:
  distextract serve target.arrow --port 8000 --rate 40 --max-batch 16 --latency-ms 20
  API_KEY=s3cret distextract serve target.arrow --api-key-env API_KEY
  distextract serve target.arrow --output float32 --fail-rate 0.05
""")
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (loopback by default).")
@click.option("--port", default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--latency-ms", default=0.0, show_default=True,
              help="Delay added to every computed answer.")
@click.option("--rate", type=float, default=None,
              help="Requests/s allowed; excess requests get 429 with Retry-After.")
@click.option("--burst", type=float, default=None,
              help="Requests allowed back to back (default rate/10, at least 1).")
@click.option("--retry-after-ms", is_flag=True, default=False,
              help="With 429s, also send Retry-After-Ms (the wait in milliseconds).")
@click.option("--max-batch", type=int, default=None, help="Most rows per request (else 413).")
@click.option("--fail-rate", default=0.0, show_default=True,
              help="Probability of a random 503.")
@click.option("--drop-rate", default=0.0, show_default=True,
              help="Probability of closing the connection after computing the answer.")
@click.option("--api-key-env", default=None,
              help="Name of the environment variable holding the accepted API key (else 401).")
@click.option("--output", default="float64", show_default=True,
              help="float64, float32, float16, bfloat16, round:N or softmax.")
@click.option("--corrupt", type=click.Choice(["html", "shape", "nan"]), default=None,
              help="Misbehave on purpose (rehearse a broken API).")
@click.option("--seed", type=int, default=None, help="Seed of the random failures and drops.")
def serve(model_path: str, **options: Any) -> None:
    """Serve the network in MODEL_PATH over HTTP (DESIGN.md section 4) until Ctrl-C."""
    from .serve import ServerConfig, serve_forever

    config = ServerConfig(**options)

    def ready(url: str) -> None:
        click.echo(f"Serving {model_path} at {url} (GET {url}stats for counters; Ctrl-C stops)")
        sys.stdout.flush()

    stats = serve_forever(model_path, config, on_ready=ready)
    click.echo(f"Stopped. rows served: {stats['rows_served']}, requests: {stats['requests']}, "
               f"statuses: {stats['statuses']}")


# -------------------------------------------------------------------------- extract
@main.command(epilog="""\b
Examples:
  distextract extract --url http://127.0.0.1:8000/ --input-dim 32 --out run --rate 40 \\
      --batch-size 16 --workers 2
  distextract extract --url https://api.example.com/v1/predict --input-dim 784 --out run \\
      --api-key-env API_KEY --budget 200000 --rate 5
  distextract extract ... --resume          # continue a crashed run, paying nothing twice
  distextract extract ... --config target_rel_l2=1e-9 --config residual_stride=1
""")
@click.option("--url", required=True, help="Endpoint of the oracle API (DESIGN.md section 4).")
@click.option("--input-dim", type=int, required=True, help="d, the length of an input row.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: model.arrow, neurons/kinks/lines.arrow, journal/, run.json, "
                   "report.json.")
@click.option("--api-key-env", default=None,
              help="NAME of the environment variable holding the API key (never the key).")
@click.option("--budget", type=int, default=None, help="Hard cap on rows queried by the run.")
@click.option("--rate", type=float, default=None, help="Client-side limit in requests/s.")
@click.option("--rows-rate", type=float, default=None, help="Client-side limit in rows/s.")
@click.option("--rate-discovery/--no-rate-discovery", default=True, show_default=True,
              help="Without --rate or --rows-rate: find the server's limit from its 429s "
                   "(slow start, then AIMD), or send unpaced.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Most rows per request (lowered automatically on 413).")
@click.option("--max-in-flight", type=int, default=8, show_default=True,
              help="Requests in flight at once.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds per request.")
@click.option("--retries", type=int, default=8, show_default=True,
              help="Retries of a request after transient failures (5xx, timeouts, resets).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of every random choice; a resumed run must use the same.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out: journaled answers are not paid again.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ray worker actors querying in parallel under one rate limit (1: in-process, "
                   "no Ray; more: starts Ray on this machine unless --address is given).")
@click.option("--address", default=None,
              help="Join an existing Ray cluster: 'auto' or 'ray://host:10001'.")
@click.option("--output", "output", type=click.Choice(["auto", "logits", "softmax"]),
              default="auto", show_default=True,
              help="What the API answers: auto (read from the answers of the first request, the "
                   "precision probe, which the run reuses: rows in [0, 1] summing to 1 are "
                   "softmax probabilities, anything else logits; recorded in report.json), or "
                   "force logits (any real outputs) or softmax probabilities.")
@click.option("--on-mismatch", type=click.Choice(["raise", "flag"]), default="raise",
              show_default=True,
              help="If the API is not a one-hidden-layer ReLU network: stop with an error, or "
                   "write the best model flagged in report.json.")
@click.option("--config", "config_items", multiple=True, metavar="KEY=VALUE",
              help="An ExtractConfig knob (repeatable), e.g. target_rel_l2=1e-9 or "
                   "residual_stride=1; each is documented in dx.ExtractConfig. A resumed run "
                   "must give the same.")
def extract(url: str, input_dim: int, out_dir: str, api_key_env: str | None,
            budget: int | None, rate: float | None, rows_rate: float | None, batch_size: int,
            max_in_flight: int, timeout: float, retries: int, seed: int, resume: bool,
            workers: int, address: str | None, output: str, on_mismatch: str,
            config_items: tuple[str, ...], rate_discovery: bool = True) -> None:
    """Extract the network behind URL into the run directory --out."""
    from ._runner import extract_to_run_dir, journal_hint
    from .engine._config import config_options

    options = config_options(config_items)
    if _Exit.own_process:  # Ray's processes are stopped as this process ends (_exit_now)
        from .distributed.run import leave_ray_for_exit

        leave_ray_for_exit()
    try:
        outcome = extract_to_run_dir(
            url, input_dim, out_dir, api_key_env=api_key_env, budget=budget, rate=rate,
            rows_rate=rows_rate, batch_size=batch_size, max_in_flight=max_in_flight,
            timeout=timeout, retries=retries, seed=seed, resume=resume, workers=workers,
            address=address, echo=click.echo, output=output, on_mismatch=on_mismatch,
            options=options, discover_rate=rate_discovery)
    except DistextractError as exc:
        from ._errors import JournalError

        if not isinstance(exc, JournalError) and os.path.exists(os.path.join(out_dir,
                                                                              "run.json")):
            raise click.ClickException(f"{exc} ({journal_hint(out_dir)})") from None
        raise
    result, q = outcome.result, outcome.report["queries"]
    click.echo(f"Extracted {result.model.hidden_dim} neurons into {out_dir}/model.arrow: "
               f"{result.queries} rows ({q['paid']} paid this attempt, {q['from_journal']} "
               f"from the journal), validation relative L2 {result.val_rel_l2:.3g}, "
               f"certified={result.certified}")
    from ._detect import describe_record

    click.echo("Answers: " + describe_record(result.report.get("output")))
    # the run directory is written and closed: end without the interpreter's teardown
    _Exit.fast = _Exit.own_process


# ------------------------------------------------------------------------- evaluate
@main.command(epilog="""\b
Examples:
  distextract evaluate run/model.arrow --target target.arrow
  distextract evaluate run/model.arrow --url http://127.0.0.1:8000/ --points 2000
  API_KEY=... distextract evaluate run/model.arrow --url https://api.example.com/v1/predict \\
      --api-key-env API_KEY --points 1000 --rate 5
""")
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--target", "target_path", type=click.Path(dir_okay=False), default=None,
              help="The true network as a model file (neurons are compared too).")
@click.option("--url", default=None,
              help="A live oracle API instead of a file (each point is a paid query).")
@click.option("--api-key-env", default=None,
              help="NAME of the environment variable holding the API key (with --url).")
@click.option("--rate", type=float, default=None, help="Client-side limit in requests/s (--url).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Rows per request (--url).")
@click.option("--points", type=click.IntRange(min=1), default=None,
              help="Fresh N(0, I) points compared [default: 10000 with --target, 1000 with "
                   "--url].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the points.")
@click.option("--cos-tol", type=click.FloatRange(min=0, min_open=True), default=COS_TOL,
              show_default=True,
              help="A model neuron matches a target neuron when |cos| of their normals > "
                   "1 - COS_TOL (--target). The default is DESIGN.md's float64 standard; a "
                   "model extracted from float32 or rounded answers is judged with e.g. 1e-5.")
@click.option("--bias-rtol", type=click.FloatRange(min=0, min_open=True), default=BIAS_RTOL,
              show_default=True,
              help="... and their biases agree within BIAS_RTOL·max(1, |b|) (--target).")
def evaluate(model_path: str, target_path: str | None, url: str | None,
             api_key_env: str | None, rate: float | None, batch_size: int,
             points: int | None, seed: int, cos_tol: float, bias_rtol: float) -> None:
    """Compare the model in MODEL_PATH with a target file or a live oracle on fresh
    Gaussian inputs: relative L2 error, max abs error, argmax agreement, neurons matched."""
    from ._http import HTTPOracle
    from ._model import ReluNetwork
    from .fidelity import evaluate_fidelity

    if (target_path is None) == (url is None):
        raise click.UsageError("give exactly one of --target FILE or --url URL")
    model = ReluNetwork.load(model_path)
    if target_path is not None:
        target: Any = ReluNetwork.load(target_path)
        where = target_path
        n = points or 10_000
    else:
        target = HTTPOracle(url, model.input_dim, api_key_env=api_key_env, max_batch=batch_size,
                            rate=rate, seed=seed)
        where = url
        n = points or 1_000
    try:
        rep = evaluate_fidelity(model, target, n_points=n, seed=seed, cos_tol=cos_tol,
                                bias_rtol=bias_rtol)
    finally:
        if url is not None:
            target.close()
    click.echo(f"Model {model_path} (d={model.input_dim}, k={model.hidden_dim}, "
               f"m={model.output_dim}) against {where} on {rep.n_points:,} fresh N(0, I) points:")
    click.echo(f"  relative L2 error   {rep.rel_l2:.3g}")
    click.echo(f"  max abs error       {rep.max_abs_error:.3g}  (target RMS {rep.target_rms:.3g})")
    if rep.argmax_agreement is not None:
        click.echo(f"  argmax agreement    {100 * rep.argmax_agreement:.2f}%")
    if rep.matched_neurons is not None:
        click.echo(f"  neurons             {rep.matched_neurons} of {rep.live_neurons} live "
                   f"target neurons matched, {rep.spurious_neurons} spurious "
                   f"(model {rep.model_neurons}, target {rep.target_neurons}; match: "
                   f"1-|cos| < {cos_tol:.3g}, bias within {bias_rtol:.3g})")


# --------------------------------------------------------------------------- report
@main.command(epilog="""\b
Examples:
  distextract report distextract-demo
  distextract report runs/a && open runs/a/kinks.png
""")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Summarise the run in RUN_DIR and write plots into it: kinks.png (kinks along each probe
    line), throughput.png (rows over time against the rate limit), validation.png (validation
    error per iteration), neurons.png (per-neuron confidence), and summary.txt."""
    from .report import write_report

    text, paths = write_report(run_dir)
    click.echo(text)
    click.echo("Wrote " + ", ".join(paths[name] for name in sorted(paths)))


# --------------------------------------------------------------------------- export
@main.command(epilog="""\b
Examples:
  distextract export run/model.arrow --to onnx          # run/model.onnx (onnxruntime)
  distextract export run/model.arrow --to torch         # run/model.pt (nn.Sequential)
  distextract export run/model.arrow --to npz --out weights.npz
ONNX needs: pip install "distextract[export]"; PyTorch: pip install "distextract[torch]".
""")
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(["onnx", "torch", "npz"]), required=True,
              help="onnx: float64 graph (opset 17); torch: nn.Sequential state dict (float64); "
                   "npz: W, b, A, c, L arrays.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: MODEL_PATH with .onnx, .pt or .npz].")
@click.option("--verify-points", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Random N(0, I) inputs on which the export is checked against the model.")
def export(model_path: str, fmt: str, out_path: str | None, verify_points: int) -> None:
    """Export the model in MODEL_PATH to ONNX, PyTorch or NumPy, then check the exported file
    against the Arrow model on random inputs and print the largest difference."""
    from ._model import ReluNetwork
    from .export import VERIFY_RTOL, default_path, verify_export
    from .export import export as do_export

    model = ReluNetwork.load(model_path)
    path = do_export(model, fmt, out_path or default_path(model_path, fmt))
    check = verify_export(model, path, fmt, n_points=verify_points)
    click.echo(f"Wrote {path} ({fmt}, float64, d={model.input_dim}, k={model.hidden_dim}, "
               f"m={model.output_dim})")
    click.echo(f"Verified on {check.n_points:,} random inputs against {model_path}: max |diff| "
               f"= {check.max_abs_diff:.3g}, relative {check.rel_diff:.3g} "
               f"(tolerance {VERIFY_RTOL:g})")
    if not check.ok:
        raise click.ClickException(f"the exported model differs from {model_path} by "
                                   f"{check.rel_diff:.3g} relative (> {VERIFY_RTOL:g})")


__all__ = ["main"]
