//! Assembles the Pingora server: the proxy service on `server.listen`, the admin service on
//! `admin.listen`, and the background services (upstream health checks, cache invalidation
//! subscription, reload on SIGHUP, ...).
//!
//! Nothing here opens client connections or spawns threads: Redis, Kafka and database clients
//! are created inside the services once Pingora's runtimes run.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::Config;
use crate::proxy::{Gateway, Pipeline, Shared};
use crate::upstream::Upstreams;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The upstream pool could not be built.
    #[error("cannot set up upstream servers: {0}")]
    Upstream(std::io::Error),
    /// The audit pipeline could not be set up (spool directory).
    #[error("cannot set up the audit pipeline: {0}")]
    Audit(crate::audit::AuditError),
    /// A listener's TLS settings could not be built.
    #[error("cannot set up TLS on {key}: {source}")]
    Tls {
        /// The config key of the listener's TLS table.
        key: String,
        /// Why.
        source: Box<pingora::Error>,
    },
    /// A listener address cannot be bound (in use, not local, no permission).
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        /// The config key of the address.
        key: String,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Binds and releases each listener address once, so that an address in use is a clear error at
/// start rather than a panic inside Pingora's service thread (which leaves a process that serves
/// nothing). Skipped for `--upgrade`, where the old process still holds the addresses.
fn check_listeners(config: &Config) -> Result<(), ServerError> {
    let extra = config
        .server
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("server.listeners[{i}].listen"), l.listen));
    for (key, addr) in [
        ("server.listen".to_string(), config.server.listen),
        ("admin.listen".to_string(), config.admin.listen),
    ]
    .into_iter()
    .chain(extra)
    {
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Listen {
            key,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// Options of the process that are not in `config.toml`.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Take over the listening sockets of a running instance (graceful upgrade).
    pub upgrade: bool,
    /// Path of the config file, for reloads.
    pub config_path: Option<std::path::PathBuf>,
    /// Socket used to hand listeners over during an upgrade.
    pub upgrade_sock: Option<String>,
}

/// Builds and runs the server until shutdown; returns only on a fast shutdown.
pub fn run(config: Config, opts: ProcessOptions) -> Result<(), ServerError> {
    run_with(config, opts, Vec::new())
}

/// [`run`] with extra services hosted by the same server (the demo's simulated OMS).
pub fn run_with(
    config: Config,
    opts: ProcessOptions,
    extra: Vec<Box<dyn pingora::services::ServiceWithDependents>>,
) -> Result<(), ServerError> {
    if !opts.upgrade {
        check_listeners(&config)?;
    }
    let config = Arc::new(config);
    crate::metrics::init(&config.hash, &config.routes.names());

    let mut conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.shutdown_grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: config.upstream.keepalive_pool.max(1),
        ..ServerConf::default()
    };
    if let Some(sock) = &opts.upgrade_sock {
        conf.upgrade_sock = sock.clone();
    }
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let (upstreams, health_service) =
        Upstreams::new(&config.upstream).map_err(ServerError::Upstream)?;
    let audit = open_audit(&config, opts.upgrade)?;
    let shared = Arc::new(Shared {
        pipeline: ArcSwap::from_pointee(Pipeline::new(config.clone())),
        upstreams,
        audit: audit.clone(),
        started: Instant::now(),
        listener_cert: config
            .server
            .tls
            .as_ref()
            .map(|tls| crate::tls::ListenerCert::new(tls.certified.clone())),
        listener_certs: config
            .server
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|tls| crate::tls::ListenerCert::new(tls.certified.clone()))
            })
            .collect(),
    });

    // The proxy application inside `Handover`, which keeps client connections open (answered
    // with `Connection: close`) for a moment after the listeners stop instead of resetting them.
    let mut proxy_app =
        pingora::proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    let mut options = pingora::apps::HttpServerOptions::default();
    // Patch 0006: a whole request header within this time, not just each read.
    options.h1_header_read_timeout = config.server.header_timeout;
    let admin_options = options.clone();
    // HTTP/1.1 keeps working beside h2c: Pingora tells the two apart by the connection preface.
    options.h2c = config.server.tls.is_none() && config.server.h2c;
    proxy_app.server_options = Some(options);
    let mut proxy = Service::new(
        "omsgate proxy".to_string(),
        crate::lifecycle::Handover::new(proxy_app),
    );
    // Patch 0008: a TLS handshake has the header deadline too (Pingora: a fixed 60 s), so a
    // client that connects and never finishes its ClientHello is closed as soon as one that
    // never sends its request header.
    if let Some(deadline) = config.server.header_timeout {
        proxy.set_handshake_timeout(deadline);
    }
    // Every client connection holds a read buffer of this size, idle or not.
    let buffers = pingora::protocols::l4::stream::L4BufferSettings {
        read: Some(config.server.read_buffer),
        write: None,
    };
    let listeners = std::iter::once((
        "server.tls".to_string(),
        config.server.listen,
        &config.server.tls,
        &shared.listener_cert,
    ))
    .chain(
        config
            .server
            .listeners
            .iter()
            .zip(&shared.listener_certs)
            .enumerate()
            .map(|(i, (l, cert))| (format!("server.listeners[{i}].tls"), l.listen, &l.tls, cert)),
    );
    for (key, addr, tls, cert) in listeners {
        let mut listener =
            pingora::listeners::ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers);
        if let (Some(tls), Some(cert)) = (tls, cert) {
            if let Some(warning) = tls.key_permission_warning() {
                tracing::warn!(key = %format!("{key}.key"), "{warning}");
            }
            let settings = tls
                .settings(cert.clone())
                .map_err(|source| ServerError::Tls {
                    key: key.clone(),
                    source,
                })?;
            listener = listener.tls(settings);
        }
        proxy.add_listener(listener);
    }

    let mut admin_app = crate::admin::Admin::new(shared.clone());
    if let Some(path) = &opts.config_path {
        let reloader = crate::reload::Reloader::new(shared.clone(), path.clone());
        admin_app = admin_app.with_reloader(reloader.clone());
        server.add_service(background_service(
            "config reload on SIGHUP",
            crate::reload::ReloadOnHangup::new(reloader),
        ));
    }
    // The same header deadline as the public listener: a scraper's or attacker's trickled
    // header must not hold the admin listener's one thread's connections either.
    let mut admin_app = pingora::apps::http_app::HttpServer::new_app(admin_app);
    admin_app.server_options = Some(admin_options);
    let mut admin = Service::new("omsgate admin".to_string(), admin_app);
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);

    if let Some(listener) = shared.pipeline.load().cache.listener() {
        server.add_service(listener);
    }
    for service in extra {
        server.add_boxed_service(service);
    }
    server.add_service(background_service(
        "rate limiter connect",
        crate::limit::ConnectAtStart::new(&shared.pipeline.load().limiter),
    ));
    server.add_service(background_service("audit shipper", audit.background()));
    server.add_service(health_service);
    server.add_service(proxy);
    server.add_service(admin);

    tracing::info!(
        listen = %config.server.listen,
        listeners = ?config
            .server
            .listeners
            .iter()
            .map(|l| format!("{}{}", l.listen, if l.tls.is_some() { " (TLS)" } else { "" }))
            .collect::<Vec<_>>(),
        tls = config.server.tls.is_some(),
        h2c = config.server.h2c && config.server.tls.is_none(),
        admin = %config.admin.listen,
        upstreams = ?config.upstream.servers,
        "omsgate starting."
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(crate::lifecycle::DrainingSignals {
            grace: config.server.shutdown_grace,
        }),
    });
    Ok(())
}

/// Opens the audit pipeline. During a graceful upgrade the old process still holds the spool
/// directory's lock until it has drained and flushed; the new one (which already owns the
/// listening sockets, so connections wait in the backlog rather than being refused) waits for
/// it, at most the shutdown grace period plus the old process's close window.
fn open_audit(config: &Config, upgrade: bool) -> Result<crate::audit::Audit, ServerError> {
    let deadline = std::time::Instant::now()
        + config.server.shutdown_grace
        + std::time::Duration::from_secs(7);
    let mut waited = false;
    loop {
        match crate::audit::Audit::new(&config.audit) {
            Ok(a) => {
                if waited {
                    tracing::info!("Upgrade: took over the audit spool from the old process.");
                }
                return Ok(a);
            }
            Err(crate::audit::AuditError::Spool { ref source, .. })
                if upgrade
                    && source.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                if !waited {
                    tracing::info!(
                        "Upgrade: waiting for the old process to release the audit spool."
                    );
                    waited = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(ServerError::Audit(e)),
        }
    }
}
