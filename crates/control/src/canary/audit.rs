//! The audit log: every traffic change (weights set by hand, promotions, rollbacks automatic or
//! not, config reloads that change weights) as one JSON line, each hash-chained to the one
//! before, so an edited, removed or reordered entry is detected by `modelstamp audit verify`.
//!
//! `hash` = SHA-256 (hex) of the line's exact bytes without its trailing `,"hash":"…"` member
//! (the entry serialised with its fields in declared order, no whitespace, `hash` last), so the
//! check never depends on how a JSON parser rounds numbers; `prev_hash` is the previous entry's
//! `hash` (64 zeros for the first). `seq` counts from 1. A log cut short at its end is detected
//! against the head the sidecar reports (`GET /audit`).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::time::rfc3339;

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Entries kept in memory for `GET /audit`.
const KEPT: usize = 10_000;

/// One audited change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Who: the caller's `actor`, `config-reload` or `auto-rollback`.
    pub actor: String,
    /// `set_weights`, `promote`, `rollback`, `auto_rollback` or `reload`.
    pub action: String,
    /// Route.
    pub route: String,
    /// Model.
    pub model: String,
    /// Why.
    pub reason: Option<String>,
    /// Change ticket.
    pub ticket: Option<String>,
    /// Weights by version before.
    pub before: BTreeMap<String, u32>,
    /// Weights by version after.
    pub after: BTreeMap<String, u32>,
    /// The canary comparison at that moment, when there was one.
    pub comparison: Option<serde_json::Value>,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// What a caller records; the log fills in sequence, time and hashes.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Route.
    pub route: String,
    /// Model.
    pub model: String,
    /// Why.
    pub reason: Option<String>,
    /// Ticket.
    pub ticket: Option<String>,
    /// Weights before.
    pub before: BTreeMap<String, u32>,
    /// Weights after.
    pub after: BTreeMap<String, u32>,
    /// The comparison at that moment.
    pub comparison: Option<serde_json::Value>,
}

/// Why a log does not verify.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct Broken {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// What the audit file says about its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chain {
    /// No file: entries are kept in memory only.
    Memory,
    /// The file verifies and ends at the head: this many entries.
    Intact(usize),
    /// The file verifies but ends before the head (entries removed from its end).
    Truncated(usize),
    /// An entry was edited, removed or reordered.
    Broken(Broken),
    /// The file could not be read.
    Unreadable(String),
}

/// The audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The existing file does not verify.
    #[error("audit log {path} does not verify ({broken}); move it aside to start a new one")]
    Broken {
        /// The file.
        path: PathBuf,
        /// Where and why.
        broken: Broken,
    },
    /// Reading or writing failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The line of an entry whose `hash` is still empty: the hashed bytes, and the line written.
fn sealed_line(e: &mut Entry) -> String {
    e.hash = String::new();
    let unhashed = serde_json::to_string(&*e).unwrap_or_default();
    e.hash = sha256_hex(unhashed.as_bytes());
    let body = unhashed.strip_suffix('}').unwrap_or(&unhashed);
    format!("{body},\"hash\":\"{}\"}}", e.hash)
}

/// The bytes a line's hash covers: the line without its trailing `,"hash":"<64 hex>"` member.
fn hashed_part(line: &str) -> Option<String> {
    let i = line.rfind(",\"hash\":\"")?;
    let tail = &line[i + 9..];
    let hex = tail.strip_suffix("\"}")?;
    (hex.len() == 64).then(|| format!("{}}}", &line[..i]))
}

/// An entry to keep in the history store as well: the draft and the time the file's entry got.
/// The store chains it per model itself (sequence and hashes of its own chain).
#[derive(Debug, Clone)]
pub struct AuditItem {
    /// What was recorded.
    pub draft: Draft,
    /// When (RFC 3339, as in the file).
    pub time: String,
}

/// The next entry of a model's chain in a store, after `prev` (`None`: the first), sealed:
/// the entry and its exact line.
pub fn chain_next(prev: Option<&Entry>, item: &AuditItem) -> (Entry, String) {
    let d = &item.draft;
    let mut e = Entry {
        seq: prev.map_or(1, |p| p.seq + 1),
        time: item.time.clone(),
        actor: d.actor.clone(),
        action: d.action.clone(),
        route: d.route.clone(),
        model: d.model.clone(),
        reason: d.reason.clone(),
        ticket: d.ticket.clone(),
        before: d.before.clone(),
        after: d.after.clone(),
        comparison: d.comparison.clone(),
        prev_hash: prev.map_or_else(|| GENESIS.to_string(), |p| p.hash.clone()),
        hash: String::new(),
    };
    let line = sealed_line(&mut e);
    (e, line)
}

