//! The binary's commands that read or drive a running sidecar through its admin API (`compare`,
//! `promote`, `rollback`, `audit show`, `explain`), and `audit verify` on a file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use modelstamp::admin::client::AdminClient;
use modelstamp::canary::audit::verify;
use modelstamp::canary::diff::lineage_diff;
use modelstamp::canary::prometheus::Prometheus;
use modelstamp::canary::render::render;
use modelstamp::canary::verdict::Comparison;
use modelstamp::config::Canary;
use modelstamp::registry::LineageRecord;
use serde_json::{Value, json};

use crate::AdminArgs;

#[derive(Args)]
pub struct CompareArgs {
    /// Model (or split route) to compare.
    #[arg(long)]
    model: String,
    /// Baseline version (default: the route's canary.baseline).
    #[arg(long)]
    baseline: Option<String>,
    /// Candidate version (default: the route's canary.candidate).
    #[arg(long)]
    candidate: Option<String>,
    /// Judge from a Prometheus server's data (a fleet of sidecars) instead of one sidecar.
    #[arg(long)]
    prometheus: Option<String>,
    /// Window for --prometheus (a PromQL duration).
    #[arg(long, default_value = "5m")]
    window: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
pub struct ChangeArgs {
    /// Model (or split route).
    #[arg(long)]
    model: String,
    /// Version to promote (default: the candidate). Ignored by rollback.
    #[arg(long)]
    version: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
    /// Change ticket.
    #[arg(long)]
    ticket: Option<String>,
    /// Who (default: $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    actor: String,
    /// Admin token.
    #[arg(long, env = "MODELSTAMP_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check an audit log file's hash chain, or every model's chain in the history store; exit 1
    /// at the first edited, removed or reordered entry.
    Verify {
        /// The audit log (JSON lines); without it, the history store's chains.
        file: Option<PathBuf>,
        /// The head hash a sidecar reports (`GET /audit`): also detects entries cut from the end.
        #[arg(long)]
        head: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Search the history store's audit trail.
    Search {
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// Only entries this recent (e.g. 30d).
        #[arg(long)]
        since: Option<String>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only this ticket.
        #[arg(long)]
        ticket: Option<String>,
        /// Print JSON lines (the entries as hashed).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write the history store's audit trail as JSON lines (one model's chain verifies with
    /// `audit verify FILE`).
    Export {
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show a running sidecar's audit trail and its chain status.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which history store to read.
#[derive(Args)]
pub struct StoreArgs {
    /// A SQLite history store (default: the config's [history]).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Config whose [history] store to read.
    #[arg(long, short, env = "MODELSTAMP_CONFIG")]
    config: Option<PathBuf>,
}

/// The history store a file names, else the one a config's `[history]` names.
fn open_store(
    history: Option<&std::path::Path>,
    configured: Option<&modelstamp::config::History>,
) -> Result<Option<std::sync::Arc<dyn modelstamp::history::Store>>, String> {
    let missing = |p: &std::path::Path| format!("history store {} does not exist", p.display());
    Ok(Some(match (history, configured) {
        (Some(path), _) => {
            if !path.is_file() {
                return Err(missing(path));
            }
            std::sync::Arc::new(
                modelstamp::history::sqlite::SqliteStore::open_read_only(path)
                    .map_err(|e| e.to_string())?,
            )
        }
        (None, Some(h)) => {
            if let modelstamp::config::HistoryStore::Sqlite(path) = &h.store
                && !path.is_file()
            {
                return Err(missing(path));
            }
            modelstamp::history::open_read_only(h).map_err(|e| e.to_string())?
        }
        (None, None) => return Ok(None),
    }))
}

impl StoreArgs {
    async fn open(&self) -> Result<std::sync::Arc<dyn modelstamp::history::Store>, String> {
        let configured = match &self.config {
            Some(c) => {
                let (config, _) = modelstamp::routing::Source::File(c.clone())
                    .load()
                    .await
                    .map_err(|e| format!("{}: {e}", c.display()))?;
                config.history
            }
            None => None,
        };
        open_store(self.history.as_deref(), configured.as_ref())?.ok_or_else(|| {
            "no history store: give --history FILE or --config with [history]".into()
        })
    }
}

fn fail(e: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::FAILURE)
}

async fn record(client: &AdminClient, lineage_id: &str) -> Option<LineageRecord> {
    let v = client
        .get_json(&format!("/lineage/{lineage_id}"))
        .await
        .ok()?;
    serde_json::from_value(v["record"].clone()).ok()
}

/// `modelstamp compare`.
pub async fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let client = args.admin.client().await?;
    let comparison: Comparison = match &args.prometheus {
        None => {
            let mut q = Vec::new();
            if let Some(b) = &args.baseline {
                q.push(format!("baseline={b}"));
            }
            if let Some(c) = &args.candidate {
                q.push(format!("candidate={c}"));
            }
            let path = format!("/canary/{}?{}", args.model, q.join("&"));
            match client.get_json(&path).await {
                Ok(v) => serde_json::from_value(v)?,
                Err(e) => return fail(e),
            }
        }
        Some(url) => {
            // The sidecar (when reachable) names the roles and holds the lineage records.
            let local = client
                .get_json(&format!("/canary/{}", args.model))
                .await
                .ok();
            let role = |given: &Option<String>, key: &str| {
                given
                    .clone()
                    .or_else(|| local.as_ref()?[key]["version"].as_str().map(str::to_string))
            };
            let (Some(b), Some(c)) = (
                role(&args.baseline, "baseline"),
                role(&args.candidate, "candidate"),
            ) else {
                return fail(
                    "--prometheus needs --baseline and --candidate (or a reachable sidecar that knows them)",
                );
            };
            let prom = Prometheus::new(url)?;
            let mut diff = Vec::new();
            if let Some(l) = &local {
                let ids = (
                    l["baseline"]["lineage_id"].as_str(),
                    l["candidate"]["lineage_id"].as_str(),
                );
                if let (Some(x), Some(y)) = ids
                    && let (Some(rx), Some(ry)) =
                        (record(&client, x).await, record(&client, y).await)
                {
                    diff = lineage_diff(&rx, &ry);
                }
            }
            match prom
                .compare(
                    &args.model,
                    &b,
                    &c,
                    &args.window,
                    diff,
                    &Canary::defaults().thresholds,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => return fail(e),
            }
        }
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        out!("{}", render(&comparison));
    }
    Ok(ExitCode::SUCCESS)
}

/// `modelstamp promote` and `modelstamp rollback`.
pub async fn change(args: ChangeArgs, action: &str) -> anyhow::Result<ExitCode> {
    let client = args.admin.client().await?;
    let mut body = json!({ "actor": args.actor, "reason": args.reason, "ticket": args.ticket });
    if action == "promote"
        && let Some(v) = &args.version
    {
        body["version"] = Value::from(v.clone());
    }
    let path = format!("/canary/{}/{action}", args.model);
    match client.post_json(&path, &body, args.token.as_deref()).await {
        Ok(entry) => {
            outln!(
                "{action}: route {} weights {} -> {} (audit #{} {})",
                entry["route"].as_str().unwrap_or("-"),
                entry["before"],
                entry["after"],
                entry["seq"],
                entry["hash"].as_str().unwrap_or("-")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(e),
    }
}

/// `modelstamp audit`.
pub async fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            file: None, store, ..
        } => {
            let store = match store.open().await {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let rows = match store.audit(None).await {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match modelstamp::history::verify_audit(&rows) {
                Ok(chains) => {
                    for (model, entries) in &chains {
                        let head = entries.last().map_or("-", |e| e.hash.as_str());
                        outln!(
                            "{model}: {} entries, chain intact, head {head}",
                            entries.len()
                        );
                    }
                    outln!("{}: {} chains intact", store.describe(), chains.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err((model, b)) => fail(format!("{}: model {model}, entry {b}", store.describe())),
            }
        }
        AuditCommand::Search {
            model,
            since,
            actor,
            ticket,
            json,
            store,
        } => {
            let since_ms = match since.as_deref().map(modelstamp::config::parse_duration) {
                None => i64::MIN,
                Some(Ok(d)) => {
                    modelstamp::journal::now_ms() - i64::try_from(d.as_millis()).unwrap_or(0)
                }
                Some(Err(e)) => return fail(format!("--since: {e}")),
            };
            let store = match store.open().await {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let rows = match store.audit(model).await {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let found = rows.iter().filter(|r| {
                r.at_ms >= since_ms
                    && actor.as_ref().is_none_or(|a| *a == r.actor)
                    && ticket.as_ref().is_none_or(|t| r.ticket.as_ref() == Some(t))
            });
            for r in found {
                if json {
                    outln!("{}", r.line);
                    continue;
                }
                let e: modelstamp::canary::audit::Entry = match serde_json::from_str(&r.line) {
                    Ok(e) => e,
                    Err(e) => return fail(format!("model {} seq {}: {e}", r.model, r.seq)),
                };
                outln!(
                    "{} #{:<4} {} {:<13} {:<10} route {} {} -> {} by {} on {}: {}",
                    e.model,
                    e.seq,
                    e.time,
                    e.action,
                    e.ticket.as_deref().unwrap_or("-"),
                    e.route,
                    json!(e.before),
                    json!(e.after),
                    e.actor,
                    r.instance,
                    e.reason.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { model, store } => {
            let store = match store.open().await {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match store.audit(model).await {
                Ok(rows) => {
                    for r in rows {
                        outln!("{}", r.line);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => fail(e),
            }
        }
        AuditCommand::Verify {
            file: Some(file),
            head,
            ..
        } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
            };
            match verify(&text) {
                Ok(entries) => {
                    let last = entries
                        .last()
                        .map_or(modelstamp::canary::audit::GENESIS, |e| e.hash.as_str());
                    if let Some(h) = head.filter(|h| h != last) {
                        return fail(format!(
                            "{}: the chain is intact but ends at {last}, not at the head {h}: entries were removed from its end",
                            file.display()
                        ));
                    }
                    outln!(
                        "{}: {} entries, chain intact, head {last}",
                        file.display(),
                        entries.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(b) => fail(format!("{}: {b}", file.display())),
            }
        }
        AuditCommand::Show { admin } => {
            let client = admin.client().await?;
            match client.get_json("/audit").await {
                Ok(v) => {
                    outln!(
                        "chain: {} {}",
                        v["chain"]["status"].as_str().unwrap_or("-"),
                        v["chain"]["detail"].as_str().unwrap_or("")
                    );
                    for e in v["entries"].as_array().into_iter().flatten() {
                        outln!(
                            "#{:<4} {} {:<14} {:<10} route {} {} -> {} by {}: {}",
                            e["seq"],
                            e["time"].as_str().unwrap_or("-"),
                            e["action"].as_str().unwrap_or("-"),
                            e["ticket"].as_str().unwrap_or("-"),
                            e["route"].as_str().unwrap_or("-"),
                            e["before"],
                            e["after"],
                            e["actor"].as_str().unwrap_or("-"),
                            e["reason"].as_str().unwrap_or("-")
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => fail(e),
            }
        }
    }
}

#[derive(Args)]
pub struct ExplainArgs {
    /// Model to explain.
    #[arg(long)]
    model: String,
    /// Window ending now (default 1h).
    #[arg(long, conflicts_with = "from")]
    since: Option<String>,
    /// Window start (RFC 3339 with `Z` or an offset, or ms since the epoch).
    #[arg(long)]
    from: Option<String>,
    /// Window end (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Take health, data quality, drift and mismatches from a Prometheus server's history.
    #[arg(long)]
    prometheus: Option<String>,
    /// A history store (SQLite file) to read the events from when the sidecar does not answer
    /// (default: the config's history.path).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// The evidence a history store holds for the window, with the records of the config's registry,
/// for when no sidecar answers; `None` without a store. No health: that lives in the sidecars
/// and in Prometheus.
async fn offline(
    args: &ExplainArgs,
    unreachable: &str,
) -> Result<Option<modelstamp::explain::rules::Evidence>, String> {
    use modelstamp::explain::rules::{Evidence, VersionHealth};
    let loaded = match &args.admin.config {
        Some(c) => Some(
            modelstamp::routing::Source::File(c.clone())
                .load()
                .await
                .map_err(|e| format!("{}: {e}", c.display()))?,
        ),
        None => None,
    };
    let configured = loaded.as_ref().and_then(|(c, _)| c.history.clone());
    let Some(store) = open_store(args.history.as_deref(), configured.as_ref())? else {
        return Ok(None);
    };
    let query = args.window_query();
    let (from_ms, to_ms) = modelstamp::admin::explain::window(Some(&query))?;
    let events = store
        .events(&args.model, from_ms, to_ms, modelstamp::history::MAX_EVENTS)
        .await
        .map_err(|e| e.to_string())?;
    let mut ev = Evidence {
        model: args.model.clone(),
        from_ms,
        to_ms,
        now_ms: modelstamp::journal::now_ms(),
        health_source: format!(
            "no sidecar ({unreachable}): no health; ask with --prometheus URL for metric history"
        ),
        events_source: store.describe(),
        events: events.into_iter().map(|s| s.event).collect(),
        ..Evidence::default()
    };
    if let Some((config, registry)) = &loaded {
        if let Some(m) = registry.models.get(&args.model) {
            for (version, v) in &m.versions {
                ev.versions.push(VersionHealth {
                    version: version.clone(),
                    lineage_id: v.lineage_id.clone(),
                    record: Some((*v.record).clone()),
                    aliases: (m.aliases.iter())
                        .filter(|(_, to)| *to == version)
                        .map(|(a, _)| a.clone())
                        .collect(),
                    ..VersionHealth::default()
                });
                for f in &v.record.input_schema {
                    if let Some(s) = v.record.feature_source(f)
                        && !ev.sources.iter().any(|(n, _)| *n == f.name)
                    {
                        ev.sources.push((f.name.clone(), s));
                    }
                }
            }
        }
        let split = config
            .routes
            .iter()
            .find(|r| r.model.as_deref() == Some(args.model.as_str()) && !r.backends.is_empty());
        if let Some(r) = split {
            ev.route = Some(r.name.clone());
            ev.thresholds = Some(r.canary.thresholds.clone());
            ev.baseline = r
                .backends
                .get(r.canary.baseline)
                .and_then(|b| match &b.version {
                    modelstamp::config::Serves::Version(v) => Some(v.clone()),
                    modelstamp::config::Serves::Alias(a) => registry
                        .models
                        .get(&args.model)
                        .and_then(|m| m.aliases.get(a).cloned()),
                });
        }
    }
    Ok(Some(ev))
}

impl ExplainArgs {
    /// `since`, `from` and `to` as the admin API's query takes them.
    fn window_query(&self) -> String {
        modelstamp::codec::percent::query(
            [
                ("since", &self.since),
                ("from", &self.from),
                ("to", &self.to),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_deref()?))),
        )
    }
}

/// `modelstamp explain`.
pub async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    use modelstamp::explain::rules::{Explanation, explain};
    let client = args.admin.client().await?;
    let query = args.window_query();
    let local = client
        .get_json(&format!("/explain/{}?{query}", args.model))
        .await;
    let explanation: Explanation = match &args.prometheus {
        None => match local {
            Ok(v) => serde_json::from_value(v)?,
            // No sidecar: the history store and the config's registry can still answer.
            Err(e) => match offline(&args, &e.to_string()).await {
                Ok(Some(ev)) => explain(&ev),
                Ok(None) => return fail(e),
                Err(why) => return fail(why),
            },
        },
        Some(url) => {
            let (from, to) = match modelstamp::admin::explain::window(Some(&query)) {
                Ok(w) => w,
                Err(e) => return fail(e),
            };
            let prom = Prometheus::new(url)?;
            let mut ev =
                match modelstamp::explain::prometheus::evidence(&prom, &args.model, from, to).await
                {
                    Ok(ev) => ev,
                    Err(e) => return fail(e),
                };
            // No sidecar: the events and records from the history store and the config.
            if let Err(e) = &local
                && let Ok(Some(off)) = offline(&args, &e.to_string()).await
            {
                ev.events = off.events;
                ev.events_source = off.events_source;
                ev.route = off.route;
                ev.baseline = off.baseline;
                for h in &mut ev.versions {
                    if let Some(o) = off.versions.iter().find(|o| o.version == h.version) {
                        h.record = o.record.clone();
                        h.aliases = o.aliases.clone();
                    }
                }
                for s in off.sources {
                    if !ev.sources.iter().any(|(f, _)| *f == s.0) {
                        ev.sources.push(s);
                    }
                }
            }
            // The sidecar, when it answers, adds the timeline, aliases and lineage records.
            if let Ok(l) = &local {
                if let Ok(events) = serde_json::from_value(l["timeline"].clone()) {
                    ev.events = events;
                }
                for h in &mut ev.versions {
                    let same = l["health"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|x| x["version"] == h.version.as_str());
                    if let Some(x) = same {
                        h.aliases =
                            serde_json::from_value(x["aliases"].clone()).unwrap_or_default();
                        h.stale_detail =
                            serde_json::from_value(x["stale_detail"].clone()).unwrap_or_default();
                    }
                    h.record = record(&client, &h.lineage_id).await;
                    for f in h.record.iter().flat_map(|r| r.input_schema.iter()) {
                        let source = h.record.as_ref().and_then(|r| r.feature_source(f));
                        if let Some(s) =
                            source.filter(|_| !ev.sources.iter().any(|(n, _)| *n == f.name))
                        {
                            ev.sources.push((f.name.clone(), s));
                        }
                    }
                }
            }
            explain(&ev)
        }
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        out!("{}", modelstamp::explain::render::render(&explanation));
    }
    Ok(ExitCode::SUCCESS)
}
