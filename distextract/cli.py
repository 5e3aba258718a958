"""The ``distextract`` command line (click).

Errors raised on purpose by distextract print ``Error: message`` and exit with status 1, without
a traceback; ``--verbose`` turns on logging.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ._errors import DistextractError


class _Group(click.Group):
    """A click group that turns library errors into ``Error: message``, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistextractError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.option("--verbose", "-v", count=True, help="Log progress (-vv: debug).")
def main(verbose: int) -> None:
    """Extract a one-hidden-layer ReLU network from black-box query access."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
        )


@main.command()
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
@click.option("--max-batch", type=int, default=None, help="Most rows per request (else 413).")
@click.option("--fail-rate", default=0.0, show_default=True,
              help="Probability of a random 503.")
@click.option("--drop-rate", default=0.0, show_default=True,
              help="Probability of closing the connection after computing the answer.")
@click.option("--api-key-env", default=None,
              help="Name of the environment variable holding the accepted API key (else 401).")
@click.option("--output", default="float64", show_default=True,
              help="float64, float32, round:N or softmax.")
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


@main.command()
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
def extract(url: str, input_dim: int, out_dir: str, api_key_env: str | None,
            budget: int | None, rate: float | None, rows_rate: float | None, batch_size: int,
            max_in_flight: int, timeout: float, retries: int, seed: int, resume: bool,
            workers: int, address: str | None) -> None:
    """Extract the network behind URL into the run directory --out."""
    import json
    import os
    import time

    from ._extract import extract as run_extract
    from ._http import HTTPOracle
    from ._journal import JournaledOracle, journal_dir, prepare_run_dir
    from .rundir import write_run_outputs
    from .engine._config import ExtractConfig

    t0 = time.perf_counter()
    http = HTTPOracle(url, input_dim, api_key_env=api_key_env, max_batch=batch_size, rate=rate,
                      rows_rate=rows_rate, max_in_flight=max_in_flight, timeout=timeout,
                      retries=retries, budget=budget, seed=seed)
    oracle = None
    try:
        info = prepare_run_dir(out_dir, oracle=http.describe(), input_dim=input_dim, seed=seed,
                               config={"extract": ExtractConfig().to_dict()}, resume=resume)
        oracle = JournaledOracle(http, journal_dir(out_dir), "main")
        if resume and oracle.rows_loaded:
            oracle.verify(1)
            click.echo(f"Resuming: {oracle.rows_loaded} answered rows in the journal")
        try:
            result = run_extract(oracle, input_dim=input_dim, seed=seed, budget=budget,
                                 workers=workers, address=address)
        except DistextractError as exc:
            raise click.ClickException(
                f"{exc} (answers already paid are journaled in {journal_dir(out_dir)}; rerun "
                f"with --resume to continue without paying for them again)") from None
        # model.arrow, neurons.arrow, kinks.arrow, lines.arrow (report.json is replaced below
        # by the run's report, which holds the extraction report under "extraction").
        write_run_outputs(out_dir, result)
        http_stats = http.stats()
        report = {
            "run": {"url": http.describe()["url"], "input_dim": input_dim, "seed": seed,
                    "created": info.get("created"), "resumed": resume},
            "queries": {
                "rows": result.queries,
                "paid": http_stats["rows_paid"],
                "answered": http_stats["rows_answered"],
                "refused": http_stats["rows_refused"],
                "from_journal": oracle.rows_from_journal,
                "requests": http_stats["requests"],
                "retries": http_stats["retries"],
                "statuses": http_stats["statuses"],
            },
            "fidelity_estimate": {"rel_l2": result.val_rel_l2, "max_abs": result.val_max_abs,
                                  "certified": result.certified,
                                  "stop_reason": result.stop_reason},
            "wall_seconds": time.perf_counter() - t0,
            "extraction": result.report,
        }
        tmp = os.path.join(out_dir, f"report.json.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=float)
        os.replace(tmp, os.path.join(out_dir, "report.json"))
    finally:
        (oracle or http).close()
    click.echo(f"Extracted {result.model.hidden_dim} neurons into {out_dir}/model.arrow: "
               f"{result.queries} rows ({http_stats['rows_paid']} paid this attempt, "
               f"{oracle.rows_from_journal} from the journal), validation relative L2 "
               f"{result.val_rel_l2:.3g}, certified={result.certified}")


__all__ = ["main"]
