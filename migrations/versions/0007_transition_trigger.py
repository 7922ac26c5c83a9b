"""The database knows the transition table: a trigger on `sweeps` refuses an illegal state change.

Whatever code path writes `sweeps.state` (the ledger, an operator's SQL session, a future bug), a
row is only born `queued` and only moves along the table in docs/design.md ("The sweep state
machine"). An UPDATE that leaves the state as it is (leases, heartbeats, due times) is not checked.
A refusal reaches Python as `sqlalchemy.exc.IntegrityError`, like the state CHECK constraint:

- Postgres: `sweeps_legal_transition()` (plpgsql) raises `check_violation` naming both states,
  called by `sweeps_legal_insert` (BEFORE INSERT) and `sweeps_legal_update` (BEFORE UPDATE OF state,
  only when the state changes).
- SQLite: `sweeps_legal_insert` and `sweeps_legal_update` with a WHEN clause and
  `RAISE(ABORT, ...)` (SQLITE_CONSTRAINT_TRIGGER, i.e. sqlite3.IntegrityError), one message per
  illegal pair so it names both states (RAISE takes a literal message only).

The table is FROZEN below, copied from `sweeper.domain.TRANSITIONS` when this was written: a later
change of the table needs a new migration that re-creates the trigger
(`tests/integration/test_migrations.py` tries every pair against domain.TRANSITIONS and fails until
it does). On SQLite, a later migration that rebuilds `sweeps` (batch mode, `recreate`) drops these
triggers with the old table and must create them again; the test of the triggers at head says so.
On Postgres, a later `ALTER COLUMN state TYPE …` (a longer state name, say) fails with "cannot alter
type of a column used in a trigger definition": such a migration drops `sweeps_legal_update` first
and creates it again after (loudly, inside the migration's transaction: nothing is half-done).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen copies (a migration must not change when the code does).
STATES = (
    "queued", "ordering", "energy_ordered", "energy_ready", "signed", "broadcast",
    "confirmed", "failed", "cancelled",
)  # fmt: skip
# None: the row is being born.
TRANSITIONS: dict[str | None, tuple[str, ...]] = {
    None: ("queued",),
    "queued": ("ordering", "cancelled"),
    "ordering": ("queued", "cancelled", "energy_ordered", "energy_ready", "failed"),
    "energy_ordered": ("energy_ready", "failed"),
    "energy_ready": ("signed", "failed"),
    "signed": ("broadcast", "energy_ready"),
    "broadcast": ("confirmed", "failed", "energy_ready"),
    "confirmed": (),
    "failed": (),
    "cancelled": (),
}

FUNCTION = "sweeps_legal_transition"
INSERT_TRIGGER = "sweeps_legal_insert"
UPDATE_TRIGGER = "sweeps_legal_update"
UNKNOWN = "illegal sweep state change: a state that is not in the transition table (migration 0007)"


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _message(source: str, target: str) -> str:
    return f"illegal sweep state change {source} -> {target}: not in the transition table (migration 0007)"


def _postgres_function() -> str:
    # OR REPLACE: dropping the ledger's tables drops their triggers but leaves this function behind;
    # a ledger re-created in the same schema then migrates cleanly.
    pairs = ", ".join(f"('{s}', '{t}')" for s, targets in TRANSITIONS.items() if s for t in targets)
    return f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NEW.state IN ({_quoted(TRANSITIONS[None])}) THEN
                    RETURN NEW;
                END IF;
                RAISE EXCEPTION '{_message("(none)", "% (sweep %)")}', NEW.state, NEW.id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.state IS NOT DISTINCT FROM OLD.state OR (OLD.state, NEW.state) IN ({pairs}) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION '{_message("%", "% (sweep %)")}', OLD.state, NEW.state, OLD.id
                USING ERRCODE = 'check_violation';
        END;
        $$ LANGUAGE plpgsql
    """


def _sqlite_insert_trigger() -> str:
    arms = " ".join(
        f"WHEN '{t}' THEN RAISE(ABORT, '{_message('(none)', t)}')"
        for t in STATES
        if t not in TRANSITIONS[None]
    )
    return (
        f"CREATE TRIGGER {INSERT_TRIGGER} BEFORE INSERT ON sweeps FOR EACH ROW "
        f"WHEN NOT (NEW.state IN ({_quoted(TRANSITIONS[None])})) "
        f"BEGIN SELECT CASE NEW.state {arms} "
        f"ELSE RAISE(ABORT, '{UNKNOWN}') END; END"
    )


def _sqlite_update_trigger() -> str:
    legal = " OR ".join(
        f"(OLD.state = '{s}' AND NEW.state IN ({_quoted(targets)}))"
        for s, targets in TRANSITIONS.items()
        if s and targets
    )
    arms = " ".join(
        f"WHEN '{s} -> {t}' THEN RAISE(ABORT, '{_message(s, t)}')"
        for s in STATES
        for t in STATES
        if t != s and t not in TRANSITIONS[s]
    )
    return (
        f"CREATE TRIGGER {UPDATE_TRIGGER} BEFORE UPDATE OF state ON sweeps FOR EACH ROW "
        f"WHEN NEW.state IS NOT OLD.state AND NOT ({legal}) "
        f"BEGIN SELECT CASE OLD.state || ' -> ' || NEW.state {arms} "
        f"ELSE RAISE(ABORT, '{UNKNOWN}') END; END"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_postgres_function())
        op.execute(
            f"CREATE TRIGGER {INSERT_TRIGGER} BEFORE INSERT ON sweeps "
            f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {UPDATE_TRIGGER} BEFORE UPDATE OF state ON sweeps "
            f"FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION {FUNCTION}()"
        )
        return
    op.execute(_sqlite_insert_trigger())
    op.execute(_sqlite_update_trigger())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER {UPDATE_TRIGGER} ON sweeps")
        op.execute(f"DROP TRIGGER {INSERT_TRIGGER} ON sweeps")
        op.execute(f"DROP FUNCTION {FUNCTION}()")
        return
    op.execute(f"DROP TRIGGER {UPDATE_TRIGGER}")
    op.execute(f"DROP TRIGGER {INSERT_TRIGGER}")
