//! A running sidecar: loads the first snapshot, binds both listeners, starts the reload watcher,
//! and shuts down in order (readiness off → proxy drains → admin stops). Used by `run`, `demo`
//! and the in-process integration tests alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin::{Admin, AdminState};
use crate::canary::audit::AuditLog;
use crate::canary::control::Controller;
use crate::canary::shadow::{ShadowCollector, ShadowStats};
use crate::config::ConfigErrors;
use crate::explain::gather::Explainer;
use crate::explain::journal::Journal;
use crate::inspect::Inspector;
use crate::inspect::exposition::InspectCollector;
use crate::observe::Telemetry;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::recent::RecentRequests;
use crate::observe::spans::{Tracing, TracingError};
use crate::proxy::shadow::Shadower;

/// Memory cap of the trace → lineage index (about 30k entries of typical size).
const RECENT_MAX_BYTES: usize = 16 * 1024 * 1024;
use crate::proxy::server::{Listener, ListenerSettings, serve};
use crate::proxy::{Forward, Proxy};
use crate::routing::{Reloader, Source};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Config or registry is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// The span exporter could not start.
    #[error(transparent)]
    Tracing(#[from] TracingError),
    /// The audit log could not be opened (or does not verify).
    #[error(transparent)]
    Audit(crate::canary::audit::AuditError),
    /// The inspection worker could not start.
    #[error("cannot start the inspection worker: {0}")]
    Inspector(std::io::Error),
}

