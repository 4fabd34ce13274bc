//! Loading and hot reload: read → validate → build a snapshot (fallible, off the hot path) →
//! swap it in with arc-swap (infallible). An invalid file logs its errors and changes nothing.
//!
//! Three things trigger a new snapshot: the config or file registry changing (polled, or
//! SIGHUP), an MLflow refresh that returns different records (polled, or a webhook), and a
//! dataset-changed event. A failed MLflow refresh keeps the last known good records.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify, watch};
use tracing::{info, warn};

use super::Snapshot;
use crate::config::{
    self, Config, ConfigError, ConfigErrors, MlflowSettings, RegistrySource, raw::RawConfig,
};
use crate::journal::{Event, Journal, Kind};
use crate::observe::metrics::{Metrics, VersionLabels};
use crate::registry::mlflow::MlflowRegistry;
use crate::registry::{
    DatasetKey, DatasetVersion, DatasetVersions, FileRegistry, Registry, RegistryData, matching,
    parse_registry, read_bounded, registry_files,
};
use crate::stamp::FileStamp;

/// Largest config file read: hand-written configs are a few KB; a larger file is refused
/// before parsing.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Where config and registry come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A config file on disk (and the registry it names); watched for changes.
    File(PathBuf),
    /// A config and registry held in memory (the demo); never changes.
    Embedded {
        /// The raw config.
        config: Box<RawConfig>,
        /// Registry YAML.
        registry_yaml: String,
    },
}

impl Source {
    /// Read and validate the config.
    pub fn load_config(&self) -> Result<Config, ConfigErrors> {
        match self {
            Source::File(path) => {
                let origin = path.display().to_string();
                let text = read_bounded(path, MAX_CONFIG_BYTES, "a config file's limit")
                    .map_err(|e| ConfigErrors(vec![ConfigError::new(&origin, e)]))?;
                let mut raw = config::parse(&text, &origin)?;
                raw.apply_env(|k| std::env::var(k).ok());
                config::validate(&raw, base_dir(path))
            }
            Source::Embedded { config, .. } => config::validate(config, Path::new(".")),
        }
    }

    /// Read and validate the config on a blocking thread: parsing a large file must not hold
    /// up the runtime that asks.
    pub async fn config(&self) -> Result<Config, ConfigErrors> {
        let source = self.clone();
        blocking(move || source.load_config()).await
    }

    /// Read and validate config and a file registry (the form `check` uses); an MLflow
    /// registry is fetched once.
    pub async fn load(&self) -> Result<(Config, RegistryData), ConfigErrors> {
        let config = self.config().await?;
        let registry = match (&config.registry, self) {
            (_, Source::Embedded { registry_yaml, .. }) => {
                let yaml = registry_yaml.clone();
                blocking(move || parse_registry(&yaml, "embedded registry")).await?
            }
            (RegistrySource::File(p), _) => {
                FileRegistry::new(p.clone(), config.registry_max_bytes)
                    .fetch()
                    .await?
            }
            (RegistrySource::Mlflow(m), _) => MlflowRegistry::new((**m).clone())?.fetch().await?,
        };
        Ok((config, registry))
    }

    /// The files a reload reads for `config`: the config file, a file registry, and the secret
    /// and certificate files it names.
    fn watched_paths(&self, config: &Config) -> Vec<PathBuf> {
        let Source::File(path) = self else {
            return Vec::new();
        };
        let mut paths = vec![path.clone()];
        match &config.registry {
            RegistrySource::File(p) => paths.push(p.clone()),
            // Secrets and certificates are read with the config: a rotation reloads it.
            RegistrySource::Mlflow(m) => paths.extend(m.files.iter().cloned()),
        }
        // A model server's rotated CA or client certificate: new connections use it.
        for tls in config.routes.iter().filter_map(|r| r.upstream_tls.as_ref()) {
            let f = &tls.files;
            for file in [&f.ca_file, &f.cert_file, &f.key_file]
                .into_iter()
                .flatten()
            {
                if !paths.contains(file) {
                    paths.push(file.clone());
                }
            }
        }
        paths
    }
}

/// Run parsing, validation or a snapshot build on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConfigErrors> + Send + 'static,
) -> Result<T, ConfigErrors> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ConfigErrors(vec![ConfigError::new(
            "reload",
            format!("the loader stopped: {e}"),
        )]))
    })
}

/// The watched files: their metadata, checked every poll, and a hash of their content,
/// computed only when the metadata moved (a `touch` or a rewrite with the same bytes reloads
/// nothing). A watched directory (a registry split into files) stands for itself and its
/// registry files: adding, removing or replacing one moves the metadata.
#[derive(Debug, Default, Clone)]
struct Watched {
    roots: Vec<PathBuf>,
    stamps: Vec<(PathBuf, Option<FileStamp>)>,
    content: u64,
}

impl Watched {
    /// Stamp and hash `roots` now (reads every file: call on a blocking thread).
    fn read(roots: Vec<PathBuf>) -> Self {
        let stamps = Self::stamp_all(&roots);
        Self::hashed(roots, stamps)
    }

    /// Hash the content of the files just stamped (stamped first: a write while hashing is
    /// seen by the next poll).
    fn hashed(roots: Vec<PathBuf>, stamps: Vec<(PathBuf, Option<FileStamp>)>) -> Self {
        let mut h = DefaultHasher::new();
        for (path, stamp) in &stamps {
            path.hash(&mut h);
            if stamp.as_ref().is_some_and(|s| s.dir) {
                continue;
            }
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut h),
                Err(e) => e.kind().hash(&mut h),
            }
        }
        Self {
            roots,
            stamps,
            content: h.finish(),
        }
    }

    /// Every watched path, the files of a watched directory included, with its metadata: one
    /// `stat` each.
    fn stamp_all(roots: &[PathBuf]) -> Vec<(PathBuf, Option<FileStamp>)> {
        let mut stamps = Vec::with_capacity(roots.len());
        for root in roots {
            let stamp = FileStamp::read(root);
            let dir = stamp.as_ref().is_some_and(|s| s.dir);
            stamps.push((root.clone(), stamp));
            if dir {
                let files = registry_files(root).unwrap_or_default();
                stamps.extend(files.into_iter().map(|(p, m)| (p, Some(FileStamp::of(&m)))));
            }
        }
        stamps
    }

    /// The metadata now, when any file's differs from when it was stamped or a directory's
    /// files are not the same ones.
    fn moved(&self) -> Option<Vec<(PathBuf, Option<FileStamp>)>> {
        let now = Self::stamp_all(&self.roots);
        (now != self.stamps).then_some(now)
    }
}

