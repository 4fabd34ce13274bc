//! The embedded history store: one SQLite file in WAL mode (readers never wait for the writer),
//! migrations from `migrations/sqlite/` applied at open, in order, each once. Calls run on
//! tokio's blocking pool; one connection, behind a mutex, serves them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};

use super::{AuditRow, BoxFuture, HistoryError, Store, StoredEvent, kind_name, kind_of};
use crate::canary::audit::{AuditItem, Entry, chain_next};
use crate::journal::Event;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_events.sql")),
    (2, include_str!("../../migrations/sqlite/0002_audit.sql")),
];

/// A SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

fn db(e: rusqlite::Error) -> HistoryError {
    HistoryError::Store(e.to_string())
}

impl SqliteStore {
    /// Open (or create) the file and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                HistoryError::Store(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let new = !path.exists();
        let mut conn = Connection::open(path)
            .map_err(|e| HistoryError::Store(format!("cannot open {}: {e}", path.display())))?;
        // It holds audit reasons and tickets: readable by its owner only (SQLite gives the WAL
        // and shared-memory files the same mode).
        #[cfg(unix)]
        if new {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| HistoryError::Store(format!("cannot restrict {}: {e}", path.display())),
            )?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        migrate(&mut conn)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Open an existing file for reading only: no migration, no journal-mode change (a CLI never
    /// upgrades a sidecar's database under it); a file from a newer modelstamp is refused.
    pub fn open_read_only(path: &Path) -> Result<Self, HistoryError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| HistoryError::Store(format!("cannot open {}: {e}", path.display())))?;
        let at: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .map_err(|e| {
                HistoryError::Store(format!("{} is not a history store: {e}", path.display()))
            })?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if at.unwrap_or(0) > known {
            return Err(HistoryError::Schema(format!(
                "the database is at version {}, this modelstamp knows up to {known}: use a newer modelstamp",
                at.unwrap_or(0)
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` on the connection on the blocking pool.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, HistoryError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, HistoryError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut c)
            })
            .await
            .map_err(|e| HistoryError::Store(format!("the store's thread failed: {e}")))?
        })
    }
}

/// Apply every migration the database has not seen, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), HistoryError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )
    .map_err(db)?;
    let newest: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if newest > known {
        return Err(HistoryError::Schema(format!(
            "the database is at version {newest}, this modelstamp knows up to {known}: use a newer modelstamp"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > newest) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql)
            .map_err(|e| HistoryError::Schema(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![version, crate::journal::now_ms()],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), HistoryError>> {
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO events (at_ms, instance, kind, model, version, lineage_id, summary, fields) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .map_err(db)?;
                for s in &events {
                    let e = &s.event;
                    let fields = serde_json::to_string(&e.fields).unwrap_or_else(|_| "{}".into());
                    insert
                        .execute(params![
                            e.at_ms,
                            s.instance,
                            kind_name(e.kind),
                            e.model,
                            e.version,
                            s.lineage_id,
                            e.summary,
                            fields
                        ])
                        .map_err(db)?;
                }
            }
            tx.commit().map_err(db)
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
        self.with(move |c| {
            let mut q = c
                .prepare_cached(
                    "SELECT at_ms, instance, kind, model, version, lineage_id, summary, fields FROM events \
                     WHERE (model = ?1 OR model = '') AND at_ms >= ?2 AND at_ms <= ?3 \
                     ORDER BY at_ms DESC, id DESC LIMIT ?4",
                )
                .map_err(db)?;
            let rows = q
                .query_map(params![model, from_ms, to_ms, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (at_ms, instance, kind, model, version, lineage_id, summary, fields) =
                    row.map_err(db)?;
                // A kind a newer modelstamp wrote is skipped, not an error.
                let Some(kind) = kind_of(kind) else {
                    continue;
                };
                out.push(StoredEvent {
                    event: Event {
                        at_ms,
                        kind,
                        model,
                        version,
                        summary,
                        fields: serde_json::from_str(&fields).unwrap_or_default(),
                    },
                    instance,
                    lineage_id,
                });
            }
            // The newest `limit`, oldest first.
            out.reverse();
            Ok(out)
        })
    }

    fn prune(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, HistoryError>> {
        self.with(move |c| {
            let n = c
                .execute("DELETE FROM events WHERE at_ms < ?1", params![before_ms])
                .map_err(db)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn append_audit(
        &self,
        item: AuditItem,
        instance: String,
    ) -> BoxFuture<'_, Result<Entry, HistoryError>> {
        self.with(move |c| {
            // IMMEDIATE: the write lock first, so processes sharing the file append in turn.
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db)?;
            let prev: Option<String> = tx
                .query_row(
                    "SELECT line FROM audit WHERE model = ?1 ORDER BY seq DESC LIMIT 1",
                    params![item.draft.model],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let prev: Option<Entry> = prev
                .map(|l| serde_json::from_str(&l))
                .transpose()
                .map_err(|e| HistoryError::Store(format!("the last audit entry: {e}")))?;
            let (e, line) = chain_next(prev.as_ref(), &item);
            let at_ms =
                crate::codec::time::parse_ms(&e.time).unwrap_or_else(crate::journal::now_ms);
            tx.execute(
                "INSERT INTO audit (model, seq, at_ms, instance, actor, action, ticket, line) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    e.model,
                    i64::try_from(e.seq).unwrap_or(i64::MAX),
                    at_ms,
                    instance,
                    e.actor,
                    e.action,
                    e.ticket,
                    line
                ],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(e)
        })
    }

    fn audit(&self, model: Option<String>) -> BoxFuture<'_, Result<Vec<AuditRow>, HistoryError>> {
        self.with(move |c| {
            let mut q = c
                .prepare_cached(
                    "SELECT model, seq, at_ms, instance, actor, action, ticket, line FROM audit \
                     WHERE ?1 IS NULL OR model = ?1 ORDER BY model, seq",
                )
                .map_err(db)?;
            let rows = q
                .query_map(params![model], |r| {
                    Ok(AuditRow {
                        model: r.get(0)?,
                        seq: r.get(1)?,
                        at_ms: r.get(2)?,
                        instance: r.get(3)?,
                        actor: r.get(4)?,
                        action: r.get(5)?,
                        ticket: r.get(6)?,
                        line: r.get(7)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }
}

/// The schema version a file is at (for `modelstamp history`-style checks and tests).
pub fn schema_version(path: &Path) -> Result<Option<i64>, HistoryError> {
    let conn = Connection::open(path).map_err(db)?;
    conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(Option::flatten)
    .map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Kind;

    fn event(at_ms: i64, kind: Kind, model: &str, version: Option<&str>) -> StoredEvent {
        StoredEvent {
            event: Event {
                at_ms,
                kind,
                model: model.into(),
                version: version.map(Into::into),
                summary: format!("{kind:?} at {at_ms}"),
                fields: [("signal".to_string(), "errors".to_string())].into(),
            },
            instance: "pod-a".into(),
            lineage_id: version.map(|v| format!("ln_{v}")),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "modelstamp-history-{tag}-{}-{}",
            std::process::id(),
            crate::journal::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn events_are_kept_queried_by_model_and_window_and_pruned() {
        let d = dir("window");
        let path = d.join("sub").join("history.db");
        let store = SqliteStore::open(&path).unwrap_or_else(|e| unreachable!("{e}"));
        let batch = vec![
            event(1_000, Kind::Onset, "churn", Some("2")),
            event(2_000, Kind::RegistryDown, "", None),
            event(3_000, Kind::AliasMoved, "fraud", Some("7")),
            event(4_000, Kind::AutoRollback, "churn", Some("2")),
        ];
        store
            .append(batch.clone())
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let got = store
            .events("churn", 0, 10_000, 100)
            .await
            .unwrap_or_default();
        assert_eq!(
            got,
            vec![batch[0].clone(), batch[1].clone(), batch[3].clone()]
        );
        let window = store
            .events("churn", 1_500, 3_500, 100)
            .await
            .unwrap_or_default();
        assert_eq!(window.len(), 1, "the sidecar-wide event only");
        assert_eq!(
            store
                .events("churn", 0, 10_000, 1)
                .await
                .unwrap_or_default()
                .len(),
            1
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        // Read only: the same events; nothing can be written.
        let ro = SqliteStore::open_read_only(&path).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            ro.events("churn", 0, 10_000, 100)
                .await
                .unwrap_or_default()
                .len(),
            3
        );
        assert!(ro.append(batch.clone()).await.is_err());
        // Reopened: the same events, the schema applied once.
        drop(store);
        let store = SqliteStore::open(&path).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(schema_version(&path).ok().flatten(), Some(2));
        assert_eq!(store.prune(2_500).await.ok(), Some(2));
        let left = store
            .events("churn", 0, 10_000, 100)
            .await
            .unwrap_or_default();
        assert_eq!(left, vec![batch[3].clone()]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_database_from_a_newer_modelstamp_is_refused_and_garbage_is_an_error() {
        let d = dir("refused");
        std::fs::create_dir_all(&d).unwrap_or_default();
        let path = d.join("h.db");
        drop(SqliteStore::open(&path).unwrap_or_else(|e| unreachable!("{e}")));
        let conn = Connection::open(&path).unwrap_or_else(|e| unreachable!("{e}"));
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)", [])
            .unwrap_or_default();
        drop(conn);
        let err = SqliteStore::open(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("version 99"), "{err}");
        let junk = d.join("junk.db");
        std::fs::write(&junk, b"not a database at all, not at all, no").unwrap_or_default();
        assert!(SqliteStore::open(&junk).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn audit_chains_per_model_verify_and_an_edited_row_is_found() {
        let d = dir("audit");
        let path = d.join("h.db");
        let store = SqliteStore::open(&path).unwrap_or_else(|e| unreachable!("{e}"));
        let item = |model: &str, actor: &str| AuditItem {
            draft: crate::canary::audit::Draft {
                actor: actor.into(),
                action: "set_weights".into(),
                route: model.into(),
                model: model.into(),
                ticket: Some("ML-7".into()),
                ..Default::default()
            },
            time: "2026-12-08T01:00:00Z".into(),
        };
        for (m, a) in [("churn", "dana"), ("fraud", "eve"), ("churn", "bob")] {
            store
                .append_audit(item(m, a), "pod-a".into())
                .await
                .unwrap_or_else(|e| unreachable!("{e}"));
        }
        let rows = store.audit(None).await.unwrap_or_default();
        let chains = crate::history::verify_audit(&rows).unwrap_or_default();
        let lens: Vec<(&str, usize)> = chains.iter().map(|(m, e)| (m.as_str(), e.len())).collect();
        assert_eq!(lens, [("churn", 2), ("fraud", 1)]);
        assert_eq!(
            chains[0].1[1].prev_hash, chains[0].1[0].hash,
            "chained per model"
        );
        assert_eq!(
            store
                .audit(Some("fraud".into()))
                .await
                .unwrap_or_default()
                .len(),
            1
        );
        // An UPDATE of the hashed line, or of a searchable copy, is found.
        let conn = Connection::open(&path).unwrap_or_else(|e| unreachable!("{e}"));
        conn.execute(
            "UPDATE audit SET actor = 'mallory' WHERE model = 'churn' AND seq = 2",
            [],
        )
        .unwrap_or_default();
        let rows = store.audit(None).await.unwrap_or_default();
        let err = crate::history::verify_audit(&rows)
            .err()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(err.0, "churn");
        assert!(err.1.reason.contains("actor column"), "{}", err.1);
        conn.execute(
            "UPDATE audit SET actor = 'bob', line = replace(line, 'bob', 'mallory') WHERE seq = 2",
            [],
        )
        .unwrap_or_default();
        let rows = store.audit(None).await.unwrap_or_default();
        let err = crate::history::verify_audit(&rows)
            .err()
            .unwrap_or_else(|| unreachable!());
        assert!(err.1.reason.contains("edited"), "{}", err.1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
