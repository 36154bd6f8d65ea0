//! Configuration reload (DESIGN.md capability 9): SIGHUP (`systemctl reload omsgate`) or
//! `POST /reload` on the admin listener re-reads the config file without dropping a request.
//!
//! 1. The file is loaded and validated like at start. A bad file is rejected: every problem is
//!    logged (and returned to `POST /reload`), `omsgate_config_reloads_total{result="rejected"}`
//!    counts it, and the running configuration stays.
//! 2. Otherwise a new [`Pipeline`] is built with [`Pipeline::reloaded`] (routes, identity keys
//!    and every concern's policies; unchanged local rate-limit buckets carry over), the upstream
//!    pool is swapped ([`Upstreams::reload`]), and the new pipeline is stored: requests that
//!    start from then on use it, requests in flight finish on the snapshot they took in
//!    `new_ctx`. `omsgate_config_info{hash}` moves to the new hash.
//! 3. What only a restart can change (listen addresses, threads, the keepalive pool size, the
//!    shutdown grace, the log format) keeps its old value; each such key is named in a warning
//!    and in the reload's answer.
//!
//! Reloads are serialised. Secrets read from environment variables (`identity.jwt_secret_env`)
//! are the process's environment, which a reload does not change; files (`jwt_public_key`) are
//! read again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::proxy::{Pipeline, Shared};

/// Re-reads the config file and swaps the pipeline.
pub struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
    running: tokio::sync::Mutex<()>,
}

/// The result of one reload, as logged and as answered by `POST /reload`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// `"ok"` or `"rejected"`.
    pub result: &'static str,
    /// Hash of the configuration in force after the reload.
    pub hash: String,
    /// Hash of the configuration in force before it.
    pub previous_hash: String,
    /// Why the file was rejected, one entry per problem (`key: reason`).
    pub problems: Vec<String>,
    /// Keys whose new value needs a restart; their old value stays in force.
    pub restart_required: Vec<String>,
    /// Whether the server list of the upstream pool changed.
    pub upstream_servers_changed: bool,
}

impl Reloader {
    /// A reloader of the config file at `path` into `shared`.
    pub fn new(shared: Arc<Shared>, path: PathBuf) -> Arc<Reloader> {
        Arc::new(Reloader {
            shared,
            path,
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// Reloads the config file; `trigger` (`"SIGHUP"`, `"admin"`) is logged.
    pub async fn reload(&self, trigger: &'static str) -> Outcome {
        let _one_at_a_time = self.running.lock().await;
        let previous = self.shared.pipeline.load_full();
        let previous_hash = previous.config.hash.clone();
        let path = self.path.display().to_string();

        let config = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                let problems = problem_lines(&e);
                metrics::CONFIG_RELOADS
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::warn!(
                    trigger,
                    path,
                    count = problems.len(),
                    problems = %problems.join("; "),
                    "Configuration reload rejected; the running configuration stays."
                );
                return Outcome {
                    result: "rejected",
                    hash: previous_hash.clone(),
                    previous_hash,
                    problems,
                    restart_required: Vec::new(),
                    upstream_servers_changed: false,
                };
            }
        };

        let restart_required = restart_required(&previous.config, &config);
        let config = Arc::new(keep_restart_only(&previous.config, config));
        let pipeline = Pipeline::reloaded(config.clone(), &previous);
        let change = match self.shared.upstreams.reload(&config.upstream).await {
            Ok(change) => change,
            Err(e) => {
                let problems = vec![format!("upstream.servers: {e}")];
                metrics::CONFIG_RELOADS
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::warn!(trigger, path, error = %e, "Configuration reload rejected: the upstream pool could not be built; the running configuration stays.");
                return Outcome {
                    result: "rejected",
                    hash: previous_hash.clone(),
                    previous_hash,
                    problems,
                    restart_required: Vec::new(),
                    upstream_servers_changed: false,
                };
            }
        };
        self.shared.pipeline.store(Arc::new(pipeline));
        if let (Some(cert), Some(tls)) = (&self.shared.listener_cert, &config.server.tls) {
            // Read and checked by Config::load: a bad file rejected the reload above.
            cert.replace(tls.certified.clone());
        }
        for (cert, listener) in self
            .shared
            .listener_certs
            .iter()
            .zip(&config.server.listeners)
        {
            if let (Some(cert), Some(tls)) = (cert, &listener.tls) {
                cert.replace(tls.certified.clone());
            }
        }

        let level = crate::logging::set_level(&config.log.level);
        metrics::CONFIG_INFO.reset();
        metrics::CONFIG_INFO
            .with_label_values(&[&config.hash])
            .set(1);
        for route in config.routes.names() {
            metrics::HTTP_DURATION.with_label_values(&[route]);
        }
        metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
        tracing::info!(
            trigger,
            path,
            hash = %config.hash,
            previous_hash = %previous_hash,
            routes = config.routes.routes.len(),
            upstream_servers = ?config.upstream.servers,
            upstream_servers_changed = change.servers,
            log_level = ?level,
            "Configuration reloaded."
        );
        if !restart_required.is_empty() {
            tracing::warn!(
                keys = %restart_required.join(", "),
                "Configuration reloaded, but these keys changed and need a restart to apply; \
                 their old values stay in force."
            );
        }
        Outcome {
            result: "ok",
            hash: config.hash.clone(),
            previous_hash,
            problems: Vec::new(),
            restart_required,
            upstream_servers_changed: change.servers,
        }
    }
}

/// One line per problem, for the log and the `POST /reload` answer. A TOML syntax error's
/// excerpt of the file is left out: the offending line could hold a secret.
pub fn problem_lines(e: &ConfigError) -> Vec<String> {
    match e {
        ConfigError::Invalid(list) => list.iter().map(|p| p.to_string()).collect(),
        ConfigError::Syntax(text) => {
            let kept: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !is_excerpt_line(l))
                .collect();
            vec![kept.join(": ")]
        }
        other => vec![other.to_string()],
    }
}

