"""``sealinfer bench``: the security-overhead ladder for one model, written to telemetry."""

from __future__ import annotations

from pathlib import Path

import click

from sealinfer.runtime.errors import ConfigurationError


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--requests", "-n", type=int, default=2000, show_default=True, help="Requests per rung.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size of each request.")
@click.option(
    "--telemetry-db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("telemetry.db"),
    show_default=True,
    help="Telemetry database to write (the dashboard reads it).",
)
@click.option(
    "--watermark/--no-watermark", default=True, show_default=True, help="Also time watermark verification at load."
)
def bench(model: Path, requests: int, batch: int, telemetry_db: Path, watermark: bool) -> None:
    """Run MODEL (.onnx) under each security layer in turn and print what each costs.

    Rungs: plain onnxruntime, sealed, + authorization, + audit (process), + audit (power),
    + output guards; plus load times (plain, sealed, with watermark verification).
    """
    from tqdm import tqdm

    from sealinfer.runtime.bench import RUNGS, run_bench

    if requests < 10:
        raise ConfigurationError("--requests must be at least 10.", hint="Use a few thousand for stable figures.")
    if not model.is_file():
        raise ConfigurationError(f"Model file {model} does not exist.", hint="Pass an .onnx file.")
    with tqdm(total=requests, desc=f"bench {model.name} ({len(RUNGS)} rungs)", unit="req", leave=False) as bar:
        results, notes = run_bench(
            model,
            requests=requests,
            telemetry_db=telemetry_db,
            batch=batch,
            watermark=watermark,
            progress=lambda n: bar.update(n - bar.n),
        )
    base = results[0].quantiles()[0]
    click.echo(f"\n{'configuration':38} {'p50 µs':>9} {'p95 µs':>9} {'p99 µs':>9} {'p50 vs plain':>13}")
    for res in results:
        p50, p95, p99 = res.quantiles()
        click.echo(f"{res.config:38} {p50:9.1f} {p95:9.1f} {p99:9.1f} {p50 / base - 1:+12.1%}")
    click.echo(
        f"\nload: plain {notes['plain_load_s'] * 1e3:.1f} ms, sealed {notes['sealed_load_s'] * 1e3:.1f} ms"
        + (
            f", watermark verification {notes['watermark_verify_load_s'] * 1e3:.1f} ms"
            if "watermark_verify_load_s" in notes
            else ""
        )
    )
    if "watermark_skipped" in notes:
        click.echo(f"watermark rung skipped: {notes['watermark_skipped']}")
    click.echo(
        f"telemetry written to {telemetry_db} (open it with `sealinfer dashboard --telemetry-db {telemetry_db}`)"
    )
