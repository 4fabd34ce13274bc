//! The fleet's history store: PostgreSQL, shared by every sidecar of a model (a schema of its
//! own, `modelstamp` by default, in a database that may also hold MLflow's). The connection is
//! made when first needed and made again after it breaks, so a sidecar starts, and serves, while
//! PostgreSQL is down (its writer spools). Migrations from `migrations/postgres/` are applied at
//! the first connection, under an advisory lock so sidecars starting together apply each once.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{AuditRow, BoxFuture, HistoryError, Store, StoredEvent};
use crate::canary::audit::{AuditItem, Entry, chain_next};
use crate::journal::{Event, Kind};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_events.sql")),
    (2, include_str!("../../migrations/postgres/0002_audit.sql")),
];
/// The advisory lock key migrations are applied under ("msmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d_73_6d_69_67_72;

/// A PostgreSQL database.
pub struct PostgresStore {
    config: tokio_postgres::Config,
    schema: String,
    describe: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("store", &self.describe)
            .finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> HistoryError {
    HistoryError::Store(e.to_string())
}

impl PostgresStore {
    /// A store for `url` (`postgres://user@host:5432/db`), with `password` when given (it wins
    /// over one in the URL), in `schema`. Nothing is connected yet: a bad URL is an error here,
    /// an unreachable server is not.
    pub fn new(url: &str, password: Option<&str>, schema: &str) -> Result<Self, HistoryError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| HistoryError::Store(format!("history.url: {e}")))?;
        if let Some(p) = password {
            config.password(p);
        }
        if config.get_hosts().is_empty() {
            return Err(HistoryError::Store("history.url names no host".into()));
        }
        if !schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.is_empty()
        {
            return Err(HistoryError::Store(format!(
                "history.schema {schema:?}: lower-case letters, digits and _ only"
            )));
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let describe = format!(
            "postgres://{}{host}:{port}/{} (schema {schema})",
            config
                .get_user()
                .map(|u| format!("{u}@"))
                .unwrap_or_default(),
            config.get_dbname().unwrap_or("postgres"),
        );
        Ok(Self {
            config,
            schema: schema.to_string(),
            describe,
            client: Mutex::new(None),
        })
    }

    /// The connected client: the one made before while it works, else a new one (schema
    /// brought up to date).
    async fn client(&self) -> Result<Arc<Client>, HistoryError> {
        let mut held = self.client.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *held = None;
        let (client, connection) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.config.connect(NoTls),
        )
        .await
        .map_err(|_| HistoryError::Store("connecting took longer than 5 s".into()))?
        .map_err(db)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "History store connection ended.");
            }
        });
        migrate(&client, &self.schema).await?;
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }
}