/// `  |`, `3 | key = "..."`, `  |   ^`: the file excerpt in a TOML parse error.
fn is_excerpt_line(line: &str) -> bool {
    let rest = line.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.trim_start().starts_with('|')
}

/// Keys that differ between `old` and `new` but only take effect on a restart.
pub fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_string());
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check("server.threads", old.server.threads != new.server.threads);
    check(
        "server.shutdown_grace",
        old.server.shutdown_grace != new.server.shutdown_grace,
    );
    check(
        "server.read_buffer",
        old.server.read_buffer != new.server.read_buffer,
    );
    check(
        "server.header_timeout",
        old.server.header_timeout != new.server.header_timeout,
    );
    check("server.h2c", old.server.h2c != new.server.h2c);
    let (old_tls, new_tls) = (&old.server.tls, &new.server.tls);
    check("server.tls", old_tls.is_some() != new_tls.is_some());
    check(
        "server.tls.client_ca",
        matches!((old_tls, new_tls), (Some(o), Some(n)) if o.client_ca != n.client_ca),
    );
    let listener_shape = |c: &Config| -> Vec<_> {
        c.server
            .listeners
            .iter()
            .map(|l| {
                (
                    l.listen,
                    l.tls.is_some(),
                    l.tls.as_ref().and_then(|t| t.client_ca.clone()),
                )
            })
            .collect()
    };
    check(
        "server.listeners",
        listener_shape(old) != listener_shape(new),
    );
    check("admin.listen", old.admin.listen != new.admin.listen);
    check(
        "upstream.keepalive_pool",
        old.upstream.keepalive_pool != new.upstream.keepalive_pool,
    );
    check("log.format", old.log.format != new.log.format);
    keys
}

/// `new` with the restart-only values of `old`, so that what the pipeline reports (e.g. `/ready`)
/// is what is actually in force.
fn keep_restart_only(old: &Config, mut new: Config) -> Config {
    new.server.listen = old.server.listen;
    new.server.threads = old.server.threads;
    new.server.shutdown_grace = old.server.shutdown_grace;
    new.server.read_buffer = old.server.read_buffer;
    new.server.header_timeout = old.server.header_timeout;
    new.server.h2c = old.server.h2c;
    keep_listener_tls(&old.server.tls, &mut new.server.tls);
    if new.server.listeners.len() != old.server.listeners.len() {
        new.server.listeners = old.server.listeners.clone();
    }
    for (o, n) in old
        .server
        .listeners
        .iter()
        .zip(new.server.listeners.iter_mut())
    {
        n.listen = o.listen;
        keep_listener_tls(&o.tls, &mut n.tls);
    }
    new.admin.listen = old.admin.listen;
    new.upstream.keepalive_pool = old.upstream.keepalive_pool;
    new.log.format = old.log.format;
    new
}

/// A listener's TLS after a reload: the certificate and key as re-read, TLS on or off and the
/// client CA as they were.
fn keep_listener_tls(
    old: &Option<crate::tls::ListenerTls>,
    new: &mut Option<crate::tls::ListenerTls>,
) {
    match (old, new) {
        (Some(o), Some(n)) => {
            n.client_ca = o.client_ca.clone();
            n.client_roots = o.client_roots.clone();
        }
        (o, n) => *n = o.clone(),
    }
}

