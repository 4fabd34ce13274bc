//! The fleet's history store: PostgreSQL, shared by every sidecar of a model (a schema of its
//! own, `modelstamp` by default, in a database that may also hold MLflow's). The connection is
//! made when first needed and made again after it breaks, so a sidecar starts, and serves, while
//! PostgreSQL is down (its writer spools). Migrations from `migrations/postgres/` are applied at
//! the first connection, under an advisory lock so sidecars starting together apply each once.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{AuditRow, BoxFuture, HistoryError, Store, StoredEvent, kind_name, kind_of};
use crate::canary::audit::{AuditItem, Entry, chain_next};
use crate::journal::Event;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_events.sql")),
    (2, include_str!("../../migrations/postgres/0002_audit.sql")),
];
/// The advisory lock key migrations are applied under ("msmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d_73_6d_69_67_72;

/// How long one call may take (a blackholed network fails here, not hours later).
const CALL: std::time::Duration = std::time::Duration::from_secs(10);

/// A PostgreSQL database. Writes (the writer's batches, audit transactions, pruning) and reads
/// (`explain`, `audit verify`) use connections of their own: a read never lands inside an audit
/// transaction, nor waits behind another sidecar's chain lock.
pub struct PostgresStore {
    config: tokio_postgres::Config,
    schema: String,
    describe: String,
    /// Whether connecting brings the schema up to date (a sidecar) or only reads it (the CLI).
    migrate: bool,
    writer: Mutex<Option<Arc<Client>>>,
    reader: Mutex<Option<Arc<Client>>>,
}

/// Which connection a call uses.
#[derive(Clone, Copy)]
enum Role {
    Writer,
    Reader,
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
            migrate: true,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    /// The same store for reading only: connecting never migrates the schema (a newer CLI
    /// does not upgrade a fleet's database under its sidecars).
    pub fn read_only(mut self) -> Self {
        self.migrate = false;
        self
    }

    fn slot(&self, role: Role) -> &Mutex<Option<Arc<Client>>> {
        match role {
            Role::Writer => &self.writer,
            Role::Reader => &self.reader,
        }
    }

    /// The connected client of `role`: the one made before while it works, else a new one
    /// (schema brought up to date by the writer's).
    async fn client(&self, role: Role) -> Result<Arc<Client>, HistoryError> {
        let mut held = self.slot(role).lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *held = None;
        let connect = async {
            let (client, connection) = self.config.connect(NoTls).await.map_err(db)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "History store connection ended.");
                }
            });
            if self.migrate && matches!(role, Role::Writer) {
                migrate(&client, &self.schema).await?;
            } else {
                client
                    .batch_execute(&format!("SET search_path TO {}", self.schema))
                    .await
                    .map_err(db)?;
            }
            Ok::<_, HistoryError>(client)
        };
        let client = tokio::time::timeout(CALL * 3, connect)
            .await
            .map_err(|_| HistoryError::Store("connecting took longer than 30 s".into()))??;
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }

    /// Run one call with its client, within [`CALL`]; a call that times out or finds the
    /// connection closed drops it, so the next call connects again.
    async fn call<T, F, Fut>(&self, role: Role, f: F) -> Result<T, HistoryError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, HistoryError>>,
    {
        let client = self.client(role).await?;
        let closed = client.clone();
        match tokio::time::timeout(CALL, f(client)).await {
            Ok(Err(e)) if closed.is_closed() => {
                *self.slot(role).lock().await = None;
                Err(e)
            }
            Ok(r) => r,
            Err(_) => {
                *self.slot(role).lock().await = None;
                Err(HistoryError::Store(format!(
                    "a call took longer than {} s",
                    CALL.as_secs()
                )))
            }
        }
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

impl Store for PostgresStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), HistoryError>> {
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
        Box::pin(self.call(Role::Writer, move |client| async move {
            // One statement for the batch: atomic without a transaction of its own.
            client
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
                .await
                .map(|_| ())
                .map_err(db)
        }))
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
        Box::pin(self.call(Role::Reader, move |client| async move {
            let rows = client
                .query(
                    "SELECT at_ms, instance, kind, model, version, lineage_id, summary, fields::text FROM events \
                     WHERE (model = $1 OR model = '') AND at_ms >= $2 AND at_ms <= $3 \
                     ORDER BY at_ms DESC, id DESC LIMIT $4",
                    &[&model, &from_ms, &to_ms, &limit],
                )
                .await
                .map_err(db)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let kind: String = r.get(2);
                // A kind a newer modelstamp wrote is skipped, not an error.
                let Some(kind) = kind_of(kind) else {
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
            // The newest `limit`, oldest first.
            out.reverse();
            Ok(out)
        }))
    }

    fn prune(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, HistoryError>> {
        Box::pin(self.call(Role::Writer, move |client| async move {
            client
                .execute("DELETE FROM events WHERE at_ms < $1", &[&before_ms])
                .await
                .map_err(db)
        }))
    }

    fn append_audit(
        &self,
        item: AuditItem,
        instance: String,
    ) -> BoxFuture<'_, Result<Entry, HistoryError>> {
        Box::pin(self.call(Role::Writer, move |client| async move {
            // The writer's own connection: nothing else runs inside this transaction.
            let result = async {
                client.batch_execute("BEGIN").await.map_err(db)?;
                // Every appender of this model, in any sidecar, waits here for the one before.
                client
                    .execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        &[&item.draft.model],
                    )
                    .await
                    .map_err(db)?;
                let prev = client
                    .query_opt(
                        "SELECT line FROM audit WHERE model = $1 ORDER BY seq DESC LIMIT 1",
                        &[&item.draft.model],
                    )
                    .await
                    .map_err(db)?
                    .map(|r| r.get::<_, String>(0));
                let prev: Option<Entry> = prev
                    .map(|l| serde_json::from_str(&l))
                    .transpose()
                    .map_err(|e| HistoryError::Store(format!("the last audit entry: {e}")))?;
                let (e, line) = chain_next(prev.as_ref(), &item);
                let at_ms =
                    crate::codec::time::parse_ms(&e.time).unwrap_or_else(crate::journal::now_ms);
                let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
                client
                    .execute(
                        "INSERT INTO audit (model, seq, at_ms, instance, actor, action, ticket, line) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[&e.model, &seq, &at_ms, &instance, &e.actor, &e.action, &e.ticket, &line],
                    )
                    .await
                    .map_err(db)?;
                client.batch_execute("COMMIT").await.map_err(db)?;
                Ok(e)
            }
            .await;
            if result.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            result
        }))
    }

    fn audit(&self, model: Option<String>) -> BoxFuture<'_, Result<Vec<AuditRow>, HistoryError>> {
        Box::pin(self.call(Role::Reader, move |client| async move {
            let rows = client
                .query(
                    "SELECT model, seq, at_ms, instance, actor, action, ticket, line FROM audit \
                     WHERE $1::text IS NULL OR model = $1 ORDER BY model, seq",
                    &[&model],
                )
                .await
                .map_err(db)?;
            Ok(rows
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
                .collect())
        }))
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
