//! Loading and hot reload: read → validate → build a snapshot (fallible, off the hot path) →
//! swap it in with arc-swap (infallible). An invalid file logs its errors and changes nothing.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use super::snapshot::Snapshot;
use crate::config::{self, Config, ConfigError, ConfigErrors, RegistrySource, raw::RawConfig};
use crate::observe::metrics::Metrics;
use crate::registry::{FileRegistry, Registry, RegistryData, parse_registry};

/// Where config and registry come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A config file on disk (and the registry file it names); watched for changes.
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
    /// Read and validate config and registry.
    pub async fn load(&self) -> Result<(Config, RegistryData), ConfigErrors> {
        match self {
            Source::File(path) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors(vec![ConfigError::new(&origin, format!("cannot read: {e}"))])
                })?;
                let mut raw = config::parse(&text, &origin)?;
                raw.traces.apply_env(|k| std::env::var(k).ok());
                let config = config::validate(&raw, base_dir(path))?;
                let registry = match &config.registry {
                    RegistrySource::File(p) => FileRegistry::new(p.clone()).fetch().await?,
                };
                Ok((config, registry))
            }
            Source::Embedded {
                config,
                registry_yaml,
            } => {
                let config = config::validate(config, Path::new("."))?;
                let registry = parse_registry(registry_yaml, "embedded registry")?;
                Ok((config, registry))
            }
        }
    }

    /// A hash of everything the source reads, to notice changes cheaply.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        if let Source::File(path) = self {
            hash_file(&mut h, path);
            // The registry path is in the config; re-read it only if the config parses.
            let registry = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| config::parse(&t, "").ok())
                .and_then(|raw| config::validate(&raw, base_dir(path)).ok())
                .map(|c| c.registry);
            if let Some(RegistrySource::File(p)) = registry {
                hash_file(&mut h, &p);
            }
        }
        h.finish()
    }
}

fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn hash_file(h: &mut DefaultHasher, path: &Path) {
    match std::fs::read(path) {
        Ok(bytes) => bytes.hash(h),
        Err(e) => e.kind().hash(h),
    }
}

/// Owns the current snapshot and replaces it.
#[derive(Debug)]
pub struct Reloader {
    source: Source,
    current: Arc<ArcSwap<Snapshot>>,
    metrics: Metrics,
    generation: AtomicU64,
    fingerprint: AtomicU64,
    /// Serialises reloads so two triggers never race to swap.
    lock: Mutex<()>,
}

impl Reloader {
    /// Load the first snapshot; errors here stop start-up.
    pub async fn start(source: Source, metrics: Metrics) -> Result<Arc<Self>, ConfigErrors> {
        let fingerprint = source.fingerprint();
        let (config, registry) = source.load().await?;
        let snapshot = Snapshot::build(1, config, registry, &metrics)?;
        metrics.set_version_info(&snapshot.info_labels());
        metrics.set_generation(1);
        Ok(Arc::new(Self {
            source,
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics,
            generation: AtomicU64::new(1),
            fingerprint: AtomicU64::new(fingerprint),
            lock: Mutex::new(()),
        }))
    }

    /// The shared handle requests load their snapshot from.
    pub fn current(&self) -> Arc<ArcSwap<Snapshot>> {
        self.current.clone()
    }

    /// Prepare a new snapshot and swap it in; on any error the old one keeps serving.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let _guard = self.lock.lock().await;
        self.fingerprint
            .store(self.source.fingerprint(), Ordering::Relaxed);
        let result = self.prepare().await;
        self.metrics.reload(result.is_ok());
        match result {
            Ok(snapshot) => {
                let generation = snapshot.generation;
                self.generation.store(generation, Ordering::Relaxed);
                self.metrics.set_version_info(&snapshot.info_labels());
                self.current.store(Arc::new(snapshot));
                self.metrics.set_generation(generation);
                info!(generation, "Config reloaded.");
                Ok(generation)
            }
            Err(errors) => {
                for e in &errors.0 {
                    warn!(path = %e.path, error = %e.message, "Reload rejected; previous config keeps serving.");
                }
                Err(errors)
            }
        }
    }

    async fn prepare(&self) -> Result<Snapshot, ConfigErrors> {
        let (config, registry) = self.source.load().await?;
        let old = self.current.load();
        let errs = restart_required(&old.config, &config);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        Snapshot::build(generation, config, registry, &self.metrics)
    }

    /// Reload when a watched file changes or on SIGHUP, until `shutdown` fires.
    pub async fn watch(
        self: Arc<Self>,
        mut hup: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if !matches!(self.source, Source::File(_)) {
            return;
        }
        loop {
            let interval = self.current.load().config.reload_poll_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {
                    if self.source.fingerprint() == self.fingerprint.load(Ordering::Relaxed) {
                        continue;
                    }
                    info!("Config or registry file changed.");
                }
                changed = hup.changed() => {
                    if changed.is_err() { return; }
                    info!("SIGHUP received.");
                }
                _ = shutdown.changed() => return,
            }
            let _ = self.reload().await;
        }
    }
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
    errs
}
