//! A running sidecar: loads the first snapshot, binds both listeners, starts the reload watcher,
//! and shuts down in order (readiness off → proxy drains → admin stops). Used by `run`, `demo`
//! and the in-process integration tests alike.
//!
//! Two planes, two runtimes: the proxy serves on the runtime `start` is called on; the control
//! plane (reloader and MLflow poller, canary controller and automatic rollback, the admin API
//! with `explain`) runs on a thread and runtime of its own, so reading, parsing and building a
//! large registry or answering an `explain` never holds up a proxied request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{Admin, AdminState};
use crate::canary::audit::{AuditLog, ReloadAudit};
use crate::canary::control::Controller;
use crate::canary::shadow::{ShadowCollector, ShadowStats};
use crate::config::ConfigErrors;
use crate::explain::gather::Explainer;
use crate::inspect::Inspector;
use crate::inspect::exposition::InspectCollector;
use crate::journal::Journal;
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
use crate::routing::{JournalFollower, ReloadEvent, Reloader, Source};

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
    /// The history store could not be opened.
    #[error("cannot open the history store: {0}")]
    History(crate::history::HistoryError),
    /// The inspection worker could not start.
    #[error("cannot start the inspection worker: {0}")]
    Inspector(std::io::Error),
    /// The control plane's thread could not start.
    #[error("cannot start the control plane: {0}")]
    Control(std::io::Error),
    /// A listener's certificate or key cannot be used.
    #[error("{listener}: {why}")]
    Tls {
        /// `server.tls` or `admin.tls`.
        listener: &'static str,
        /// What is wrong.
        why: crate::tls::TlsError,
    },
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
    admin_task: JoinHandle<()>,
    /// Stops the history writer once nothing can record any more, and its task.
    history: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    control: ControlPlane,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Sidecar {
    /// Load config and registry, bind, and start serving.
    pub async fn start(source: Source) -> Result<Self, StartError> {
        let control = ControlPlane::start().map_err(StartError::Control)?;
        let (metrics, registry) = Metrics::new();
        let reloader = control
            .run(Reloader::start(source, metrics.clone()))
            .await
            .map_err(StartError::Control)??;
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
        // Every journal event (and audit entry) also goes to the history store, when one is
        // configured.
        let mut history_audit = None;
        let history = match &config.history {
            Some(h) => {
                let store = crate::history::open(h).map_err(StartError::History)?;
                let (tx, rx) = crate::history::channel(h.queue);
                journal.set_sink(tx);
                let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(1_000);
                history_audit = Some(audit_tx);
                let rx = (rx, audit_rx);
                Some((store, rx, h.clone()))
            }
            None => None,
        };
        reloader.subscribe(Arc::new(JournalFollower(journal.clone())));
        let inspector = Inspector::start(&config.inspect, tracing.clone(), journal.clone())
            .map_err(StartError::Inspector)?;
        let known = inspector.clone();
        reloader.subscribe(Arc::new(move |event: &ReloadEvent<'_>| {
            if let ReloadEvent::Swapped { new, .. } = event {
                known.register(
                    new.models
                        .values()
                        .flat_map(|m| m.versions.values())
                        .map(|s| s.profile.clone()),
                );
            }
        }));
        let mut registry = registry;
        registry.register_collector(Box::new(InspectCollector(inspector.shared().clone())));
        let shadow_stats = Arc::new(ShadowStats::new(config.inspect.window));
        registry.register_collector(Box::new(ShadowCollector(shadow_stats.clone())));
        let audit =
            Arc::new(AuditLog::open(config.audit_path.as_deref()).map_err(StartError::Audit)?);
        if let Some(tx) = history_audit {
            audit.set_store(tx);
        }
        reloader.subscribe(Arc::new(ReloadAudit(audit.clone())));
        let canary = Arc::new(Controller::new(
            reloader.clone(),
            audit,
            journal.clone(),
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
        let tls = |listener: &'static str, settings: &Option<crate::tls::TlsServer>| {
            settings
                .as_ref()
                .map(|t| t.server_config())
                .transpose()
                .map_err(|why| StartError::Tls { listener, why })
        };
        let proxy_tls = tls("server.tls", &config.server_tls)?;
        let admin_tls = tls("admin.tls", &config.admin_tls)?;
        let served: Vec<_> = [&proxy_tls, &admin_tls]
            .into_iter()
            .flatten()
            .map(|(_, served)| served.clone())
            .collect();
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
            move |peer, tls| proxy.service(peer, tls),
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
                tls: proxy_tls.map(|(config, _)| Arc::new(config)),
            },
        ));
        let admin_state = Arc::new(AdminState {
            reloader: reloader.clone(),
            metrics: registry,
            recent: telemetry.access_log.recent.clone(),
            draining: AtomicBool::new(false),
            canary: canary.clone(),
            explainer: Arc::new(
                Explainer::new(
                    reloader.clone(),
                    telemetry.inspector.shared().clone(),
                    journal.clone(),
                )
                .with_history(history.as_ref().map(|(store, _, _)| store.clone())),
            ),
        });
        let admin = Admin::new(admin_state.clone());
        let admin_limits = snapshots.clone();
        let admin_metrics = telemetry.metrics.listener("admin");
        // The listener moves to the control runtime's reactor.
        let admin_listener = admin_listener
            .into_std()
            .map_err(|source| StartError::Bind {
                addr: admin_addr,
                source,
            })?;
        let admin_task = control.spawn(async move {
            let listener = match TcpListener::from_std(admin_listener) {
                Ok(l) => l,
                Err(e) => return warn!(error = %e, "The admin listener could not start."),
            };
            serve(
                listener,
                move |_, _| admin.clone(),
                admin_shutdown_rx,
                Listener {
                    name: "admin",
                    settings: move || ListenerSettings {
                        grace: Duration::from_secs(1),
                        limits: admin_limits.load().config.limits,
                    },
                    metrics: admin_metrics,
                    tls: admin_tls.map(|(config, _)| Arc::new(config)),
                },
            )
            .await
        });
        if !served.is_empty() {
            control.spawn(watch_certificates(served, shutdown_rx.clone()));
        }
        control.spawn(canary.clone().watch(shutdown_rx.clone()));
        let mut history_writer = None;
        if let Some((store, rx, h)) = history {
            let (rx, audit_rx) = rx;
            let writer = crate::history::Writer::new(
                store,
                rx,
                h.instance,
                reloader.clone(),
                journal.clone(),
                h.retention,
            )
            .with_audit(audit_rx);
            // It stops after the proxy and the admin API have drained (`wait`): what they
            // record until then is still written.
            let (stop, stop_rx) = watch::channel(false);
            history_writer = Some((stop, control.spawn(writer.run(stop_rx))));
        }
        control.spawn(
            crate::explain::onset::Watcher::new(reloader.clone(), journal).run(shutdown_rx.clone()),
        );
        control.spawn(reloader.clone().watch(hup_rx, shutdown_rx));
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
            history: history_writer,
            control,
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
        if let Some((stop, task)) = self.history {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        self.control.stop().await;
        let telemetry = self.telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            telemetry.access_log.flush(Duration::from_secs(5));
            telemetry.tracing.flush();
        })
        .await;
    }
}