/// One model's chain as a store holds it: each row's `(seq, actor, ticket, line)`, in `seq`
/// order. The lines must verify as a log, and the searchable columns must say what the hashed
/// lines say (an `UPDATE` of either is found).
pub fn verify_rows(rows: &[(i64, String, Option<String>, String)]) -> Result<Vec<Entry>, Broken> {
    let text: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    let entries = verify(&text.join("\n"))?;
    if let Some(i) = rows.iter().position(|r| r.3.trim().is_empty()) {
        return Err(Broken {
            line: i + 1,
            reason: "the entry is empty (edited)".into(),
        });
    }
    for (i, (row, e)) in rows.iter().zip(&entries).enumerate() {
        let broken = |what: &str| Broken {
            line: i + 1,
            reason: format!("the {what} column does not match the hashed entry (edited)"),
        };
        if u64::try_from(row.0).ok() != Some(e.seq) {
            return Err(broken("seq"));
        }
        if row.1 != e.actor {
            return Err(broken("actor"));
        }
        if row.2 != e.ticket {
            return Err(broken("ticket"));
        }
    }
    Ok(entries)
}

/// Check a whole log; returns its entries.
pub fn verify(text: &str) -> Result<Vec<Entry>, Broken> {
    let mut prev = GENESIS.to_string();
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let broken = |reason: String| Broken {
            line: i + 1,
            reason,
        };
        let e: Entry =
            serde_json::from_str(line).map_err(|e| broken(format!("not an audit entry: {e}")))?;
        let want_seq = out.len() as u64 + 1;
        if e.seq != want_seq {
            return Err(broken(format!(
                "seq {} where {want_seq} was expected (an entry was removed or reordered)",
                e.seq
            )));
        }
        if e.prev_hash != prev {
            return Err(broken(
                "prev_hash does not match the previous entry (removed or reordered)".into(),
            ));
        }
        let line = line.trim_end();
        if hashed_part(line).is_none_or(|part| sha256_hex(part.as_bytes()) != e.hash) {
            return Err(broken("hash does not match the content (edited)".into()));
        }
        prev = e.hash.clone();
        out.push(e);
    }
    Ok(out)
}

#[derive(Debug)]
struct Inner {
    recent: VecDeque<Entry>,
    seq: u64,
    head: String,
    file: Option<File>,
}

/// Audits the weight changes a config reload makes (`actor: config-reload`), as the canary's
/// own calls are audited: a follower of the reloader, which itself knows nothing of audit.
pub struct ReloadAudit(pub std::sync::Arc<AuditLog>);

impl crate::routing::Subscriber for ReloadAudit {
    fn on(&self, event: &crate::routing::ReloadEvent<'_>) {
        let crate::routing::ReloadEvent::Reloaded { weights, .. } = event else {
            return;
        };
        for c in *weights {
            let draft = Draft {
                actor: "config-reload".into(),
                action: "reload".into(),
                route: c.route.clone(),
                model: c.model.clone(),
                reason: Some("the config file changed the weights".into()),
                before: c.before.clone(),
                after: c.after.clone(),
                ..Default::default()
            };
            if let Err(e) = self.0.append(draft) {
                tracing::warn!(error = %e, "Audit entry for a reload could not be written.");
            }
        }
    }
}

/// The running log: appended to a file (when configured) and kept in memory.
#[derive(Debug)]
pub struct AuditLog {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Where entries are also sent for the history store, when one is set.
    store: std::sync::OnceLock<tokio::sync::mpsc::Sender<AuditItem>>,
}

