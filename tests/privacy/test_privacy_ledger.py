"""BudgetLedger: atomic spending, refusal past the budget, persistence across reopen and processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from sealinfer.privacy import BudgetExceededError, BudgetLedger, LedgerError, PrivacyParameterError


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "dp_ledger.db"


def test_spends_until_the_budget_then_refuses_and_spends_nothing(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("icu-preds", 1.0)
        assert ledger.spend("icu-preds", 0.4, query="count", mechanism="discrete laplace") == pytest.approx(0.6)
        assert ledger.spend("icu-preds", 0.6, query="mean") == pytest.approx(0.0)
        with pytest.raises(BudgetExceededError, match="nothing was released or spent") as err:
            ledger.spend("icu-preds", 0.01, query="histogram")
        assert err.value.hint
        assert ledger.summary() == [
            {"dataset": "icu-preds", "budget_epsilon": 1.0, "spent_epsilon": pytest.approx(1.0), "queries": 2}
        ]
        assert [h["query"] for h in ledger.history("icu-preds")] == ["count", "mean"]


def test_an_oversized_query_is_refused_even_when_budget_remains(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 1.0)
        ledger.spend("d", 0.5)
        with pytest.raises(BudgetExceededError):
            ledger.spend("d", 0.6)
        assert ledger.spent("d") == pytest.approx(0.5)
        assert ledger.remaining("d") == pytest.approx(0.5)


def test_dataset_without_budget_is_refused(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        with pytest.raises(BudgetExceededError, match="no privacy budget"):
            ledger.spend("unknown", 0.1)
        assert ledger.summary() == [] and ledger.history() == []


def test_budgets_are_per_dataset(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("a", 1.0)
        ledger.set_budget("b", 2.0)
        ledger.spend("a", 1.0)
        ledger.spend("b", 1.5)
        with pytest.raises(BudgetExceededError):
            ledger.spend("a", 0.1)
        summary = {r["dataset"]: r for r in ledger.summary()}
        assert summary["b"]["spent_epsilon"] == pytest.approx(1.5) and summary["a"]["queries"] == 1


def test_survives_reopening(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 1.0)
        ledger.spend("d", 0.7, query="q1")
    with BudgetLedger(ledger_path) as reopened:
        assert reopened.spent("d") == pytest.approx(0.7)
        with pytest.raises(BudgetExceededError):
            reopened.spend("d", 0.5)
        assert reopened.summary()[0]["queries"] == 1


def test_survives_a_process_restart(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 1.0)
        ledger.spend("d", 0.7, query="before restart")
    script = textwrap.dedent(f"""
        import json
        from sealinfer.privacy import BudgetExceededError, BudgetLedger
        ledger = BudgetLedger({str(ledger_path)!r})
        try:
            ledger.spend("d", 0.5)
            refused = False
        except BudgetExceededError:
            refused = True
        ledger.spend("d", 0.3, query="after restart")
        print(json.dumps({{"refused": refused, "summary": ledger.summary()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["refused"] is True
    assert result["summary"][0]["spent_epsilon"] == pytest.approx(1.0)
    with BudgetLedger(ledger_path) as ledger:
        assert [h["query"] for h in ledger.history()] == ["before restart", "after restart"]


def test_concurrent_processes_cannot_overspend(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 2.5)
    script = textwrap.dedent(f"""
        from sealinfer.privacy import BudgetExceededError, BudgetLedger
        ledger = BudgetLedger({str(ledger_path)!r})
        ok = 0
        for _ in range(20):
            try:
                ledger.spend("d", 0.1)
                ok += 1
            except BudgetExceededError:
                pass
        print(ok)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    successes = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    assert successes == 25
    with BudgetLedger(ledger_path) as ledger:
        assert ledger.spent("d") == pytest.approx(2.5)
        assert ledger.summary()[0]["queries"] == 25


def test_budget_cannot_drop_below_spent(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 1.0)
        ledger.spend("d", 0.8)
        with pytest.raises(PrivacyParameterError, match="cannot be refunded"):
            ledger.set_budget("d", 0.5)
        ledger.set_budget("d", 2.0)
        assert ledger.remaining("d") == pytest.approx(1.2)


def test_charges_are_append_only(ledger_path):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 1.0)
        ledger.spend("d", 0.8)
    db = sqlite3.connect(ledger_path)
    for sql in ("DELETE FROM spends", "UPDATE spends SET epsilon = 0"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    db.close()


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), True])
def test_bad_epsilon_is_refused(ledger_path, bad):
    with BudgetLedger(ledger_path) as ledger:
        ledger.set_budget("d", 1.0)
        with pytest.raises(PrivacyParameterError):
            ledger.spend("d", bad)


def test_foreign_database_is_refused(tmp_path):
    other = tmp_path / "audit.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE audit_events (seq INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not a DP ledger"):
        BudgetLedger(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError):
        BudgetLedger(garbage)
    with pytest.raises(LedgerError, match="does not exist"):
        BudgetLedger(tmp_path / "missing" / "ledger.db")