/// How often the listeners' certificate files are looked at (a `stat` each).
const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

/// Serve rotated certificates (cert-manager renewals, Secret updates) from the next handshake
/// on: the files are stat'ed every [`CERTIFICATE_POLL`] on the control plane and read again only
/// when they moved. Unusable new files are logged; the previous certificate keeps serving.
async fn watch_certificates(
    served: Vec<Arc<crate::tls::ServedCert>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CERTIFICATE_POLL) => {}
            _ = shutdown.changed() => return,
        }
        for cert in &served {
            let cert = cert.clone();
            match tokio::task::spawn_blocking(move || cert.refresh()).await {
                Ok(Ok(true)) => {
                    info!("A listener's certificate was rotated; new handshakes use it.")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "A listener's new certificate cannot be used; the previous one keeps serving.")
                }
                Err(e) => warn!(error = %e, "The certificate check stopped."),
            }
        }
    }
}

/// The control plane's thread and single-threaded runtime, as linkerd2-proxy runs its admin
/// server apart from the data plane. Tasks are spawned onto it through its handle; it stops
/// (dropping whatever still runs there) on `stop` or when dropped. Its threads, the blocking
/// ones that read and parse a registry included, run [`CONTROL_NICENESS`] steps below the
/// proxy threads: on a pod with two cores a reload must not take a core from the proxy.
struct ControlPlane {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

/// How many nice steps the control plane's threads run below the proxy threads. Linux's
/// scheduler gives a thread at nice 10 about a tenth of the CPU time of one at nice 0 when both
/// want the same core, so a reload (tens of milliseconds of parsing for a 1,000-version
/// registry, about a second for one 8.7 MB file) waits for the proxy instead of delaying
/// requests, yet is never starved: a weight change or an automatic rollback still lands in
/// milliseconds on a saturated proxy. (`SCHED_IDLE` was measured and not kept for that reason:
/// docs/perf-history.md, "Reloads under load".)
pub const CONTROL_NICENESS: i32 = 10;

/// The nice value the control plane's threads take: [`CONTROL_NICENESS`] below the calling
/// (proxy) thread's.
fn control_niceness() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        let now = rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()?;
        Some((now + CONTROL_NICENESS).min(19))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Give the calling thread the nice value `nice` (Linux: the nice value is per thread; a thread
/// starts with its creator's). Raising a nice value needs no privilege; if it fails all the same
/// (a seccomp profile), the thread runs on at the process's priority.
fn yield_to_data_plane(nice: Option<i32>) {
    #[cfg(target_os = "linux")]
    if let Some(nice) = nice
        && let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
    {
        tracing::debug!(error = %e, "The control plane runs at the proxy's priority.");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

impl ControlPlane {
    fn start() -> std::io::Result<Self> {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (done, stopped) = oneshot::channel();
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let nice = control_niceness();
        std::thread::Builder::new()
            .name("modelstamp-control".into())
            .spawn(move || {
                yield_to_data_plane(nice);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_start(move || yield_to_data_plane(nice))
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Runs every spawned task until told to stop (or the sidecar is dropped).
                let _ = runtime.block_on(stop_rx);
                // Tasks still running end with the runtime, here, on its own thread; a blocking
                // task (a parse, a DNS lookup) is given five seconds, so shutdown never hangs.
                runtime.shutdown_timeout(std::time::Duration::from_secs(5));
                let _ = done.send(());
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the control thread ended at start"))??;
        Ok(Self {
            handle,
            stop: Some(stop),
            stopped: Some(stopped),
        })
    }

    /// Run `task` on the control plane.
    fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Run `task` on the control plane and wait for its result.
    async fn run<F>(&self, task: F) -> std::io::Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(task).await.map_err(std::io::Error::other)
    }

    /// Stop the runtime and wait until its thread has dropped it.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread, as the kernel reports it.
    fn nice() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // Field 19; the command name (field 2) may hold spaces, so count after its ')'.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(16)?
            .parse()
            .ok()
    }

    #[tokio::test]
    async fn the_control_plane_and_its_blocking_threads_run_below_the_proxy() {
        let Some(proxy) = nice() else {
            panic!("no nice value in /proc/thread-self/stat")
        };
        let want = Some((proxy + CONTROL_NICENESS).min(19));
        let control = ControlPlane::start().unwrap_or_else(|e| panic!("{e}"));
        let (thread, blocking) = control
            .run(async { (nice(), tokio::task::spawn_blocking(nice).await) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(thread, want, "the control thread");
        assert_eq!(
            blocking.ok().flatten(),
            want,
            "a blocking thread of the control plane"
        );
        assert_eq!(
            nice(),
            Some(proxy),
            "the caller (the proxy) keeps its priority"
        );
        control.stop().await;
    }
}