/// Build a snapshot on a blocking thread: a large registry takes long to build. What did not
/// change is kept from `previous`.
async fn build_snapshot(
    generation: u64,
    config: Config,
    registry: RegistryData,
    events: &Arc<DatasetVersions>,
    metrics: &Metrics,
    previous: Option<Arc<Snapshot>>,
) -> Result<Snapshot, ConfigErrors> {
    let (events, metrics) = (events.clone(), metrics.clone());
    blocking(move || {
        Snapshot::rebuild(
            generation,
            config,
            registry,
            events,
            &metrics,
            previous.as_deref(),
        )
    })
    .await
}

fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A live MLflow client and its settings (rebuilt when a reload changes them).
struct Remote {
    settings: MlflowSettings,
    client: Arc<MlflowRegistry>,
    last_success: Option<Instant>,
}

/// What rebuilds read besides config and registry; guarded so rebuilds never race.
#[derive(Default)]
struct State {
    remote: Option<Remote>,
    /// Dataset versions announced by lineage events (OpenLineage, `dataset-changed`).
    events: Arc<DatasetVersions>,
    /// Weights set through the admin API, by route; they outlive reloads until the config file
    /// changes that route's weights.
    overrides: BTreeMap<String, Vec<u32>>,
    /// Weights as the config file last had them, by route.
    file_weights: BTreeMap<String, Vec<u32>>,
    /// The file registry, kept across reloads: a reload parses only the files that changed.
    file: Option<FileRegistry>,
}

impl State {
    /// The file registry for `path`, the one of the last reload while path and bound are the
    /// same.
    fn file_registry(&mut self, path: &Path, max_bytes: u64) -> FileRegistry {
        match &self.file {
            Some(f) if f.reads(path, max_bytes) => f.clone(),
            _ => {
                let f = FileRegistry::new(path.to_path_buf(), max_bytes);
                self.file = Some(f.clone());
                f
            }
        }
    }
}

/// The configured weights of every split route.
fn weights_of(config: &Config) -> BTreeMap<String, Vec<u32>> {
    config
        .routes
        .iter()
        .filter(|r| !r.backends.is_empty())
        .map(|r| {
            (
                r.name.clone(),
                r.backends.iter().map(|b| b.weight).collect(),
            )
        })
        .collect()
}

/// Put admin-set weights into a config.
fn apply_overrides(config: &mut Config, overrides: &BTreeMap<String, Vec<u32>>) {
    for r in &mut config.routes {
        if let Some(w) = overrides
            .get(&r.name)
            .filter(|w| w.len() == r.backends.len())
        {
            for (b, w) in r.backends.iter_mut().zip(w) {
                b.weight = *w;
            }
        }
    }
}

/// Weights by version label of a route in a snapshot.
pub fn route_weights(snap: &Snapshot, route: usize) -> BTreeMap<String, u32> {
    let Some(r) = snap.routes.get(route) else {
        return BTreeMap::new();
    };
    r.backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                backend_label(r, i, b),
                r.weights.get(i).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// A backend's name in weights maps: its version, else the configured version or alias.
fn backend_label(r: &super::RouteState, i: usize, b: &super::BackendState) -> String {
    b.version
        .clone()
        .unwrap_or_else(|| match &r.route.backends[i].version {
            config::Serves::Version(v) => v.clone(),
            config::Serves::Alias(a) => format!("@{a}"),
        })
}

/// A manual weight change that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// No split route by that name or model.
    #[error("no route named or serving \"{0}\" splits traffic between versions")]
    NoSplit(String),
    /// A version the route does not have.
    #[error("\"{version}\" is not a backend of route {route} (it has {have})")]
    UnknownVersion {
        /// The version asked for.
        version: String,
        /// The route.
        route: String,
        /// What it has.
        have: String,
    },
    /// Weights out of range.
    #[error("weights must be 0..=10000 and not all 0")]
    Invalid,
    /// The new snapshot could not be built.
    #[error(transparent)]
    Build(#[from] ConfigErrors),
}

/// A weight change that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightChange {
    /// Route.
    pub route: String,
    /// Model.
    pub model: String,
    /// Weights by version before.
    pub before: BTreeMap<String, u32>,
    /// Weights by version after.
    pub after: BTreeMap<String, u32>,
}

/// Owns the current snapshot and replaces it.
pub struct Reloader {
    source: Source,
    current: Arc<ArcSwap<Snapshot>>,
    metrics: Metrics,
    generation: AtomicU64,
    watched: std::sync::Mutex<Watched>,
    /// Replaced snapshots that requests may still hold (see `retire`).
    retired: std::sync::Mutex<Vec<Arc<Snapshot>>>,
    /// Wakes the watch loop to look at a newly retired snapshot.
    retired_now: Notify,
    state: Mutex<State>,
    refresh_now: Notify,
    registry_down: std::sync::atomic::AtomicBool,
    /// Why no lineage record has been read yet: MLflow has not answered since the start.
    never_read: std::sync::Mutex<Option<String>>,
    /// Whether the watch loop runs (and reaps retired snapshots).
    watching: std::sync::atomic::AtomicBool,
    /// Who follows what the reloader does (the journal, the audit log, the inspector).
    subscribers: std::sync::RwLock<Vec<Arc<dyn Subscriber>>>,
}

/// What the reloader tells its subscribers, in the order it happens.
#[derive(Debug)]
pub enum ReloadEvent<'a> {
    /// `new` is about to serve, replacing `old`. A new subscriber gets this once at once, with
    /// `old: None` and the snapshot serving then.
    Swapped {
        /// What served until now.
        old: Option<&'a Snapshot>,
        /// What serves from now on.
        new: &'a Snapshot,
    },
    /// A reload of the config (and a file registry) was applied.
    Reloaded {
        /// The generation now serving.
        generation: u64,
        /// Routes whose weights the reload changed.
        weights: &'a [WeightChange],
    },
    /// A reload was refused; the previous snapshot keeps serving.
    Rejected {
        /// Why.
        errors: &'a ConfigErrors,
    },
    /// The remote registry stopped answering.
    RegistryDown {
        /// The last error.
        error: &'a str,
    },
    /// The remote registry answers again.
    RegistryUp,
    /// A dataset the registry's records read got a new version upstream.
    DatasetWritten {
        /// The dataset as the records name it.
        dataset: &'a DatasetKey,
        /// The version written.
        version: &'a DatasetVersion,
        /// The models whose records read it.
        models: &'a [String],
    },
}

/// A dataset version written upstream, with every name the writer gave it (an OpenLineage
/// `namespace/name`, its plain name, its symlinks).
#[derive(Debug, Clone)]
pub struct Written {
    /// The names to match against the registry's datasets.
    pub names: std::collections::BTreeSet<String>,
    /// The version.
    pub version: DatasetVersion,
}

