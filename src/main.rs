//! The `modelstamp` command line: `run` (the default), `check`, `demo`, the commands that talk
//! to a running sidecar (`lineage`, `compare`, `promote`, `rollback`, `audit show`), and
//! `audit verify`.

use std::path::PathBuf;

/// `print!` that returns the write error instead of panicking: a closed pipe
/// (`modelstamp compare | head -1`) ends the command quietly, as `ls | head` does.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `println!` that returns the write error; see [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use modelstamp::admin::client::{AdminClient, render_lineage};
use modelstamp::config::RegistrySource;
use modelstamp::registry::{FileRegistry, Registry};
use modelstamp::routing::{Snapshot, Source};
use modelstamp::{Sidecar, StartError, demo};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

// A proxy allocates small objects on worker threads and frees some on the log and export
// threads; mimalloc handles that pattern far better than glibc's arenas (see BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Inference-side sidecar: stamps every request with model version and lineage ID.
#[derive(Parser)]
#[command(name = "modelstamp", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Run(RunArgs),
    /// Validate a config and its registry; print every error with its path.
    Check(RunArgs),
    /// Start an embedded model server and the sidecar, send traffic, print a per-version table.
    Demo(DemoArgs),
    /// Show the model version and lineage record behind a trace ID, request ID or lineage ID.
    Lineage(LineageArgs),
    /// Serve only the demo's Open Inference v2 model server (an upstream for tests and benches).
    DemoModel(DemoModelArgs),
    /// Exit 0 when a running sidecar is ready (`/readyz`), 1 otherwise: a container healthcheck.
    Healthcheck(AdminArgs),
    /// Compare a canary's candidate with its baseline: table (or --json) and verdict.
    Compare(admin_cli::CompareArgs),
    /// Send all of a split route's traffic to the candidate (or --version), with an audit entry.
    Promote(admin_cli::ChangeArgs),
    /// Send all of a split route's traffic back to the baseline, with an audit entry.
    Rollback(admin_cli::ChangeArgs),
    /// Explain what changed and why a model's version degraded: ranked causes and a timeline.
    Explain(admin_cli::ExplainArgs),
    /// Verify an audit log's hash chain, or show a sidecar's audit trail.
    #[command(subcommand)]
    Audit(admin_cli::AuditCommand),
}

#[derive(Args)]
struct DemoModelArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
    /// Version that answers paths without `/versions/{v}` (1 or 2).
    #[arg(long, default_value = "1", value_parser = ["1", "2"])]
    default_version: String,
    /// Answer every request with one fixed response (a fast stub for load tests).
    #[arg(long)]
    fixed: bool,
}

mod admin_cli;

#[derive(Args)]
struct AdminArgs {
    /// Admin API of a running sidecar, http:// or https:// (default: MODELSTAMP_ADMIN, then the
    /// config's admin.listen, https when it sets admin.tls).
    #[arg(long, env = "MODELSTAMP_ADMIN")]
    admin: Option<String>,
    /// Config whose admin address to use when --admin is not given.
    #[arg(long, short, env = "MODELSTAMP_CONFIG")]
    config: Option<PathBuf>,
    /// CA bundle (PEM) to check an https:// admin API with, besides the platform's. Without it,
    /// an address taken from the config trusts exactly the certificate in admin.tls.cert_file.
    #[arg(long, env = "MODELSTAMP_ADMIN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM; it may hold the key too) for an admin API that requires one
    /// (admin.tls.client_ca_file).
    #[arg(long, env = "MODELSTAMP_ADMIN_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM), when not in --cert-file.
    #[arg(long, env = "MODELSTAMP_ADMIN_KEY_FILE")]
    key_file: Option<PathBuf>,
}

