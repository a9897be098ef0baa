"""``sealinfer dp``: check DP certificates, audit models for membership leakage, run DP statistics.

Mirrors ``sealinfer.privacy``: ``check`` is ``check_certificate``, ``audit`` is ``audit_membership``,
``stats`` is ``BudgetLedger`` + ``DPStatistics``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click

from sealinfer.runtime.cli.common import load_npz
from sealinfer.runtime.errors import CertificateError, ConfigurationError

_LEDGER_OPTION = click.option(
    "--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), envvar="SEALINFER_DP_LEDGER",
    required=True, show_envvar=True, help="DP budget ledger (SQLite file; created if missing).",
)


def _read_file(path: Path, what: str, hint: str) -> bytes:
    if not path.is_file():
        raise ConfigurationError(f"{what} {path} does not exist.", hint=hint)
    return path.read_bytes()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group("dp")
def dp() -> None:
    """Differential privacy: certificate checks, membership audits, DP statistics."""


@dp.command("check")
@click.argument("cert_path", metavar="CERT.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-epsilon", type=float, required=True, help="Largest acceptable epsilon (the policy's).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX model the certificate must be bound to (checks model_sha256).")
@click.option("--prv-timeout", type=float, default=10.0, show_default=True,
              help="Seconds the PRV accountant may run before the check fails closed.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def check(cert_path: Path, max_epsilon: float, model_path: Path | None, prv_timeout: float, as_json: bool) -> None:
    """Recompute the epsilon of CERT.json with Opacus and compare it with --max-epsilon.

    Exits 0 only when the certificate passes; otherwise prints every reason and exits non-zero.
    """
    from sealinfer.privacy import Certificate, check_certificate

    text = _read_file(cert_path, "certificate", "Pass the certificate JSON written by train_dp.")
    model_bytes = None
    if model_path is not None:
        model_bytes = _read_file(model_path, "model", "Pass the ONNX file the certificate describes.")
    verdict = check_certificate(Certificate.from_json(text), max_epsilon, model_bytes=model_bytes,
                                prv_timeout_s=prv_timeout)
    if as_json:
        _echo_json(verdict.to_dict())
        if not verdict.passed:
            raise SystemExit(CertificateError.exit_code)
        return
    if verdict.passed:
        click.echo(f"PASS  epsilon={verdict.epsilon:.4f} <= {max_epsilon:g} at delta={verdict.delta:g} "
                   f"({verdict.accountant}, {verdict.total_steps} steps)")
        return
    verdict.raise_for_failure()


@dp.command("audit")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--members", "members_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help=".npz with arrays X and y of records the model was trained on.")
@click.option("--non-members", "non_members_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help=".npz with arrays X and y of records it was not trained on.")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="DP certificate to compare with the empirical bound (its delta is used).")
@click.option("--delta", type=float, default=None, help="delta for the bound [default: the cert's, else 1e-5].")
@click.option("--outputs", type=click.Choice(["logits", "probabilities"]), default="logits", show_default=True,
              help="What the model's first output holds.")
@click.option("--json", "as_json", is_flag=True, help="Print the audit as JSON.")
def audit(model_path: Path, members_path: Path, non_members_path: Path, cert_path: Path | None,
          delta: float | None, outputs: str, as_json: bool) -> None:
    """Loss-threshold membership-inference audit of MODEL.onnx.

    Prints AUC, TPR at FPR=1e-3 and a 95%-confidence lower bound on epsilon. With --cert, exits
    non-zero when the certificate's epsilon is below that bound (the certificate overstates privacy).
    """
    from sealinfer.privacy import Certificate, audit_membership, compute_epsilon

    model_bytes = _read_file(model_path, "model", "Pass an ONNX classifier.")
    members = _load_npz(members_path)
    non_members = _load_npz(non_members_path)
    cert_eps = None
    if cert_path is not None:
        cert = Certificate.from_json(_read_file(cert_path, "certificate", "Pass the model's certificate JSON."))
        cert_eps = compute_epsilon(cert.accountant, cert.history(), cert.delta)
        delta = cert.delta if delta is None else delta
    result = audit_membership(model_bytes, members, non_members, delta=1e-5 if delta is None else delta,
                              certificate_epsilon=cert_eps, outputs=outputs)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(f"records        {result.n_members} members, {result.n_non_members} non-members")
        click.echo(f"AUC            {result.auc:.4f}")
        click.echo(f"TPR@FPR=1e-3   {result.tpr_at_fpr_1e3:.4f}")
        click.echo(f"epsilon >=     {result.epsilon_lower_bound:.4f}  "
                   f"({result.confidence:.0%} confidence, delta={result.delta:g})")
        if cert_eps is not None:
            click.echo(f"certificate    epsilon={cert_eps:.4f}  {'FLAGGED' if result.flagged else 'consistent'}")
    if result.flagged:
        raise CertificateError(
            f"the certificate claims epsilon={cert_eps:.4g} but the audit proves epsilon >= "
            f"{result.epsilon_lower_bound:.4g} at {result.confidence:.0%} confidence.",
            hint="Do not deploy this model; its training did not deliver the certified privacy.",
        )


def _load_npz(path: Path) -> tuple[Any, Any]:
    hint = "Save it with numpy.savez(path, X=features, y=labels)."
    data = load_npz(path, what="records", hint=hint)
    if "X" not in data or "y" not in data:
        raise ConfigurationError(f"{path} is not an .npz with arrays X and y (it holds {sorted(data)}).", hint=hint)
    return data["X"], data["y"]


@dp.group("stats")
def stats() -> None:
    """DP statistics over prediction logs, under a per-dataset privacy budget."""


@stats.command("budget")
@click.argument("dataset", required=False)
@click.option("--set", "set_epsilon", type=float, default=None, help="Set DATASET's total budget to this epsilon.")
@_LEDGER_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the budgets as JSON.")
def budget(dataset: str | None, set_epsilon: float | None, ledger_path: Path, as_json: bool) -> None:
    """Show every dataset's budget and spending, or set DATASET's budget with --set."""
    from sealinfer.privacy import BudgetLedger

    if set_epsilon is not None and dataset is None:
        raise ConfigurationError("--set needs a DATASET.", hint="sealinfer dp stats budget DATASET --set 1.0")
    with BudgetLedger(ledger_path) as ledger:
        if set_epsilon is not None:
            ledger.set_budget(dataset, set_epsilon)
        rows = [r for r in ledger.summary() if dataset is None or r["dataset"] == dataset]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no budgets set" if dataset is None else f"no budget for {dataset!r}")
        return
    click.echo(f"{'dataset':<24} {'budget':>10} {'spent':>10} {'left':>10} {'queries':>8}")
    for r in rows:
        left = max(r["budget_epsilon"] - r["spent_epsilon"], 0.0)
        click.echo(f"{r['dataset']:<24} {r['budget_epsilon']:>10.4g} {r['spent_epsilon']:>10.4g} {left:>10.4g} "
                   f"{r['queries']:>8}")


@stats.command("query")
@_LEDGER_OPTION
@click.option("--dataset", required=True, help="Dataset whose budget pays for the query.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV file of the prediction log (one row per record).")
@click.option("--kind", type=click.Choice(["count", "sum", "mean", "histogram"]), required=True)
@click.option("--column", default=None, help="CSV column to aggregate (not needed for count).")
@click.option("--epsilon", type=float, required=True, help="Privacy budget this query spends.")
@click.option("--bounds", type=(float, float), default=None, help="Public clamping bounds LOWER UPPER (sum, mean).")
@click.option("--edges", default=None, help="Histogram bin edges, comma-separated (numeric column).")
@click.option("--categories", default=None, help="Histogram categories, comma-separated (label column).")
@click.option("--json", "as_json", is_flag=True, help="Print the release as JSON.")
def query(ledger_path: Path, dataset: str, data_path: Path, kind: str, column: str | None, epsilon: float,
          bounds: tuple[float, float] | None, edges: str | None, categories: str | None, as_json: bool) -> None:
    """Release one DP aggregate of a CSV column, charging --epsilon to DATASET's budget.

    Refused, with nothing spent, when the budget is insufficient.
    """
    from sealinfer.privacy import BudgetLedger, DPStatistics

    rows = _read_csv(data_path)
    if kind != "count" and column is None:
        raise ConfigurationError(f"--kind {kind} needs --column.", hint="Name the CSV column to aggregate.")
    if column and rows and column not in rows[0]:
        raise ConfigurationError(f"{data_path} has no column {column!r}.",
                                 hint=f"Columns: {', '.join(rows[0])}.")
    values: list[Any] = [row[column] for row in rows] if column else [True] * len(rows)
    with BudgetLedger(ledger_path) as ledger:
        stats_ = DPStatistics(ledger, dataset)
        if kind == "count":
            release = stats_.count(values, epsilon=epsilon)
        elif kind in ("sum", "mean"):
            if bounds is None:
                raise ConfigurationError(f"--kind {kind} needs --bounds LOWER UPPER.",
                                         hint="Use public bounds, e.g. --bounds 0 1 for a risk score.")
            nums = _numbers(values, column)
            release = (stats_.sum if kind == "sum" else stats_.mean)(nums, bounds=bounds, epsilon=epsilon)
        else:
            if edges is not None:
                edge_list = [float(e) for e in edges.split(",") if e.strip()]
                release = stats_.histogram(_numbers(values, column), edges=edge_list, epsilon=epsilon)
            elif categories is not None:
                release = stats_.histogram(values, categories=[c.strip() for c in categories.split(",")],
                                           epsilon=epsilon)
            else:
                raise ConfigurationError("--kind histogram needs --edges or --categories.",
                                         hint="e.g. --edges 0,0.5,1 or --categories low,high")
    if as_json:
        _echo_json(release.to_dict())
        return
    click.echo(f"{release.query}({column or '*'}) = {release.value}")
    click.echo(f"epsilon spent {release.epsilon:.4g} ({release.mechanism}, scale {release.scale:.4g}); "
               f"{release.remaining_epsilon:.4g} left for {dataset!r}")


@stats.command("history")
@_LEDGER_OPTION
@click.option("--dataset", default=None, help="Only this dataset's charges.")
@click.option("--json", "as_json", is_flag=True, help="Print the charges as JSON.")
def history(ledger_path: Path, dataset: str | None, as_json: bool) -> None:
    """List every charge made to the ledger, oldest first."""
    from sealinfer.privacy import BudgetLedger

    with BudgetLedger(ledger_path) as ledger:
        rows = ledger.history(dataset)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['spent_at']}  {r['dataset']:<20} eps={r['epsilon']:<10.4g} {r['query']}  [{r['mechanism']}]")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist.", hint="Pass the prediction log as CSV.")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path} is not readable CSV ({exc}).", hint="Export the log as UTF-8 CSV.") from exc


def _numbers(values: list[Any], column: str | None) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"column {column!r} has a non-numeric value ({exc}).",
                                 hint="Use a numeric column, or --categories for labels.") from exc