/// What [`Reloader::datasets_written`] did.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Per write, in order: the registry's datasets it matched (empty: nothing reads it).
    pub matched: Vec<Vec<DatasetKey>>,
    /// `(model, version)` of every version now stale because of these writes.
    pub stale: Vec<(String, String)>,
}

/// The models whose records read a dataset (as training data, upstream table or feature source).
fn readers(registry: &RegistryData, key: &DatasetKey) -> Vec<String> {
    let names: std::collections::BTreeSet<String> = [key.source.clone(), Some(key.name.clone())]
        .into_iter()
        .flatten()
        .collect();
    registry
        .models
        .iter()
        .filter(|(_, m)| matching(m.versions.values().map(|v| &*v.record), &names).contains(key))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Something that follows the reloader. Called in order, on the control plane (the first
/// event on the thread that subscribes), while the reloader holds its reload lock and its
/// subscribers' lock: a subscriber must not call back into the reloader (`subscribe`,
/// `reload`, `set_weights` would deadlock). Keep it short: record, not compute.
pub trait Subscriber: Send + Sync {
    /// One event.
    fn on(&self, event: &ReloadEvent<'_>);
}

impl<F: Fn(&ReloadEvent<'_>) + Send + Sync> Subscriber for F {
    fn on(&self, event: &ReloadEvent<'_>) {
        self(event)
    }
}

/// Records in the journal what changes: versions, aliases, weights, stale flags, reloads and
/// registry outages (what `explain` reads).
pub struct JournalFollower(pub Arc<Journal>);

impl Subscriber for JournalFollower {
    fn on(&self, event: &ReloadEvent<'_>) {
        let j = &self.0;
        match event {
            ReloadEvent::Swapped {
                old: Some(old),
                new,
            } => journal_changes(j, old, new),
            ReloadEvent::Swapped { old: None, .. } => {}
            ReloadEvent::Reloaded { generation, .. } => j.record(
                Kind::Reload,
                "",
                None,
                format!("config reloaded (generation {generation})"),
                &[],
            ),
            ReloadEvent::Rejected { errors } => {
                if let Some(first) = errors.0.first() {
                    j.record(
                        Kind::ReloadRejected,
                        "",
                        None,
                        format!("reload rejected: {first}"),
                        &[],
                    );
                }
            }
            ReloadEvent::RegistryDown { error } => j.record(
                Kind::RegistryDown,
                "",
                None,
                format!("the registry is unreachable: {error}"),
                &[],
            ),
            ReloadEvent::RegistryUp => j.record(
                Kind::RegistryUp,
                "",
                None,
                "the registry answers again".into(),
                &[],
            ),
            ReloadEvent::DatasetWritten {
                dataset,
                version,
                models,
            } => {
                let mut fields = vec![
                    ("dataset".to_string(), dataset.name.clone()),
                    ("digest".to_string(), version.digest.clone()),
                    ("seen_in".to_string(), version.seen_in.clone()),
                ];
                let mut by = String::new();
                if let Some(job) = &version.job {
                    by = format!(" by job {}", job.qualified());
                    fields.push(("job".into(), job.qualified()));
                    fields.extend(job.run_id.clone().map(|r| ("run_id".to_string(), r)));
                    fields.extend(job.producer.clone().map(|p| ("producer".to_string(), p)));
                }
                // At the time it was written, not when it was heard of: the timeline orders by it.
                for model in models.iter() {
                    j.push(Event {
                        at_ms: version.written_ms,
                        kind: Kind::DatasetWritten,
                        model: model.clone(),
                        version: None,
                        summary: format!(
                            "{} got version {}{by} ({})",
                            dataset.name, version.digest, version.seen_in
                        ),
                        fields: fields.iter().cloned().collect(),
                    });
                }
            }
        }
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish()
    }
}

impl Reloader {
    /// Load the first snapshot. A file registry must be valid; an unreachable MLflow starts
    /// with lineage `unknown` and keeps retrying, unless `fail_fast` is set.
    pub async fn start(source: Source, metrics: Metrics) -> Result<Arc<Self>, ConfigErrors> {
        let config = source.config().await?;
        let paths = source.watched_paths(&config);
        let watched = blocking(move || Ok(Watched::read(paths))).await?;
        metrics.set_window(config.inspect.window);
        let mut state = State {
            file_weights: weights_of(&config),
            ..State::default()
        };
        let mut never_read = None;
        let registry = match (&config.registry, &source) {
            (RegistrySource::Mlflow(settings), Source::File(_)) => {
                let client = Arc::new(MlflowRegistry::new((**settings).clone())?);
                let mut remote = Remote {
                    settings: (**settings).clone(),
                    client: client.clone(),
                    last_success: None,
                };
                let data = match client.fetch().await {
                    Ok(d) => {
                        remote.last_success = Some(Instant::now());
                        metrics.registry_result(true, Some(0.0));
                        d
                    }
                    Err(e) if settings.fail_fast => return Err(e),
                    Err(e) => {
                        warn!(error = %e, "MLflow is unreachable at start; serving with lineage unknown and retrying.");
                        metrics.registry_result(false, None);
                        never_read = Some(e.to_string());
                        RegistryData::default()
                    }
                };
                state.remote = Some(remote);
                data
            }
            (RegistrySource::File(path), Source::File(_)) => {
                let data = (state.file_registry(path, config.registry_max_bytes))
                    .fetch()
                    .await?;
                metrics.registry_loaded();
                data
            }
            _ => {
                let data = source.load().await?.1;
                // A file (or embedded) registry that loaded is up; it has no remote to lose.
                metrics.registry_loaded();
                data
            }
        };
        let snapshot = build_snapshot(1, config, registry, &state.events, &metrics, None).await?;
        publish(&metrics, &snapshot, None);
        Ok(Arc::new(Self {
            source,
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics,
            generation: AtomicU64::new(1),
            watched: std::sync::Mutex::new(watched),
            retired: std::sync::Mutex::new(Vec::new()),
            retired_now: Notify::new(),
            state: Mutex::new(state),
            refresh_now: Notify::new(),
            // Down is announced by the first failed refresh (the journal then has both ends).
            registry_down: std::sync::atomic::AtomicBool::new(false),
            never_read: std::sync::Mutex::new(never_read),
            watching: std::sync::atomic::AtomicBool::new(false),
            subscribers: std::sync::RwLock::new(Vec::new()),
        }))
    }

    /// Follow the reloader: `subscriber` gets the snapshot serving now (as
    /// [`ReloadEvent::Swapped`] with no `old`), then every event from here on.
    pub fn subscribe(&self, subscriber: Arc<dyn Subscriber>) {
        // Under the write lock a swap (which holds the read lock from its event to the swap
        // itself) cannot fall between what the subscriber is told now and its first event.
        let mut subs = self
            .subscribers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.current.load_full();
        subscriber.on(&ReloadEvent::Swapped {
            old: None,
            new: &now,
        });
        subs.push(subscriber);
    }

    fn emit(&self, event: &ReloadEvent<'_>) {
        let subs = self
            .subscribers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in subs.iter() {
            s.on(event);
        }
    }

    /// The split route called `name`, else the first split route serving model `name`.
    pub fn find_split(snap: &Snapshot, name: &str) -> Option<usize> {
        let split = |r: &&super::RouteState| !r.backends.is_empty();
        snap.routes
            .iter()
            .position(|r| split(&r) && r.route.name == name)
            .or_else(|| {
                snap.routes
                    .iter()
                    .position(|r| split(&r) && r.route.model.as_deref() == Some(name))
            })
    }

    /// Set some of a split route's weights (by version); the rest keep theirs. The change
    /// outlives reloads until the config file changes this route's weights.
    pub async fn set_weights(
        &self,
        name: &str,
        weights: &BTreeMap<String, u32>,
    ) -> Result<WeightChange, WeightsError> {
        let mut state = self.state.lock().await;
        let old = self.current.load_full();
        let index =
            Self::find_split(&old, name).ok_or_else(|| WeightsError::NoSplit(name.to_string()))?;
        let r = &old.routes[index];
        let before = route_weights(&old, index);
        let labels: Vec<String> = r
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| backend_label(r, i, b))
            .collect();
        let mut new = r.weights.clone();
        for (version, w) in weights {
            let i = labels.iter().position(|l| l == version).ok_or_else(|| {
                WeightsError::UnknownVersion {
                    version: version.clone(),
                    route: r.route.name.clone(),
                    have: labels.join(", "),
                }
            })?;
            new[i] = *w;
        }
        if new.iter().any(|w| *w > 10_000) || new.iter().all(|w| *w == 0) {
            return Err(WeightsError::Invalid);
        }
        let route = r.route.name.clone();
        let model = r.route.model.clone().unwrap_or_default();
        let mut config = (*old.config).clone();
        let mut overrides = state.overrides.clone();
        overrides.insert(route.clone(), new);
        apply_overrides(&mut config, &overrides);
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let snapshot = build_snapshot(
            generation,
            config,
            (*old.registry).clone(),
            &state.events,
            &self.metrics,
            Some(old.clone()),
        )
        .await?;
        state.overrides = overrides;
        self.swap(snapshot);
        let after = route_weights(&self.current.load_full(), index);
        info!(route = %route, ?before, ?after, "Weights changed.");
        Ok(WeightChange {
            route,
            model,
            before,
            after,
        })
    }

    /// The shared handle requests load their snapshot from.
    pub fn current(&self) -> Arc<ArcSwap<Snapshot>> {
        self.current.clone()
    }

    fn watched(&self) -> Watched {
        self.watched.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn remember(&self, watched: Watched) {
        if let Ok(mut w) = self.watched.lock() {
            *w = watched;
        }
    }

    /// Whether a watched file's metadata moved since the last reload read it (one `stat` per
    /// file, on a blocking thread).
    async fn files_moved(&self) -> bool {
        let known = self.watched();
        blocking(move || Ok(known.moved().is_some()))
            .await
            .unwrap_or(false)
    }

    /// What the watched files hold now, when it differs from what the last reload read:
    /// metadata on every poll, content only when that moved.
    async fn files_changed(&self) -> Option<Watched> {
        let known = self.watched();
        // A directory of a thousand files is a thousand `stat`s: not on the runtime's thread.
        let (now, known) = blocking(move || {
            Ok(known
                .moved()
                .map(|stamps| (Watched::hashed(known.roots.clone(), stamps), known)))
        })
        .await
        .ok()??;
        if now.content == known.content {
            self.remember(now);
            return None;
        }
        Some(now)
    }

    /// Keep `old` until no request holds it; [`Self::reap`] frees it then, on a blocking
    /// thread: the last request to finish with a large snapshot would otherwise free it
    /// (thousands of allocations) on a proxy thread. The watch loop reaps; once it has
    /// stopped (shutdown, while the admin API still serves), this reaps itself.
    fn retire(&self, old: Arc<Snapshot>) {
        if let Ok(mut retired) = self.retired.lock() {
            retired.push(old);
        }
        if self.watching.load(Ordering::Relaxed) {
            self.retired_now.notify_one();
        } else {
            self.reap();
        }
    }

    /// Free retired snapshots no request holds any more, on a blocking thread of the control
    /// plane; whether some are still held.
    fn reap(&self) -> bool {
        let Ok(mut retired) = self.retired.lock() else {
            return false;
        };
        let (unused, held): (Vec<_>, Vec<_>) = std::mem::take(&mut *retired)
            .into_iter()
            .partition(|s| Arc::strong_count(s) == 1);
        *retired = held;
        if !unused.is_empty() {
            tokio::task::spawn_blocking(move || drop(unused));
        }
        !retired.is_empty()
    }

    fn swap(&self, snapshot: Snapshot) -> u64 {
        let generation = snapshot.generation;
        self.generation.store(generation, Ordering::Relaxed);
        let old = self.current.load_full();
        publish(&self.metrics, &snapshot, Some(&old));
        let subs = self
            .subscribers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in subs.iter() {
            s.on(&ReloadEvent::Swapped {
                old: Some(&old),
                new: &snapshot,
            });
        }
        let replaced = self.current.swap(Arc::new(snapshot));
        drop((subs, old));
        self.retire(replaced);
        generation
    }

    /// Re-read config (and a file registry), build a snapshot and swap it in; on any error the
    /// old one keeps serving.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let mut state = self.state.lock().await;
        self.reload_locked(&mut state, None).await
    }

    /// Reload only if a watched file still differs from what the last reload read, checked
    /// under the reload lock: a poll that saw a write which an explicit reload (SIGHUP, the
    /// admin API) is already applying must not apply it a second time.
    async fn reload_if_changed(&self) -> Option<Result<u64, ConfigErrors>> {
        let mut state = self.state.lock().await;
        let now = self.files_changed().await?;
        info!("Config or registry file changed.");
        Some(self.reload_locked(&mut state, Some(now)).await)
    }

    /// Reload; `seen` is what a poll just stamped and hashed, or `None` to stamp now.
    async fn reload_locked(
        &self,
        state: &mut State,
        seen: Option<Watched>,
    ) -> Result<u64, ConfigErrors> {
        // Stamped before reading, so a write during the read is seen by the next poll.
        let seen = match seen {
            Some(seen) => seen,
            None => {
                let paths = self.source.watched_paths(&self.current.load().config);
                blocking(move || Ok(Watched::read(paths)))
                    .await
                    .unwrap_or_default()
            }
        };
        self.remember(seen);
        let result = self.prepare(state).await;
        self.metrics.reload(result.is_ok());
        match result {
            Ok((snapshot, file_weights)) => {
                let paths = self.source.watched_paths(&snapshot.config);
                if paths != self.watched().roots {
                    self.remember(
                        blocking(move || Ok(Watched::read(paths)))
                            .await
                            .unwrap_or_default(),
                    );
                }
                let old = self.current.load_full();
                state.file_weights = file_weights;
                state.overrides = std::mem::take(&mut state.overrides)
                    .into_iter()
                    .filter(|(route, _)| {
                        snapshot
                            .config
                            .routes
                            .iter()
                            .any(|r| &r.name == route && !r.backends.is_empty())
                    })
                    .collect();
                let changes = weight_changes(&old, &snapshot);
                let generation = self.swap(snapshot);
                info!(generation, "Config reloaded.");
                self.emit(&ReloadEvent::Reloaded {
                    generation,
                    weights: &changes,
                });
                Ok(generation)
            }
            Err(errors) => {
                for e in &errors.0 {
                    warn!(path = %e.path, error = %e.message, "Reload rejected; previous config keeps serving.");
                }
                self.emit(&ReloadEvent::Rejected { errors: &errors });
                Err(errors)
            }
        }
    }

    async fn prepare(
        &self,
        state: &mut State,
    ) -> Result<(Snapshot, BTreeMap<String, Vec<u32>>), ConfigErrors> {
        let mut config = self.source.config().await?;
        // An edit of a route's weights in the file wins over weights set through the API.
        let file_weights = weights_of(&config);
        let overrides: BTreeMap<String, Vec<u32>> = state
            .overrides
            .iter()
            .filter(|(route, _)| state.file_weights.get(*route) == file_weights.get(*route))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        state.overrides = overrides;
        apply_overrides(&mut config, &state.overrides);
        let old = self.current.load_full();
        let errs = restart_required(&old.config, &config);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        let registry = match &config.registry {
            RegistrySource::Mlflow(settings)
                if state
                    .remote
                    .as_ref()
                    .is_some_and(|r| r.settings == **settings) =>
            {
                // Records come from the refresher; a config reload never waits on MLflow.
                (*old.registry).clone()
            }
            RegistrySource::Mlflow(settings) => {
                let client = Arc::new(MlflowRegistry::new((**settings).clone())?);
                let (data, last_success) = match (client.fetch().await, &state.remote) {
                    (Ok(data), _) => {
                        self.set_never_read(None);
                        (data, Some(Instant::now()))
                    }
                    // New settings for an MLflow already read (a rotated password or
                    // certificate, which MLflow may not accept yet): they are kept, with the
                    // records read so far, and the refresher tries them again on its interval.
                    // Refusing them would keep the old client for good: the files that
                    // changed were stamped already.
                    (Err(e), Some(previous)) => {
                        warn!(error = %e, "MLflow cannot be read with the new registry settings yet; the last records keep serving and the refresher retries.");
                        ((*old.registry).clone(), previous.last_success)
                    }
                    (Err(e), None) => return Err(e),
                };
                state.remote = Some(Remote {
                    settings: (**settings).clone(),
                    client,
                    last_success,
                });
                data
            }
            RegistrySource::File(path) => {
                state.remote = None;
                let data = match &self.source {
                    Source::File(_) => {
                        (state.file_registry(path, config.registry_max_bytes))
                            .fetch()
                            .await?
                    }
                    Source::Embedded { .. } => self.source.load().await?.1,
                };
                self.set_never_read(None);
                data
            }
        };
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let snapshot = build_snapshot(
            generation,
            config,
            registry,
            &state.events,
            &self.metrics,
            Some(old),
        )
        .await?;
        Ok((snapshot, file_weights))
    }

    /// Fetch MLflow now; swap a new snapshot in if anything changed. Failures keep the last
    /// known good records and flip `modelstamp_registry_up` to 0.
    pub async fn refresh(&self) {
        let mut state = self.state.lock().await;
        let Some(remote) = state.remote.as_mut() else {
            return;
        };
        let result = remote.client.fetch().await;
        let age = |r: &Remote| r.last_success.map(|t| t.elapsed().as_secs_f64());
        match result {
            Ok(data) => {
                remote.last_success = Some(Instant::now());
                self.metrics.registry_result(true, Some(0.0));
                self.set_never_read(None);
                if self.registry_down.swap(false, Ordering::Relaxed) {
                    self.emit(&ReloadEvent::RegistryUp);
                }
                let old = self.current.load_full();
                if same_records(&old.registry, &data) {
                    return;
                }
                let generation = self.generation.load(Ordering::Relaxed) + 1;
                match build_snapshot(
                    generation,
                    (*old.config).clone(),
                    data,
                    &state.events,
                    &self.metrics,
                    Some(old.clone()),
                )
                .await
                {
                    Ok(s) => {
                        let g = self.swap(s);
                        info!(
                            generation = g,
                            "Registry records changed; new snapshot serving."
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "Registry records rejected; previous records keep serving.")
                    }
                }
            }
            Err(e) => {
                self.metrics.registry_result(false, age(remote));
                if remote.last_success.is_none() {
                    self.set_never_read(Some(e.to_string()));
                }
                if !self.registry_down.swap(true, Ordering::Relaxed) {
                    self.emit(&ReloadEvent::RegistryDown {
                        error: &e.to_string(),
                    });
                }
                warn!(error = %e, "MLflow refresh failed; serving the last known good records.");
            }
        }
    }

    /// Why requests are stamped without lineage, while no registry record has ever been read
    /// (MLflow unreachable or refusing since the start); `None` once records were read.
    pub fn lineage_unavailable(&self) -> Option<String> {
        self.never_read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_never_read(&self, why: Option<String>) {
        *self
            .never_read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// The metrics the reloader publishes to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Ask the refresher to fetch now (an MLflow webhook).
    pub fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Dataset versions written upstream (an OpenLineage event, a dataset-changed call). Each is
    /// matched by its names (and the configured `openlineage.aliases` of them) to the datasets the
    /// registry's records read; a version nothing reads is not kept. Returns, per write, the
    /// datasets it matched, and `(model, version)` of every version those writes made stale.
    pub async fn datasets_written(&self, writes: Vec<Written>) -> WriteOutcome {
        let mut state = self.state.lock().await;
        let old = self.current.load_full();
        let aliases = &old.config.openlineage_aliases;
        let mut outcome = WriteOutcome::default();
        let mut learnt = Vec::new();
        // A producer's clock ahead of ours would make its version the newest for good.
        let now = crate::journal::now_ms();
        for mut w in writes {
            w.version.written_ms = w.version.written_ms.min(now);
            let mut names = w.names;
            names.extend(
                names
                    .iter()
                    .filter_map(|n| aliases.get(n))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            let keys: Vec<DatasetKey> = matching(old.registry.records(), &names)
                .into_iter()
                .collect();
            for key in &keys {
                if Arc::make_mut(&mut state.events).record(key.clone(), w.version.clone()) {
                    learnt.push((key.clone(), w.version.clone()));
                }
            }
            outcome.matched.push(keys);
        }
        if learnt.is_empty() {
            return outcome;
        }
        for (key, version) in &learnt {
            let models = readers(&old.registry, key);
            self.emit(&ReloadEvent::DatasetWritten {
                dataset: key,
                version,
                models: &models,
            });
        }
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        match build_snapshot(
            generation,
            (*old.config).clone(),
            (*old.registry).clone(),
            &state.events,
            &self.metrics,
            Some(old.clone()),
        )
        .await
        {
            Ok(s) => {
                outcome.stale = s
                    .stale_versions()
                    .filter(|(_, st)| learnt.iter().any(|(k, _)| *k == st.dataset))
                    .map(|(served, _)| (served.model.to_string(), served.version.to_string()))
                    .collect();
                self.swap(s);
            }
            Err(e) => warn!(error = %e, "Dataset event could not be applied."),
        }
        outcome
    }

    /// Reload when a watched file changes or on SIGHUP, and refresh MLflow on its interval or
    /// on a webhook, until `shutdown` fires.
    pub async fn watch(
        self: Arc<Self>,
        hup: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.watching.store(true, Ordering::Relaxed);
        self.watch_until(hup, &mut shutdown).await;
        self.watching.store(false, Ordering::Relaxed);
        self.reap();
    }

    async fn watch_until(
        self: &Arc<Self>,
        mut hup: watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut next_refresh = Instant::now();
        // Only a file source is polled (an embedded one never changes). The files were read at
        // start: the first look is one interval later.
        let mut next_poll = matches!(self.source, Source::File(_))
            .then(|| Instant::now() + self.current.load().config.reload_poll_interval);
        loop {
            let snap = self.current.load_full();
            let mlflow = match &snap.config.registry {
                RegistrySource::Mlflow(m) => Some(m.poll_interval),
                RegistrySource::File(_) => None,
            };
            let until_refresh = mlflow.map_or(Duration::from_secs(3600), |_| {
                next_refresh.saturating_duration_since(Instant::now())
            });
            // Snapshots still held by requests are looked at again within a second.
            let until_reap = if self.reap() {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(3600)
            };
            let until_poll = next_poll.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = tokio::time::sleep(until_poll.min(until_refresh).min(until_reap)) => {}
                changed = hup.changed() => {
                    if changed.is_err() { return; }
                    info!("SIGHUP received.");
                    let _ = self.reload().await;
                    continue;
                }
                _ = self.refresh_now.notified() => next_refresh = Instant::now(),
                _ = self.retired_now.notified() => continue,
                _ = crate::proxy::server::stopped(shutdown) => return,
            }
            if let Some(interval) = mlflow
                && Instant::now() >= next_refresh
            {
                self.refresh().await;
                next_refresh = Instant::now() + interval;
            }
            // Files are looked at on their own interval, not on every wake-up (reaping wakes
            // the loop each second while an old snapshot is held).
            if let Some(at) = next_poll.as_mut()
                && Instant::now() >= *at
            {
                *at = Instant::now() + snap.config.reload_poll_interval;
                // Metadata first, without the reload lock (a rebuild may hold it); content
                // under it.
                if self.files_moved().await {
                    let _ = self.reload_if_changed().await;
                }
            }
        }
    }
}

/// After a swap: info series, generation, stale gauges, and one warning per newly stale version.
fn publish(metrics: &Metrics, new: &Snapshot, old: Option<&Snapshot>) {
    metrics.set_version_info(&new.info_labels());
    metrics.set_generation(new.generation);
    for (i, r) in new.routes.iter().enumerate() {
        for (version, w) in route_weights(new, i) {
            metrics.set_weight(&r.route.name, &version, w);
        }
    }
    let versions: Vec<(VersionLabels, bool)> = new
        .models
        .values()
        .flat_map(|m| m.versions.values())
        .map(|s| {
            (
                VersionLabels {
                    model: s.model.to_string(),
                    version: s.version.to_string(),
                },
                s.stale.is_some(),
            )
        })
        .collect();
    metrics.set_stale(&versions);
    // Series follow the registry: those of versions (and models) that left it are removed.
    let current: std::collections::HashSet<(String, String)> = (new.models.values())
        .flat_map(|m| {
            m.versions
                .values()
                .chain(std::iter::once(&m.unknown_version))
        })
        .chain(std::iter::once(&new.unknown_model))
        .map(|s| (s.model.to_string(), s.version.to_string()))
        .collect();
    metrics.retire_versions(&current);
    for (served, st) in new.stale_versions() {
        let before = old
            .and_then(|o| o.models.get(&*served.model))
            .and_then(|m| m.versions.get(&*served.version))
            .and_then(|s| s.stale.as_ref());
        if before != Some(st) {
            warn!(
                model = %served.model,
                version = %served.version,
                lineage_id = %served.lineage_id,
                dataset = %st.dataset.name,
                source = st.dataset.source.as_deref().unwrap_or("-"),
                trained_on = %st.trained_on,
                latest = %st.latest.digest,
                seen_in = %st.latest.seen_in,
                job = st.latest.job.as_ref().map_or("-".to_string(), |j| j.qualified()),
                why = %st.describe(),
                "Lineage is stale: its training data has a newer version."
            );
        }
    }
}

/// Whether two fetches describe the same records, aliases and dataset digests.
fn same_records(a: &RegistryData, b: &RegistryData) -> bool {
    let digest = |d: &RegistryData| {
        d.models
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    m.aliases.clone(),
                    m.versions
                        .iter()
                        .map(|(v, r)| (v.clone(), r.lineage_id.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    digest(a) == digest(b) && a.datasets == b.datasets
}

/// Record what differs between two snapshots: versions, aliases, stale flags, weights.
fn journal_changes(j: &Journal, old: &Snapshot, new: &Snapshot) {
    for (model, m) in &new.registry.models {
        let before = old.registry.models.get(model);
        for v in m.versions.keys() {
            if before.is_none_or(|b| !b.versions.contains_key(v)) && old.generation > 0 {
                j.record(
                    Kind::VersionAdded,
                    model,
                    Some(v),
                    format!("version {v} appeared in the registry"),
                    &[],
                );
            }
        }
        for (alias, to) in &m.aliases {
            let was = before.and_then(|b| b.aliases.get(alias));
            if was != Some(to) {
                let from = was.map_or("(none)", String::as_str);
                j.record(
                    Kind::AliasMoved,
                    model,
                    Some(to),
                    format!("alias {alias} moved {from} -> {to}"),
                    &[
                        ("alias", alias.clone()),
                        ("from", from.to_string()),
                        ("to", to.clone()),
                    ],
                );
            }
        }
        if let Some(b) = before {
            for v in b.versions.keys().filter(|v| !m.versions.contains_key(*v)) {
                j.record(
                    Kind::VersionRemoved,
                    model,
                    Some(v),
                    format!("version {v} left the registry"),
                    &[],
                );
            }
        }
    }
    for (served, st) in new.stale_versions() {
        let was = old
            .models
            .get(&*served.model)
            .and_then(|m| m.versions.get(&*served.version))
            .and_then(|s| s.stale.as_ref());
        if was != Some(st) {
            j.record(
                Kind::Stale,
                &served.model,
                Some(&served.version),
                format!("stale lineage: {}", st.describe()),
                &[
                    ("dataset", st.dataset.name.clone()),
                    ("latest", st.latest.digest.clone()),
                    (
                        "job",
                        st.latest
                            .job
                            .as_ref()
                            .map_or(String::new(), |j| j.qualified()),
                    ),
                ],
            );
        }
    }
    for c in weight_changes(old, new) {
        for (v, after) in &c.after {
            let before = c.before.get(v).copied().unwrap_or(0);
            if before != *after {
                j.record(
                    Kind::WeightsChanged,
                    &c.model,
                    Some(v),
                    format!("route {} version {v} weight {before} -> {after}", c.route),
                    &[
                        ("route", c.route.clone()),
                        ("before", before.to_string()),
                        ("after", after.to_string()),
                    ],
                );
            }
        }
    }
}

/// Routes whose effective weights differ between two snapshots.
fn weight_changes(old: &Snapshot, new: &Snapshot) -> Vec<WeightChange> {
    new.routes
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.backends.is_empty())
        .filter_map(|(i, r)| {
            let after = route_weights(new, i);
            let j = old.routes.iter().position(|o| o.route.name == r.route.name);
            let before = j.map(|j| route_weights(old, j)).unwrap_or_default();
            (before != after).then(|| WeightChange {
                route: r.route.name.clone(),
                model: r.route.model.clone().unwrap_or_default(),
                before,
                after,
            })
        })
        .collect()
}

/// Settings a running process cannot change: a reload that changes them is refused.
fn restart_required(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let mut check = |changed: bool, path: &str| {
        if changed {
            errs.push(ConfigError::new(
                path,
                "cannot change on reload; restart modelstamp",
            ));
        }
    };
    check(old.listen != new.listen, "server.listen");
    check(old.admin_listen != new.admin_listen, "admin.listen");
    // The certificate files themselves are watched and swapped in place (docs/deployment.md).
    check(old.server_tls != new.server_tls, "server.tls");
    check(old.admin_tls != new.admin_tls, "admin.tls");
    check(
        old.upstream.connect_timeout != new.upstream.connect_timeout,
        "upstream.connect_timeout",
    );
    check(
        old.upstream.pool_idle_timeout != new.upstream.pool_idle_timeout,
        "upstream.pool_idle_timeout",
    );
    check(old.access_log != new.access_log, "access_log.target");
    check(
        old.access_log_queue != new.access_log_queue,
        "access_log.queue",
    );
    check(old.traces != new.traces, "traces");
    // The inspection worker's queue, budget and window slices are sized at start.
    check(old.inspect.queue != new.inspect.queue, "inspect.queue");
    check(
        old.inspect.memory_budget_bytes != new.inspect.memory_budget_bytes,
        "inspect.memory_budget_bytes",
    );
    check(old.inspect.window != new.inspect.window, "inspect.window");
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_reads_metadata_and_hashes_content_only_when_it_moved() {
        let dir = std::env::temp_dir().join(format!("modelstamp-watch-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("registry.yaml");
        let _ = std::fs::write(&file, "models: {}\n");
        let known = Watched::read(vec![file.clone(), dir.join("missing.yaml")]);
        assert!(known.moved().is_none(), "nothing changed");

        // The same bytes written again: the metadata moves, the content does not.
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::write(&file, "models: {}\n");
        assert!(known.moved().is_some());
        let again = Watched::read(known.roots.clone());
        assert_eq!(again.content, known.content);

        // New bytes: both move.
        let _ = std::fs::write(&file, "models: {a: {}}\n");
        assert!(again.moved().is_some());
        assert_ne!(Watched::read(known.roots.clone()).content, known.content);

        // A file that appears where none was.
        let _ = std::fs::write(dir.join("missing.yaml"), "x");
        assert!(again.moved().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A config (manual reloads only) whose one route serves `serves` of model `churn`.
    fn serving(serves: &str) -> String {
        format!(
            "[reload]\npoll_interval = \"1h\"\n[[routes]]\nname = \"churn\"\nmodel = \"churn\"\n\
             upstream = \"127.0.0.1:9\"\nserves = \"{serves}\"\n"
        )
    }

    /// A reloader of a config file serving version 1 of a two-version file registry, in a
    /// directory of its own (`tag` names it): the directory, the config file, the reloader.
    async fn file_reloader(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Arc<Reloader>) {
        let dir = std::env::temp_dir().join(format!("modelstamp-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let registry = "models:\n  churn:\n    versions:\n      \"1\": {}\n      \"2\": {}\n";
        std::fs::write(dir.join("registry.yaml"), registry).unwrap();
        let config = dir.join("modelstamp.toml");
        std::fs::write(&config, serving("1")).unwrap();
        let (metrics, _) = Metrics::new();
        let reloader = Reloader::start(Source::File(config.clone()), metrics)
            .await
            .unwrap();
        (dir, config, reloader)
    }

    /// Subscribers hear, in order: the snapshot serving when they subscribe, then each swap
    /// with its predecessor, each applied reload, and each refused one.
    #[tokio::test]
    async fn subscribers_hear_every_swap_reload_and_refusal_in_order() {
        let (dir, config, reloader) = file_reloader("subs").await;
        let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = heard.clone();
        reloader.subscribe(Arc::new(move |e: &ReloadEvent<'_>| {
            let line = match e {
                ReloadEvent::Swapped { old, new } => format!(
                    "swapped {:?} -> {}",
                    old.map(|o| o.generation),
                    new.generation
                ),
                ReloadEvent::Reloaded { generation, .. } => format!("reloaded {generation}"),
                ReloadEvent::Rejected { errors } => format!("rejected {}", errors.0.len()),
                ReloadEvent::RegistryDown { .. } => "down".into(),
                ReloadEvent::RegistryUp => "up".into(),
                ReloadEvent::DatasetWritten { .. } => "dataset".into(),
            };
            log.lock().unwrap().push(line);
        }));
        std::fs::write(&config, serving("2")).unwrap();
        reloader.reload().await.unwrap();
        std::fs::write(&config, serving("9")).unwrap();
        assert!(reloader.reload().await.is_err());
        std::fs::write(&config, serving("1")).unwrap();
        reloader.reload().await.unwrap();
        assert_eq!(
            *heard.lock().unwrap(),
            [
                "swapped None -> 1",
                "swapped Some(1) -> 2",
                "reloaded 2",
                "rejected 1",
                "swapped Some(2) -> 3",
                "reloaded 3"
            ]
        );
        // No watch loop runs here (as after shutdown): each retirement frees the replaced
        // snapshots nothing holds any more, so they do not pile up.
        assert!(reloader.retired.lock().unwrap().len() <= 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The interleaving that counted one write twice: the poll sees the write, an explicit
    /// reload (SIGHUP, admin) applies it, then the poll reloads again. The poll re-checks under
    /// the reload lock, so the write is applied once.
    #[tokio::test]
    async fn a_poll_does_not_apply_again_what_an_explicit_reload_applied() {
        let (dir, config, reloader) = file_reloader("twice").await;
        let before = reloader.current().load().generation;

        std::fs::write(&config, serving("2")).unwrap();
        let mut state = reloader.state.lock().await;
        assert!(
            reloader.files_changed().await.is_some(),
            "the poll sees the write"
        );
        let poll = tokio::spawn({
            let reloader = reloader.clone();
            async move { reloader.reload_if_changed().await.is_some() }
        });
        reloader.reload_locked(&mut state, None).await.unwrap();
        drop(state);
        assert!(!poll.await.unwrap(), "the poll reloaded what was applied");
        assert_eq!(reloader.current().load().generation, before + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Write one generation of a ConfigMap-style registry directory, as the kubelet does: the
    /// files in a hidden directory of their own, then `..data` swapped to point at it, and the
    /// visible names links through `..data`.
    fn configmap_generation(dir: &Path, generation: &str, files: &[(&str, &str)]) {
        let data = dir.join(generation);
        std::fs::create_dir_all(&data).unwrap();
        for (name, text) in files {
            std::fs::write(data.join(name), text).unwrap();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        let next = dir.join("..data_tmp");
        std::os::unix::fs::symlink(generation, &next).unwrap();
        std::fs::rename(&next, dir.join("..data")).unwrap();
    }

    #[tokio::test]
    async fn a_registry_directory_swapped_as_a_configmap_reloads_once_per_change() {
        let dir = std::env::temp_dir().join(format!("modelstamp-cm-{}", std::process::id()));
        let registry = dir.join("registry");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&registry).unwrap();
        let versions = [
            (
                "churn-1.yaml",
                "models: { churn: { versions: { 1: {} } } }\n",
            ),
            (
                "churn-2.yaml",
                "models: { churn: { versions: { 2: {} } } }\n",
            ),
        ];
        let aliases =
            |to: &str| format!("models: {{ churn: {{ aliases: {{ champion: \"{to}\" }} }} }}\n");
        let champion_1 = aliases("1");
        configmap_generation(
            &registry,
            "..gen1",
            &[versions[0], versions[1], ("aliases.yaml", &champion_1)],
        );
        let config = dir.join("modelstamp.toml");
        std::fs::write(
            &config,
            serving("@champion") + "[registry]\npath = \"registry\"\n",
        )
        .unwrap();
        let (metrics, _) = Metrics::new();
        let reloader = Reloader::start(Source::File(config), metrics)
            .await
            .unwrap();
        let champion = |r: &Reloader| {
            let snap = r.current().load_full();
            snap.registry
                .resolve("churn", "champion", true)
                .map(str::to_string)
        };
        assert_eq!(champion(&reloader).as_deref(), Some("1"));
        assert!(
            reloader.reload_if_changed().await.is_none(),
            "nothing changed"
        );

        let serves_3 = |r: &Reloader| {
            r.current()
                .load()
                .registry
                .resolve("churn", "3", false)
                .is_some()
        };
        let record_1 = |r: &Reloader| {
            r.current().load().registry.models["churn"].versions["1"]
                .record
                .clone()
        };
        let parsed = record_1(&reloader);

        // The alias moves in a new generation: one reload, which parses only that file.
        let champion_2 = aliases("2");
        configmap_generation(
            &registry,
            "..gen2",
            &[versions[0], versions[1], ("aliases.yaml", &champion_2)],
        );
        assert!(matches!(reloader.reload_if_changed().await, Some(Ok(_))));
        assert_eq!(champion(&reloader).as_deref(), Some("2"));
        assert!(
            Arc::ptr_eq(&parsed, &record_1(&reloader)),
            "an unchanged file was parsed again"
        );

        // The same bytes in a newer generation: every file's metadata moved, nothing reloads.
        configmap_generation(
            &registry,
            "..gen3",
            &[versions[0], versions[1], ("aliases.yaml", &champion_2)],
        );
        assert!(reloader.reload_if_changed().await.is_none());

        // A key added to the ConfigMap: its version is served.
        let three = (
            "churn-3.yaml",
            "models: { churn: { versions: { 3: {} } } }\n",
        );
        configmap_generation(
            &registry,
            "..gen4",
            &[
                versions[0],
                versions[1],
                three,
                ("aliases.yaml", &champion_2),
            ],
        );
        assert!(matches!(reloader.reload_if_changed().await, Some(Ok(_))));
        assert!(serves_3(&reloader), "version 3 is served");

        // A broken generation is refused; the last good one keeps serving.
        let broken = (
            "churn-3.yaml",
            "models: { churn: { versions: { 3: [ } } }\n",
        );
        configmap_generation(
            &registry,
            "..gen5",
            &[
                versions[0],
                versions[1],
                broken,
                ("aliases.yaml", &champion_2),
            ],
        );
        assert!(matches!(reloader.reload_if_changed().await, Some(Err(_))));
        assert_eq!(champion(&reloader).as_deref(), Some("2"));
        assert!(serves_3(&reloader), "version 3 is served");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