/// A started sidecar.
pub struct Sidecar {
    /// Where the data plane listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Owns and swaps snapshots.
    pub reloader: Arc<Reloader>,
    /// Telemetry sinks.
    pub telemetry: Arc<Telemetry>,
    /// Canary comparisons and traffic changes.
    pub canary: Arc<Controller>,
    admin_state: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    hup: watch::Sender<u64>,
    proxy_task: JoinHandle<()>,
    admin_task: oneshot::Receiver<()>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Sidecar {
    /// Load config and registry, bind, and start serving.
    pub async fn start(source: Source) -> Result<Self, StartError> {
        let (metrics, registry) = Metrics::new();
        let reloader = Reloader::start(source, metrics.clone()).await?;
        let snapshots = reloader.current();
        let config = snapshots.load().config.clone();
        let access_log = AccessLog::start(
            &config.access_log,
            config.access_log_queue,
            metrics.clone(),
            Arc::new(RecentRequests::new(
                config.traces.recent_requests,
                RECENT_MAX_BYTES,
            )),
        )
        .map_err(StartError::AccessLog)?;
        let tracing = Tracing::start(&config.traces, &metrics).map_err(StartError::Tracing)?;
        let journal = Arc::new(Journal::default());
        reloader.set_journal(journal.clone());
        let inspector = Inspector::start(&config.inspect, tracing.clone(), journal.clone())
            .map_err(StartError::Inspector)?;
        let known = inspector.clone();
        reloader.on_swap(move |snap| {
            known.register(
                snap.models
                    .values()
                    .flat_map(|m| m.versions.values())
                    .map(|s| s.profile.clone()),
            );
        });
        let mut registry = registry;
        registry.register_collector(Box::new(InspectCollector(inspector.shared().clone())));
        let shadow_stats = Arc::new(ShadowStats::new(config.inspect.window));
        registry.register_collector(Box::new(ShadowCollector(shadow_stats.clone())));
        let audit =
            Arc::new(AuditLog::open(config.audit_path.as_deref()).map_err(StartError::Audit)?);
        reloader.set_audit(audit.clone());
        let canary = Arc::new(Controller::new(
            reloader.clone(),
            audit,
            inspector.shared().clone(),
            shadow_stats.clone(),
            metrics.clone(),
        ));
        let telemetry = Arc::new(Telemetry {
            metrics,
            access_log,
            tracing: tracing.clone(),
            inspector,
            journal: journal.clone(),
        });
        let proxy_listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let proxy_addr = proxy_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                source,
            })?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
        let (hup, hup_rx) = watch::channel(0u64);
        let proxy = Proxy::new(
            snapshots.clone(),
            telemetry.clone(),
            Forward::new(&config.upstream, tracing, telemetry.inspector.clone()),
            Shadower::new(&config.upstream, shadow_stats),
        );
        let grace_source = snapshots.clone();
        let proxy_task = tokio::spawn(serve(
            proxy_listener,
            move |peer| proxy.service(peer),
            shutdown_rx.clone(),
            Listener {
                name: "proxy",
                settings: move || {
                    let snap = grace_source.load();
                    ListenerSettings {
                        grace: snap.config.drain_grace,
                        limits: snap.config.limits,
                    }
                },
                metrics: telemetry.metrics.listener("proxy"),
            },
        ));
        let admin_state = Arc::new(AdminState {
            reloader: reloader.clone(),
            metrics: registry,
            recent: telemetry.access_log.recent.clone(),
            draining: AtomicBool::new(false),
            canary: canary.clone(),
            explainer: Arc::new(Explainer::new(
                reloader.clone(),
                telemetry.inspector.shared().clone(),
                journal,
            )),
        });
        let admin = Admin::new(admin_state.clone());
        let admin_limits = snapshots.clone();
        let admin_metrics = telemetry.metrics.listener("admin");
        let admin_task = admin_thread(admin_listener, move |listener| {
            serve(
                listener,
                move |_| admin.clone(),
                admin_shutdown_rx,
                Listener {
                    name: "admin",
                    settings: move || ListenerSettings {
                        grace: Duration::from_secs(1),
                        limits: admin_limits.load().config.limits,
                    },
                    metrics: admin_metrics,
                },
            )
        })
        .await
        .map_err(|source| StartError::Bind {
            addr: admin_addr,
            source,
        })?;
        tokio::spawn(canary.clone().watch(shutdown_rx.clone()));
        tokio::spawn(reloader.clone().watch(hup_rx, shutdown_rx));
        info!(%proxy_addr, %admin_addr, "modelstamp started.");
        Ok(Self {
            proxy_addr,
            admin_addr,
            reloader,
            telemetry,
            canary,
            admin_state,
            shutdown,
            admin_shutdown,
            hup,
            proxy_task,
            admin_task,
        })
    }

    /// Ask for a reload, as SIGHUP does.
    pub fn trigger_reload(&self) {
        self.hup.send_modify(|n| *n += 1);
    }

    /// Stop accepting, turn readiness off, and start draining.
    pub fn shutdown(&self) {
        self.admin_state.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }

    /// Wait until the proxy has drained, then stop the admin listener and flush the log.
    pub async fn wait(self) {
        let _ = self.proxy_task.await;
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin_task.await;
        let telemetry = self.telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            telemetry.access_log.flush(Duration::from_secs(5));
            telemetry.tracing.flush();
        })
        .await;
    }
}

/// Serve the admin listener on a thread and runtime of its own, as linkerd2-proxy runs its
/// admin server: rendering `/metrics` for a large registry (tens of milliseconds at 1,000
/// versions) or answering `explain` never holds up a proxy thread, which matters most when the
/// proxy runs on one. Returns once the admin runtime has taken the listener (or failed to);
/// the receiver completes when the admin server has stopped.
async fn admin_thread<F, Fut>(
    listener: TcpListener,
    serve: F,
) -> std::io::Result<oneshot::Receiver<()>>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    // The listener moves to the admin runtime's reactor. The runtime is built on its thread:
    // one dropped here, in an async context, would panic.
    let listener = listener.into_std()?;
    let (ready, started) = oneshot::channel();
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("modelstamp-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let taken = runtime.and_then(|rt| {
                let listener = rt.block_on(async { TcpListener::from_std(listener) })?;
                Ok((rt, listener))
            });
            let (runtime, listener) = match taken {
                Ok(taken) => {
                    let _ = ready.send(Ok(()));
                    taken
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            runtime.block_on(serve(listener));
            // Tasks the admin server spawned end with its runtime, here.
            drop(runtime);
            let _ = done.send(());
        })?;
    started
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the admin thread ended at start")))?;
    Ok(stopped)
}
