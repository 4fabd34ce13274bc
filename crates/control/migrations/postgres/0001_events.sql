-- Every journal event of every sidecar of the fleet, with the instance that saw it.
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    instance   TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    model      TEXT   NOT NULL,
    version    TEXT,
    lineage_id TEXT,
    summary    TEXT   NOT NULL,
    fields     JSONB  NOT NULL
);
CREATE INDEX events_model_at ON events (model, at_ms);
CREATE INDEX events_at ON events (at_ms);
