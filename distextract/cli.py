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


__all__ = ["main"]
