"""A per-dataset privacy budget, persisted in SQLite, spent atomically.

Each DP release charges its epsilon here *before* the noisy answer is computed, inside one
``BEGIN IMMEDIATE`` transaction that reads what was spent and appends the charge only if it fits; so
two processes sharing the file cannot overspend, and a refused query spends nothing. Charges are
append-only (triggers forbid UPDATE/DELETE) because the spent total is the guarantee.

Composition is basic (epsilons add up), which is always valid; it is loose for many small queries.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sealinfer.privacy.errors import BudgetExceededError, LedgerError, PrivacyParameterError

LEDGER_KIND = "sealinfer-dp-ledger"
SCHEMA_VERSION = "1"
_SLACK = 1e-9  # float sums of charges may exceed the budget by rounding only

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY,
    budget_epsilon REAL NOT NULL CHECK (budget_epsilon >= 0),
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL REFERENCES budgets(dataset),
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    query TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    spent_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spends_dataset ON spends(dataset);
CREATE TRIGGER IF NOT EXISTS spends_no_update BEFORE UPDATE ON spends
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS spends_no_delete BEFORE DELETE ON spends
    BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
"""


class BudgetLedger:
    """Privacy budgets and their spending, one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise LedgerError(f"ledger path {self.path} is a directory.", hint="Give a file path, e.g. dp_ledger.db.")
        if not self.path.parent.is_dir():
            raise LedgerError(f"folder {self.path.parent} does not exist.", hint="Create it first.")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a charge must survive power loss once acknowledged
            self._db.execute("PRAGMA foreign_keys=ON")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a usable SQLite ledger ({exc}).",
                              hint="Point --ledger at a DP ledger file or a new path.") from exc

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- budgets ---------------------------------------------------------------------------------

    def set_budget(self, dataset: str, epsilon: float) -> None:
        """Create or change ``dataset``'s total budget; it may not go below what is already spent."""
        _check_dataset(dataset)
        _check_epsilon("budget epsilon", epsilon, allow_zero=True)
        with self._transaction() as db:
            spent = self._spent(db, dataset)
            if epsilon < spent - _SLACK:
                raise PrivacyParameterError(
                    f"dataset {dataset!r} has already spent epsilon={spent:.6g}; a budget of {epsilon:g} is below it.",
                    hint="Spent privacy cannot be refunded; set a budget of at least the spent amount.",
                )
            db.execute(
                "INSERT INTO budgets(dataset, budget_epsilon, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(dataset) DO UPDATE SET budget_epsilon=excluded.budget_epsilon, "
                "updated_at=excluded.updated_at",
                (dataset, float(epsilon), _now()),
            )

    def budget(self, dataset: str) -> float | None:
        row = self._read("SELECT budget_epsilon FROM budgets WHERE dataset=?", (dataset,))
        return None if not row else float(row[0][0])

    def spent(self, dataset: str) -> float:
        with self._lock:
            return self._spent(self._db, dataset)

    def remaining(self, dataset: str) -> float:
        budget = self.budget(dataset)
        return 0.0 if budget is None else max(budget - self.spent(dataset), 0.0)

    # --- spending --------------------------------------------------------------------------------

    def spend(self, dataset: str, epsilon: float, *, query: str = "", mechanism: str = "") -> float:
        """Charge ``epsilon`` to ``dataset`` atomically and return the budget left.

        Raises ``BudgetExceededError`` (and records nothing) when the charge does not fit or the dataset
        has no budget.
        """
        _check_dataset(dataset)
        _check_epsilon("epsilon", epsilon, allow_zero=False)
        with self._transaction() as db:
            row = db.execute("SELECT budget_epsilon FROM budgets WHERE dataset=?", (dataset,)).fetchone()
            if row is None:
                raise BudgetExceededError(
                    f"dataset {dataset!r} has no privacy budget, so no query may run on it.",
                    hint=f"Set one first: sealinfer dp stats budget {dataset} --set EPSILON.",
                )
            budget = float(row[0])
            spent = self._spent(db, dataset)
            if spent + epsilon > budget + _SLACK:
                raise BudgetExceededError(
                    f"query needs epsilon={epsilon:.6g} but dataset {dataset!r} has {max(budget - spent, 0):.6g} "
                    f"left of its {budget:g} budget; nothing was released or spent.",
                    hint="Ask for a smaller epsilon, or have the data owner raise the budget.",
                )
            db.execute(
                "INSERT INTO spends(dataset, epsilon, query, mechanism, spent_at) VALUES (?, ?, ?, ?, ?)",
                (dataset, float(epsilon), query, mechanism, _now()),
            )
            return max(budget - spent - epsilon, 0.0)

    # --- reading ---------------------------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """One dict per dataset: dataset, budget_epsilon, spent_epsilon, queries."""
        rows = self._read(
            "SELECT b.dataset, b.budget_epsilon, COALESCE(SUM(s.epsilon), 0.0), COUNT(s.id) "
            "FROM budgets b LEFT JOIN spends s ON s.dataset = b.dataset GROUP BY b.dataset ORDER BY b.dataset"
        )
        return [
            {"dataset": d, "budget_epsilon": float(b), "spent_epsilon": float(s), "queries": int(q)}
            for d, b, s, q in rows
        ]

    def history(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Every charge (oldest first), optionally for one dataset."""
        sql = "SELECT id, dataset, epsilon, query, mechanism, spent_at FROM spends"
        rows = self._read(sql + (" WHERE dataset=? ORDER BY id" if dataset else " ORDER BY id"),
                          (dataset,) if dataset else ())
        keys = ("id", "dataset", "epsilon", "query", "mechanism", "spent_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # --- internals -------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "ledger_meta" not in tables:
            raise LedgerError(
                f"{self.path} is an SQLite database but not a DP ledger (tables: {', '.join(sorted(tables))}).",
                hint="Use a separate file for the ledger.",
            )
        if "ledger_meta" not in tables:
            # One script in one transaction; IF NOT EXISTS / OR IGNORE make a concurrent creator harmless.
            self._db.executescript(
                "BEGIN IMMEDIATE;" + _SCHEMA
                + f"INSERT OR IGNORE INTO ledger_meta VALUES ('kind', '{LEDGER_KIND}');"
                + f"INSERT OR IGNORE INTO ledger_meta VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;"
            )
        meta = dict(self._db.execute("SELECT key, value FROM ledger_meta").fetchall())
        if meta.get("kind") != LEDGER_KIND or meta.get("schema_version") != SCHEMA_VERSION:
            raise LedgerError(f"{self.path} is not a version-{SCHEMA_VERSION} DP ledger ({meta}).",
                              hint="Use a ledger written by this sealinfer version.")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock before the read, so check-then-append is atomic across processes.
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot lock the ledger {self.path} ({exc}).",
                                  hint="Check the file is writable and not held by a stuck process.") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _spent(db: sqlite3.Connection, dataset: str) -> float:
        return float(db.execute("SELECT COALESCE(SUM(epsilon), 0.0) FROM spends WHERE dataset=?",
                                (dataset,)).fetchone()[0])


def _check_dataset(dataset: str) -> None:
    if not isinstance(dataset, str) or not dataset.strip() or len(dataset) > 200:
        raise PrivacyParameterError(f"dataset name {dataset!r} is invalid.", hint="Use a short non-empty name.")


def _check_epsilon(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise PrivacyParameterError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} "
                                    "finite number.", hint="Pass a number such as 1.0.")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