/// Create the schema and apply every migration it has not seen, under the advisory lock.
async fn migrate(client: &Client, schema: &str) -> Result<(), HistoryError> {
    client
        .batch_execute(&format!(
            "SET client_min_messages TO warning; CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
        ))
        .await
        .map_err(db)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    let result = apply(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlock.map_err(db)?;
    Ok(())
}

async fn apply(client: &Client) -> Result<(), HistoryError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .await
        .map_err(db)?;
    let newest: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if newest > known {
        return Err(HistoryError::Schema(format!(
            "the database is at version {newest}, this modelstamp knows up to {known}: use a newer modelstamp"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > newest) {
        client.batch_execute("BEGIN").await.map_err(db)?;
        let done = async {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| HistoryError::Schema(format!("migration {version}: {e}")))?;
            client
                .execute(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
                    &[version, &crate::journal::now_ms()],
                )
                .await
                .map_err(db)?;
            Ok::<_, HistoryError>(())
        }
        .await;
        match done {
            Ok(()) => client.batch_execute("COMMIT").await.map_err(db)?,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A batch of events as column arrays, for one `INSERT … SELECT FROM UNNEST`.
#[derive(Default)]
struct Columns {
    at: Vec<i64>,
    instance: Vec<String>,
    kind: Vec<String>,
    model: Vec<String>,
    version: Vec<Option<String>>,
    lineage_id: Vec<Option<String>>,
    summary: Vec<String>,
    fields: Vec<String>,
}

fn kind_name(k: Kind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl PostgresStore {
    /// Forget a client whose call failed, so the next call connects again.
    async fn failed(&self, e: tokio_postgres::Error) -> HistoryError {
        if e.is_closed() {
            *self.client.lock().await = None;
        }
        db(e)
    }
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), HistoryError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut c = Columns::default();
            for s in &events {
                let e = &s.event;
                c.at.push(e.at_ms);
                c.instance.push(s.instance.clone());
                c.kind.push(kind_name(e.kind));
                c.model.push(e.model.clone());
                c.version.push(e.version.clone());
                c.lineage_id.push(s.lineage_id.clone());
                c.summary.push(e.summary.clone());
                c.fields
                    .push(serde_json::to_string(&e.fields).unwrap_or_else(|_| "{}".into()));
            }
            // One statement for the batch: atomic without a transaction of its own.
            let done = client
                .execute(
                    "INSERT INTO events (at_ms, instance, kind, model, version, lineage_id, summary, fields) \
                     SELECT a, i, k, m, v, l, s, f::jsonb FROM UNNEST($1::bigint[], $2::text[], $3::text[], \
                     $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS t(a, i, k, m, v, l, s, f)",
                    &[
                        &c.at,
                        &c.instance,
                        &c.kind,
                        &c.model,
                        &c.version,
                        &c.lineage_id,
                        &c.summary,
                        &c.fields,
                    ],
                )
                .await;
            match done {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failed(e).await),
            }
        })
    }

    fn events(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, HistoryError>> {
        let model = model.to_string();
        let limit = i64::try_from(limit.min(super::MAX_EVENTS)).unwrap_or(i64::MAX);
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT at_ms, instance, kind, model, version, lineage_id, summary, fields::text FROM events \
                     WHERE (model = $1 OR model = '') AND at_ms >= $2 AND at_ms <= $3 \
                     ORDER BY at_ms, id LIMIT $4",
                    &[&model, &from_ms, &to_ms, &limit],
                )
                .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => return Err(self.failed(e).await),
            };
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let kind: String = r.get(2);
                // A kind a newer modelstamp wrote is skipped, not an error.
                let Ok(kind) = serde_json::from_value::<Kind>(serde_json::Value::String(kind))
                else {
                    continue;
                };
                let fields: String = r.get(7);
                out.push(StoredEvent {
                    event: Event {
                        at_ms: r.get(0),
                        kind,
                        model: r.get(3),
                        version: r.get(4),
                        summary: r.get(6),
                        fields: serde_json::from_str(&fields).unwrap_or_default(),
                    },
                    instance: r.get(1),
                    lineage_id: r.get(5),
                });
            }
            Ok(out)
        })
    }

    fn append_audit(
        &self,
        item: AuditItem,
        instance: String,
    ) -> BoxFuture<'_, Result<Entry, HistoryError>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Only the writer opens transactions on this connection, one at a time.
            let done = async {
                client.batch_execute("BEGIN").await?;
                // Every appender of this model, in any sidecar, waits here for the one before.
                client
                    .execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        &[&item.draft.model],
                    )
                    .await?;
                let prev = client
                    .query_opt(
                        "SELECT line FROM audit WHERE model = $1 ORDER BY seq DESC LIMIT 1",
                        &[&item.draft.model],
                    )
                    .await?
                    .map(|r| r.get::<_, String>(0));
                Ok::<_, tokio_postgres::Error>(prev)
            }
            .await;
            let prev = match done {
                Ok(p) => p,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(self.failed(e).await);
                }
            };
            let prev: Option<Entry> = match prev.map(|l| serde_json::from_str(&l)).transpose() {
                Ok(p) => p,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(HistoryError::Store(format!("the last audit entry: {e}")));
                }
            };
            let (e, line) = chain_next(prev.as_ref(), &item);
            let at_ms =
                crate::codec::time::parse_ms(&e.time).unwrap_or_else(crate::journal::now_ms);
            let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
            let written = async {
                client
                    .execute(
                        "INSERT INTO audit (model, seq, at_ms, instance, actor, action, ticket, line) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[&e.model, &seq, &at_ms, &instance, &e.actor, &e.action, &e.ticket, &line],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            match written {
                Ok(()) => Ok(e),
                Err(err) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(self.failed(err).await)
                }
            }
        })
    }

    fn audit(&self, model: Option<String>) -> BoxFuture<'_, Result<Vec<AuditRow>, HistoryError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT model, seq, at_ms, instance, actor, action, ticket, line FROM audit \
                     WHERE $1::text IS NULL OR model = $1 ORDER BY model, seq",
                    &[&model],
                )
                .await;
            match rows {
                Ok(rows) => Ok(rows
                    .iter()
                    .map(|r| AuditRow {
                        model: r.get(0),
                        seq: r.get(1),
                        at_ms: r.get(2),
                        instance: r.get(3),
                        actor: r.get(4),
                        action: r.get(5),
                        ticket: r.get(6),
                        line: r.get(7),
                    })
                    .collect()),
                Err(e) => Err(self.failed(e).await),
            }
        })
    }

    fn prune(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, HistoryError>> {
        Box::pin(async move {
            let client = self.client().await?;
            match client
                .execute("DELETE FROM events WHERE at_ms < $1", &[&before_ms])
                .await
            {
                Ok(n) => Ok(n),
                Err(e) => Err(self.failed(e).await),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_schemas_are_checked_before_any_connection() {
        let s = PostgresStore::new(
            "postgres://ms@db.internal:5433/mlflow",
            Some("pw"),
            "modelstamp",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            s.describe(),
            "postgres://ms@db.internal:5433/mlflow (schema modelstamp)"
        );
        assert!(PostgresStore::new("mysql://x", None, "modelstamp").is_err());
        assert!(PostgresStore::new("postgres://h/db", None, "drop table;").is_err());
        assert!(PostgresStore::new("postgres://h/db", None, "").is_err());
    }
}
