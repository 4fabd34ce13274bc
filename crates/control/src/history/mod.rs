//! History: the journal's events kept for good, so `explain` answers for windows the sidecar's
//! memory no longer holds, and after a restart. Behind one [`Store`] trait; the embedded backend
//! is SQLite ([`sqlite::SqliteStore`], one file, WAL mode). Events reach it through a bounded
//! queue and the [`Writer`], off the request path: a full queue drops (counted), a store outage
//! spools (bounded, counted when it overflows) and flushes on recovery.

pub mod postgres;
pub mod sqlite;
mod writer;

use std::future::Future;
use std::pin::Pin;

pub use writer::{Writer, channel};

use crate::canary::audit::{AuditItem, Entry};
use crate::journal::Event;

/// A boxed future, as the [`Store`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One event as kept: the journal's event, which sidecar saw it, and the lineage ID of its
/// version then.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The event.
    pub event: Event,
    /// The sidecar that recorded it (`history.instance`).
    pub instance: String,
    /// The lineage ID its version had when it was recorded.
    pub lineage_id: Option<String>,
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database refused or failed.
    #[error("history store {0}")]
    Store(String),
    /// A migration in the repo does not match what the database holds.
    #[error("history schema: {0}")]
    Schema(String),
}

/// Where events are kept.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A short description for logs (`sqlite:/var/lib/modelstamp/history.db`).
    fn describe(&self) -> String;
    /// Keep these events (in one transaction).
    fn append(&self, events: Vec<StoredEvent>) -> BoxFuture<'_, Result<(), HistoryError>>;
    /// Events of `model` and sidecar-wide ones between two times (ms since the epoch), oldest
    /// first, at most `limit`.
    fn events(
        &self,
        model: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, HistoryError>>;
    /// Remove events older than `before_ms`; returns how many. (Audit entries are kept.)
    fn prune(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, HistoryError>>;
    /// Append an audit entry to its model's chain, in one transaction that serialises every
    /// appender of that model (sidecars of a fleet included); returns the stored entry.
    fn append_audit(
        &self,
        item: AuditItem,
        instance: String,
    ) -> BoxFuture<'_, Result<Entry, HistoryError>>;
    /// Audit rows, by model then sequence: all, or one model's.
    fn audit(&self, model: Option<String>) -> BoxFuture<'_, Result<Vec<AuditRow>, HistoryError>>;
}

/// One stored audit entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// Model (its chain).
    pub model: String,
    /// Position in the chain.
    pub seq: i64,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// The sidecar that recorded it.
    pub instance: String,
    /// Who (searchable copy).
    pub actor: String,
    /// What.
    pub action: String,
    /// Ticket (searchable copy).
    pub ticket: Option<String>,
    /// The entry exactly as hashed.
    pub line: String,
}

/// Each model's verified chain: `(model, entries)`.
pub type Chains = Vec<(String, Vec<Entry>)>;

/// Check every model's chain in `rows` (by model, then seq): the chains, or the first break
/// with its model.
pub fn verify_audit(rows: &[AuditRow]) -> Result<Chains, (String, crate::canary::audit::Broken)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let model = &rows[i].model;
        let end = i + rows[i..].iter().take_while(|r| &r.model == model).count();
        let chain: Vec<_> = rows[i..end]
            .iter()
            .map(|r| (r.seq, r.actor.clone(), r.ticket.clone(), r.line.clone()))
            .collect();
        let entries = crate::canary::audit::verify_rows(&chain).map_err(|b| (model.clone(), b))?;
        // The searchable copies must say what the hashed lines say.
        for (k, (row, e)) in rows[i..end].iter().zip(&entries).enumerate() {
            let differs = if row.model != e.model {
                Some("model")
            } else if row.action != e.action {
                Some("action")
            } else if crate::codec::time::parse_ms(&e.time) != Some(row.at_ms) {
                Some("at_ms")
            } else {
                None
            };
            if let Some(what) = differs {
                return Err((
                    model.clone(),
                    crate::canary::audit::Broken {
                        line: k + 1,
                        reason: format!(
                            "the {what} column does not match the hashed entry (edited)"
                        ),
                    },
                ));
            }
        }
        out.push((model.clone(), entries));
        i = end;
    }
    Ok(out)
}

/// The store a config names. SQLite is opened (and migrated) now; PostgreSQL connects when first
/// used, so a sidecar starts while it is down.
pub fn open(h: &crate::config::History) -> Result<std::sync::Arc<dyn Store>, HistoryError> {
    Ok(match &h.store {
        crate::config::HistoryStore::Sqlite(path) => {
            std::sync::Arc::new(sqlite::SqliteStore::open(path)?)
        }
        crate::config::HistoryStore::Postgres {
            url,
            password,
            schema,
        } => std::sync::Arc::new(postgres::PostgresStore::new(
            &url.0,
            password.as_ref().map(|p| p.0.as_str()),
            schema,
        )?),
    })
}

/// The store a config names, for reading only (the CLI): nothing is migrated or created.
pub fn open_read_only(
    h: &crate::config::History,
) -> Result<std::sync::Arc<dyn Store>, HistoryError> {
    Ok(match &h.store {
        crate::config::HistoryStore::Sqlite(path) => {
            std::sync::Arc::new(sqlite::SqliteStore::open_read_only(path)?)
        }
        crate::config::HistoryStore::Postgres {
            url,
            password,
            schema,
        } => std::sync::Arc::new(
            postgres::PostgresStore::new(&url.0, password.as_ref().map(|p| p.0.as_str()), schema)?
                .read_only(),
        ),
    })
}

/// A kind as stored (`onset`, `weights_changed`: its serde name).
fn kind_name(k: crate::journal::Kind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A stored kind back; `None` for one a newer modelstamp wrote (its row is skipped).
fn kind_of(name: String) -> Option<crate::journal::Kind> {
    serde_json::from_value(serde_json::Value::String(name)).ok()
}

/// Most events one query returns.
pub const MAX_EVENTS: usize = 50_000;

/// The journal's events and the store's for one window, without the ones both hold, oldest
/// first.
pub fn merge(memory: Vec<Event>, stored: Vec<StoredEvent>) -> Vec<Event> {
    let key = |e: &Event| {
        (
            e.at_ms,
            e.kind,
            e.model.clone(),
            e.version.clone(),
            e.summary.clone(),
        )
    };
    let mut seen: std::collections::HashSet<_> = memory.iter().map(key).collect();
    let mut out = memory;
    for s in stored {
        if seen.insert(key(&s.event)) {
            out.push(s.event);
        }
    }
    out.sort_by_key(|e| e.at_ms);
    out
}