impl AdminArgs {
    /// A client for --admin, else the config's admin address, else the default admin address.
    async fn client(&self) -> anyhow::Result<AdminClient> {
        let files = modelstamp::tls::TlsClient {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        let (url, served) = self.url().await;
        let https = url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let tls = match (https, served) {
            (false, _) => None,
            (true, Some(served)) if files.ca_file.is_none() => Some(files.pinned_config(&served)),
            (true, _) => Some(files.client_config()),
        };
        let tls = tls
            .transpose()
            .map_err(|e| anyhow::anyhow!("admin API TLS: {e}"))?;
        Ok(AdminClient::new(&url, tls)?)
    }

    /// The admin URL, and the certificate file its listener serves when it came from the config.
    async fn url(&self) -> (String, Option<PathBuf>) {
        if let Some(a) = &self.admin {
            return (a.clone(), None);
        }
        if let Some(path) = &self.config
            && let Ok((config, _)) = Source::File(path.clone()).load().await
        {
            return match &config.admin_tls {
                Some(tls) => (
                    format!("https://{}", config.admin_listen),
                    Some(tls.cert_file.clone()),
                ),
                None => (format!("http://{}", config.admin_listen), None),
            };
        }
        ("http://127.0.0.1:9901".to_string(), None)
    }
}

#[derive(Args)]
struct LineageArgs {
    /// A trace ID, request ID or lineage ID (`ln_…`).
    id: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        env = "MODELSTAMP_CONFIG",
        default_value = "/etc/modelstamp/modelstamp.toml"
    )]
    config: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Leave the model server and sidecar running until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Where to write the access log.
    #[arg(long)]
    access_log: Option<PathBuf>,
}

/// Whether `e` is stdout's reader having gone away.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let workers = match workers() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, None | Some(Command::Run(_) | Command::Demo(_))) {
        info!(workers, "Proxy threads (MODELSTAMP_WORKERS).");
    }
    let runtime = match runtime(workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Command::Run(args)) => run(args).await,
            Some(Command::Check(args)) => check(args).await,
            Some(Command::Demo(args)) => run_demo(args).await,
            Some(Command::Lineage(args)) => lineage(args).await,
            Some(Command::DemoModel(args)) => demo_model(args).await,
            Some(Command::Healthcheck(args)) => healthcheck(args).await,
            Some(Command::Compare(args)) => admin_cli::compare(args).await,
            Some(Command::Promote(args)) => admin_cli::change(args, "promote").await,
            Some(Command::Rollback(args)) => admin_cli::change(args, "rollback").await,
            Some(Command::Audit(cmd)) => admin_cli::audit(cmd).await,
            Some(Command::Explain(args)) => admin_cli::explain(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Proxy threads, from `MODELSTAMP_WORKERS`: a number, or `auto` for the cores available to
/// the process (its CPU quota included). Unset: one, as linkerd2-proxy runs unless told
/// otherwise: a sidecar shares its pod with the model server, and one thread costs the least
/// CPU per request (no work stealing between threads; see BENCHMARKS.md). The admin server,
/// the access log, inspection and span export have threads of their own either way.
fn workers() -> Result<usize, String> {
    let auto = || std::thread::available_parallelism().map_or(1, |n| n.get());
    parse_workers(std::env::var("MODELSTAMP_WORKERS").ok().as_deref(), auto)
}

fn parse_workers(v: Option<&str>, auto: impl FnOnce() -> usize) -> Result<usize, String> {
    match v {
        None => Ok(1),
        Some("auto") => Ok(auto()),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "MODELSTAMP_WORKERS={v:?}: expected a number of threads from 1 to 1024, or auto"
            )),
        },
    }
}

