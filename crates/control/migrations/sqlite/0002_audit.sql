-- The audit trail of every sidecar, hash-chained per model: `line` is the entry exactly as
-- hashed (the JSONL form of the audit file); the other columns are copies for searching.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    model    TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    instance TEXT    NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    ticket   TEXT,
    line     TEXT    NOT NULL,
    UNIQUE (model, seq)
);
CREATE INDEX audit_at ON audit (at_ms);