impl AuditLog {
    /// Open (or create) the log at `path`, continuing its chain; `None` keeps it in memory only.
    pub fn open(path: Option<&Path>) -> Result<Self, AuditError> {
        let mut inner = Inner {
            recent: VecDeque::new(),
            seq: 0,
            head: GENESIS.to_string(),
            file: None,
        };
        if let Some(p) = path {
            let io = |source| AuditError::Io {
                path: p.to_path_buf(),
                source,
            };
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(io(e)),
            };
            let entries = verify(&text).map_err(|broken| AuditError::Broken {
                path: p.to_path_buf(),
                broken,
            })?;
            if let Some(last) = entries.last() {
                inner.seq = last.seq;
                inner.head = last.hash.clone();
            }
            let skip = entries.len().saturating_sub(KEPT);
            inner.recent = entries.into_iter().skip(skip).collect();
            inner.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io)?,
            );
        }
        Ok(Self {
            path: path.map(Path::to_path_buf),
            inner: Mutex::new(inner),
            store: std::sync::OnceLock::new(),
        })
    }

    /// Send every entry from now on to `tx` as well (the history store's writer; once).
    pub fn set_store(&self, tx: tokio::sync::mpsc::Sender<AuditItem>) {
        let _ = self.store.set(tx);
    }

    /// Append an entry (written and synced before this returns).
    pub fn append(&self, d: Draft) -> Result<Entry, AuditError> {
        let for_store = self.store.get().map(|tx| (tx, d.clone()));
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut e = Entry {
            seq: inner.seq + 1,
            time: rfc3339(SystemTime::now()),
            actor: d.actor,
            action: d.action,
            route: d.route,
            model: d.model,
            reason: d.reason,
            ticket: d.ticket,
            before: d.before,
            after: d.after,
            comparison: d.comparison,
            prev_hash: inner.head.clone(),
            hash: String::new(),
        };
        let mut line = sealed_line(&mut e);
        line.push('\n');
        if let (Some(file), Some(path)) = (inner.file.as_mut(), &self.path) {
            let io = |source| AuditError::Io {
                path: path.clone(),
                source,
            };
            file.write_all(line.as_bytes()).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        inner.seq = e.seq;
        inner.head = e.hash.clone();
        inner.recent.push_back(e.clone());
        if inner.recent.len() > KEPT {
            inner.recent.pop_front();
        }
        // Queued under the lock, so the store gets entries in the file's order.
        if let Some((tx, draft)) = for_store {
            let item = AuditItem {
                draft,
                time: e.time.clone(),
            };
            if tx.try_send(item).is_err() {
                tracing::warn!(model = %e.model, seq = e.seq, "The history store's audit queue is full or closed: this entry is in the audit file only.");
            }
        }
        drop(inner);
        Ok(e)
    }

    /// The most recent entries, oldest first, and the head `(seq, hash)`.
    pub fn recent(&self) -> (Vec<Entry>, u64, String) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (
            inner.recent.iter().cloned().collect(),
            inner.seq,
            inner.head.clone(),
        )
    }

    /// Whether the file still verifies and ends at the running head `head_seq`.
    pub fn chain(&self, head_seq: u64) -> Chain {
        let Some(p) = &self.path else {
            return Chain::Memory;
        };
        match std::fs::read_to_string(p).map(|t| verify(&t)) {
            Ok(Ok(all)) if all.last().map_or(0, |e| e.seq) == head_seq => Chain::Intact(all.len()),
            Ok(Ok(all)) => Chain::Truncated(all.len()),
            Ok(Err(b)) => Chain::Broken(b),
            Err(e) => Chain::Unreadable(e.to_string()),
        }
    }

    /// Where the log is written, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &str, after: u32) -> Draft {
        Draft {
            actor: "alice".into(),
            action: action.into(),
            route: "churn".into(),
            model: "churn".into(),
            reason: Some("canary step".into()),
            ticket: Some("ML-1".into()),
            before: [("1".to_string(), 100), ("2".to_string(), 0)].into(),
            after: [("1".to_string(), 100 - after), ("2".to_string(), after)].into(),
            comparison: None,
        }
    }

    fn written() -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("modelstamp-audit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("audit-{}.jsonl", rand_suffix()));
        let log = AuditLog::open(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        for (i, w) in [10, 25, 50].into_iter().enumerate() {
            let e = log
                .append(draft("set_weights", w))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(e.seq, i as u64 + 1);
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        (path, text)
    }

    fn rand_suffix() -> u64 {
        crate::routing::split::random_key()
    }

    #[test]
    fn a_written_log_verifies_and_continues_its_chain_after_a_restart() {
        let (path, text) = written();
        let entries = verify(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].prev_hash, GENESIS);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        let reopened = AuditLog::open(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        let e = reopened
            .append(draft("promote", 100))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.seq, e.prev_hash.as_str()), (4, entries[2].hash.as_str()));
        let all = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(verify(&all).map(|v| v.len()), Ok(4));
    }

    #[test]
    fn entries_with_any_float_verify() {
        let log = AuditLog::open(None).unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        for i in 0..200u32 {
            let mut d = draft("set_weights", i % 100);
            let x = f64::from(i) * 0.001_244_572_877_874_843_1 + 1e-17 * f64::from(i);
            d.comparison =
                Some(serde_json::json!({ "p50": x, "ratio": 1.0 / (f64::from(i) + 3.0) }));
            let mut e = log.append(d).unwrap_or_else(|e| panic!("{e}"));
            text.push_str(&sealed_line(&mut e));
            text.push('\n');
        }
        assert_eq!(verify(&text).map(|v| v.len()), Ok(200));
    }

    #[test]
    fn edits_removals_and_reorderings_are_detected() {
        let (path, text) = written();
        let lines: Vec<&str> = text.lines().collect();
        let edited = text.replacen("\"2\":25", "\"2\":99", 1);
        assert_eq!(verify(&edited).map_err(|b| b.line), Err(2));
        assert!(
            verify(&edited)
                .err()
                .is_some_and(|b| b.reason.contains("edited"))
        );
        let removed = format!("{}\n{}\n", lines[0], lines[2]);
        assert_eq!(verify(&removed).map_err(|b| b.line), Err(2));
        let reordered = format!("{}\n{}\n{}\n", lines[1], lines[0], lines[2]);
        assert_eq!(verify(&reordered).map_err(|b| b.line), Err(1));
        let garbage = format!("{text}not json\n");
        assert_eq!(verify(&garbage).map_err(|b| b.line), Err(4));
        // A tampered file is not appended to.
        std::fs::write(&path, edited).unwrap_or_default();
        assert!(matches!(
            AuditLog::open(Some(&path)),
            Err(AuditError::Broken { .. })
        ));
        let memory = AuditLog::open(None).unwrap_or_else(|e| panic!("{e}"));
        memory
            .append(draft("rollback", 0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(memory.recent().1, 1);
    }
}