/// One proxy thread runs tokio's single-threaded scheduler (no work stealing, no cross-thread
/// wake-ups); more run the multi-threaded one.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELSTAMP_LOG")
        .unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: log files and collectors get plain `key=value` fields.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn print_config_errors(e: &StartError) -> bool {
    if let StartError::Config(errors) = e {
        for err in &errors.0 {
            eprintln!("{err}");
        }
        true
    } else {
        false
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Installed before the listeners answer: a SIGHUP (or SIGTERM) sent as soon as the sidecar
    // is seen ready would otherwise meet the default action and end the process undrained.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let sidecar = match Sidecar::start(Source::File(args.config.clone())).await {
        Ok(s) => s,
        Err(e) => {
            if print_config_errors(&e) {
                return Ok(ExitCode::FAILURE);
            }
            return Err(e).context(format!("starting with {}", args.config.display()));
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => sidecar.trigger_reload(),
        }
    }
    info!("Shutting down: draining in-flight requests.");
    sidecar.shutdown();
    sidecar.wait().await;
    info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

async fn check(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (metrics, _) = modelstamp::observe::metrics::Metrics::new();
    let loaded = Source::File(args.config.clone()).load().await;
    let result = loaded.and_then(|(config, registry)| {
        let describe = match &config.registry {
            RegistrySource::File(path) => {
                FileRegistry::new(path.clone(), config.registry_max_bytes).describe()
            }
            RegistrySource::Mlflow(m) => format!("mlflow:{}", m.uri),
        };
        let routes = config.routes.len();
        let snap = Snapshot::build(1, config, registry, Default::default(), &metrics)?;
        Ok((
            describe,
            routes,
            snap.registry.models.len(),
            snap.registry.version_count(),
        ))
    });
    match result {
        Ok((registry, routes, models, versions)) => {
            outln!(
                "{}: ok ({routes} routes; registry {registry}: {models} models, {versions} versions)",
                args.config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", args.config.display(), errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn demo_model(args: DemoModelArgs) -> anyhow::Result<ExitCode> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let version: &'static str = if args.default_version == "2" {
        "2"
    } else {
        "1"
    };
    let addr = if args.fixed {
        demo::model_server::start_fixed(args.listen, stop_rx).await
    } else {
        demo::model_server::start(args.listen, version, stop_rx).await
    }
    .with_context(|| format!("listening on {}", args.listen))?;
    info!(%addr, default_version = version, "Demo model server listening.");
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop.send(true);
    Ok(ExitCode::SUCCESS)
}

async fn lineage(args: LineageArgs) -> anyhow::Result<ExitCode> {
    let client = args.admin.client().await?;
    match client.lineage(&args.id).await {
        Ok(answer) if args.json => outln!("{}", serde_json::to_string_pretty(&answer)?),
        Ok(answer) => out!("{}", render_lineage(&answer)),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn healthcheck(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let client = args.client().await?;
    match tokio::time::timeout(Duration::from_secs(3), client.ready()).await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("error: no answer from the admin API within 3s");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let access_log = args.access_log.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("modelstamp-demo-{}.log", std::process::id()))
    });
    let opts = demo::DemoOptions {
        requests: args.requests,
        access_log: access_log.clone(),
    };
    let running = match demo::start(&opts).await {
        Ok(d) => d,
        Err(e) => {
            if print_config_errors(&e) {
                error!("The embedded demo config is invalid.");
                return Ok(ExitCode::FAILURE);
            }
            return Err(e).context("starting the demo");
        }
    };
    let rows = demo::run_traffic(&running, opts.requests).await;
    running
        .sidecar
        .telemetry
        .access_log
        .flush(Duration::from_secs(5));
    outln!(
        "\nmodelstamp demo: {} requests through the sidecar, grouped by the version stamped on each response\n",
        opts.requests
    );
    outln!("{}", demo::render_table(&rows));
    outln!("{}", demo::render_inspection(&running));
    outln!("{}", demo::render_canary(&running));
    outln!("{}", demo::render_urls(&running, &rows, &access_log));
    if args.keep_running {
        outln!("Running until Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_counts_default_to_one_and_reject_nonsense() {
        assert_eq!(parse_workers(None, || 8), Ok(1));
        assert_eq!(parse_workers(Some("auto"), || 8), Ok(8));
        assert_eq!(parse_workers(Some("4"), || 8), Ok(4));
        for bad in ["0", "-1", "two", "", "1025"] {
            let err = parse_workers(Some(bad), || 8).unwrap_err();
            assert!(err.contains("MODELSTAMP_WORKERS"), "{err}");
        }
    }

    #[test]
    fn one_worker_is_the_single_threaded_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |n| runtime(n).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
    }
}