// === impl ReloadOnHangup ===

/// Set by every SIGHUP from [`install_hangup_handler`] on; [`ReloadOnHangup`] reads it once, when
/// it starts listening, to catch up with a SIGHUP that came during start.
static HANGUP_SEEN: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Installs the process's SIGHUP handler before the server starts, so that a SIGHUP arriving
/// before [`ReloadOnHangup`] listens (e.g. `systemctl reload` right after start) is remembered
/// instead of terminating the process (the default action). The handler stays for the life of
/// the process; tokio's own SIGHUP stream registers beside it.
pub fn install_hangup_handler() {
    if let Err(e) = signal_hook::flag::register(libc::SIGHUP, Arc::clone(&HANGUP_SEEN)) {
        tracing::warn!(error = %e, "Installing the SIGHUP handler early failed; a SIGHUP during start would stop the process.");
    }
}

/// Background service: SIGHUP reloads the configuration.
pub struct ReloadOnHangup {
    reloader: Arc<Reloader>,
}

impl ReloadOnHangup {
    /// Reloads with `reloader` on every SIGHUP.
    pub fn new(reloader: Arc<Reloader>) -> ReloadOnHangup {
        ReloadOnHangup { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "Installing the SIGHUP handler failed; reload with POST /reload on the admin listener.");
                return;
            }
        };
        // A SIGHUP that came during start was only remembered by the early handler: catch up
        // if the file changed since it was loaded. Without one, an edited file waits for the
        // operator's reload like at any other time.
        if HANGUP_SEEN.swap(false, Ordering::SeqCst) {
            let running = self.reloader.shared.pipeline.load().config.hash.clone();
            if let Ok(on_disk) = Config::load(&self.reloader.path) {
                if on_disk.hash != running {
                    self.reloader.reload("start").await;
                }
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    self.reloader.reload("SIGHUP").await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn restart_only_keys_are_named_and_kept() {
        let old = config("[server]\nlisten = \"127.0.0.1:8080\"\nthreads = 2\n");
        let new = config(
            "[server]\nlisten = \"127.0.0.1:8081\"\nthreads = 4\n[log]\nformat = \"json\"\nlevel = \"debug\"\n",
        );
        assert_eq!(
            restart_required(&old, &new),
            ["server.listen", "server.threads", "log.format"]
        );
        let kept = keep_restart_only(&old, new);
        assert_eq!(kept.server.listen, old.server.listen);
        assert_eq!(kept.server.threads, 2);
        assert_eq!(kept.log.format, old.log.format);
        // Reloadable keys take the new value.
        assert_eq!(kept.log.level, "debug");
        assert!(restart_required(&old, &config("")).len() == 1); // default listen differs
    }

    #[test]
    fn extra_listeners_are_restart_only() {
        let one = "[server]\nlisten = \"127.0.0.1:8080\"\n[[server.listeners]]\nlisten = \"127.0.0.1:8081\"\n";
        let old = config(one);
        let moved = config(&one.replace("8081", "8082"));
        assert_eq!(restart_required(&old, &moved), ["server.listeners"]);
        let kept = keep_restart_only(&old, moved);
        assert_eq!(kept.server.listeners[0].listen.port(), 8081);
        let added = config(&format!(
            "{one}[[server.listeners]]\nlisten = \"127.0.0.1:8083\"\n"
        ));
        assert_eq!(restart_required(&old, &added), ["server.listeners"]);
        assert_eq!(keep_restart_only(&old, added).server.listeners.len(), 1);
        assert!(restart_required(&old, &config(one)).is_empty());
    }

    #[test]
    fn syntax_errors_leave_out_the_file_excerpt() {
        let secret = "hs256-do-not-log";
        let err = match Config::parse(&format!("[identity]\njwt_secret = \"{secret}\nmode = 1\n")) {
            Err(e) => e,
            Ok(_) => panic!("expected a syntax error"),
        };
        let lines = problem_lines(&err);
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains(secret), "{lines:?}");
        assert!(lines[0].contains("line 2"), "{lines:?}");
    }

    #[test]
    fn invalid_configs_give_one_line_per_problem() {
        let err = match Config::parse("[server]\nlisten = \"x\"\nshutdown_grace = \"y\"\n") {
            Err(e) => e,
            Ok(_) => panic!("expected problems"),
        };
        let lines = problem_lines(&err);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("server.listen: "));
        assert!(lines[1].starts_with("server.shutdown_grace: "));
    }
}
