//! Configuration: the file layer (`config.toml`, serde structs) and its conversion into the typed
//! runtime [`Config`].
//!
//! Every concern owns its section: the file struct (`*File`, serde, a `///` on every field with
//! its unit and default) and the typed value built from it with `from_file(&file, &mut Problems)`.
//! This module only assembles the sections, collects every problem with its key, and reports
//! them all at once ([`ConfigError::Invalid`], exit code 64).
//!
//! Unknown keys are collected with `serde_ignored` rather than `deny_unknown_fields`, so that
//! every unknown key is reported with its full path together with the other problems instead of
//! stopping at the first one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::parse_duration;

// === Problems ===

/// One configuration problem: the key it concerns and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `upstream.connect_timeout` or `route[2].path`.
    pub key: String,
    /// What is wrong and, where possible, what to write instead.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Collects configuration problems so that all of them are reported together.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems recorded so far.
    pub fn list(&self) -> &[Problem] {
        &self.list
    }

    /// Parses a duration string, recording a problem under `key` when it is not one.
    pub fn duration(&mut self, key: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(key, e);
                None
            }
        }
    }

    /// Parses a duration like [`Problems::duration`], falling back to `default` on error.
    pub fn duration_or(&mut self, key: &str, text: &str, default: Duration) -> Duration {
        self.duration(key, text).unwrap_or(default)
    }

    /// A limit that `"0"` turns off: the duration, `None` for zero, `default` on error.
    pub fn limit_or(&mut self, key: &str, text: &str, default: Duration) -> Option<Duration> {
        Some(self.duration_or(key, text, default)).filter(|d| !d.is_zero())
    }

    /// Parses a byte size, recording a problem under `key` when it is not one.
    pub fn bytes(&mut self, key: &str, size: &crate::units::ByteSize) -> Option<u64> {
        match size.bytes() {
            Ok(n) => Some(n),
            Err(e) => {
                self.push(key, e);
                None
            }
        }
    }

    /// Parses a socket address, recording a problem under `key` when it is not one.
    pub fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    key,
                    format!("`{text}` is not an IP address with a port, e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// The file parsed but some values are wrong; all of them are listed.
    #[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

// === File layer ===

/// The whole `config.toml`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct FileConfig {
    /// The public listener.
    #[serde(default)]
    pub server: ServerFile,
    /// The admin listener (metrics, health, purge).
    #[serde(default)]
    pub admin: AdminFile,
    /// The legacy OMS instances.
    #[serde(default)]
    pub upstream: crate::upstream::UpstreamFile,
    /// Where the tenant and subject of a request come from.
    #[serde(default)]
    pub identity: crate::identity::IdentityFile,
    /// Logging.
    #[serde(default)]
    pub log: LogFile,
    /// Response cache.
    #[serde(default)]
    pub cache: crate::cache::CacheFile,
    /// Response compression.
    #[serde(default)]
    pub compression: crate::compress::CompressionFile,
    /// Rate limiting.
    #[serde(default)]
    pub rate_limit: crate::limit::RateLimitFile,
    /// Audit records.
    #[serde(default)]
    pub audit: crate::audit::AuditFile,
    /// The OMS database (migrations, pooled query paths).
    #[serde(default)]
    pub database: crate::db::DatabaseFile,
    /// How request paths are canonicalised before routing.
    #[serde(default)]
    pub paths: crate::canonical::PathsFile,
    /// Trust shared by every outgoing TLS client.
    #[serde(default)]
    pub tls: crate::tls::TlsFile,
    /// Pooled queries (`[queries.NAME]`), bound to routes with `query = "NAME"`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub queries: std::collections::BTreeMap<String, crate::db::queries::QueryFile>,
    /// Routes, matched in order; unmatched requests belong to the route `other`.
    #[serde(default, rename = "route")]
    pub routes: Vec<crate::routes::RouteFile>,
}

/// `[server]`: the public listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerFile {
    /// Address of the public listener. Default `"0.0.0.0:8080"`.
    pub listen: String,
    /// Worker threads of the proxy service; 0 means one per core. Default 2.
    pub threads: usize,
    /// How long in-flight requests may take to finish after SIGTERM before the process exits.
    /// Default `"30s"`.
    pub shutdown_grace: String,
    /// Read buffer of each client connection, in front of the socket (every open connection
    /// holds one, idle or not); 0 for none. Pingora's own default is 64 KiB. Default 0: the
    /// HTTP session reads request headers and bodies into its own buffers, which bypass this
    /// one anyway, so it only costs memory (4 KiB × 10 000 idle connections = 40 MiB).
    pub read_buffer: crate::units::ByteSize,
    /// How long an HTTP/1.x client connection is kept open, idle, for its next request after a
    /// response; whole seconds. `"0"` closes every connection after its response. Pingora's own
    /// default keeps it forever. (A new connection's first request is bounded by
    /// `header_timeout`.) Reloadable. Default `"60s"`.
    pub keepalive_timeout: String,
    /// The longest an HTTP/1.x client may take to send a whole request header: for a new
    /// connection counted from its accept (silence included), for later requests from their
    /// first byte. A connection past it is closed, so a client trickling a header byte by byte
    /// ("slowloris") cannot hold it. A TLS handshake must finish within it too (before the
    /// header's deadline starts). `"0"` sets no limit (Pingora's own behaviour: only each read
    /// is limited, a TLS handshake to 60 s). Restart only. Default `"10s"`.
    pub header_timeout: String,
    /// The longest a client may take to send a request body. A body with a `Content-Length` up
    /// to 64 KiB, or a chunked one's first 64 KiB (the whole body when it is no longer), is read
    /// within it before the request takes an OMS slot (a trickled body no longer holds one of
    /// the OMS's few `max_in_flight` slots); past it the client gets 408. A larger
    /// `Content-Length` body, the rest of a long chunked one and `Expect: 100-continue` bodies
    /// stream to the OMS, each read limited to it. `"0"`: no limit beyond Pingora's 60 s per
    /// read, bodies stream. Reloadable. Default `"30s"`.
    pub body_timeout: String,
    /// Cleartext HTTP/2 with prior knowledge on a plaintext listener, next to HTTP/1.1 (told
    /// apart by the connection preface). Default false.
    pub h2c: bool,
    /// TLS on the public listener (`cert` and `key` set), with optional client certificates.
    pub tls: crate::tls::ListenerTlsFile,
    /// More public listeners, each with its own address and TLS (e.g. `:8443` with TLS beside a
    /// plaintext `listen` for a load balancer's checks): `[[server.listeners]]`. They serve the
    /// same routes; `h2c`, `threads` and `read_buffer` apply to all. Default none.
    pub listeners: Vec<ListenerFile>,
}

/// `[[server.listeners]]`: one more public listener.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenerFile {
    /// Address, e.g. `"0.0.0.0:8443"`. Restart only. Required.
    pub listen: String,
    /// TLS on this listener, as `[server.tls]`. Default none (plaintext).
    pub tls: crate::tls::ListenerTlsFile,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            threads: 2,
            shutdown_grace: "30s".into(),
            read_buffer: crate::units::ByteSize::Bytes(0),
            keepalive_timeout: "60s".into(),
            header_timeout: "10s".into(),
            body_timeout: "30s".into(),
            h2c: false,
            tls: crate::tls::ListenerTlsFile::default(),
            listeners: Vec::new(),
        }
    }
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminFile {
    /// Address of the admin listener serving `/metrics`, `/health`, `/ready` and `/purge`.
    /// Never the public listener. Default `"127.0.0.1:9091"`.
    pub listen: String,
    /// Name of an environment variable holding a bearer token; when set, the mutating
    /// endpoints (`POST /purge`, `POST /reload`) require `Authorization: Bearer <token>`.
    /// The variable must then be set and non-empty. Default empty (no token).
    pub token_env: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
            token_env: String::new(),
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogFile {
    /// `"text"` or `"json"`. Default `"text"`.
    pub format: String,
    /// Level filter (`error`, `warn`, `info`, `debug`, `trace`, or a `tracing` directive);
    /// `RUST_LOG` overrides it. Default `"info"`.
    pub level: String,
    /// One access-log line per request. Default false (the audit records cover it).
    pub access_log: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            access_log: false,
        }
    }
}

// === Typed layer ===

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The public listener.
    pub server: ServerConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Upstream OMS instances.
    pub upstream: crate::upstream::UpstreamConfig,
    /// Identity source.
    pub identity: crate::identity::IdentityConfig,
    /// Logging.
    pub log: LogConfig,
    /// Response cache.
    pub cache: crate::cache::CacheConfig,
    /// Response compression.
    pub compression: crate::compress::CompressionConfig,
    /// Rate limiting.
    pub rate_limit: crate::limit::RateLimitConfig,
    /// Audit.
    pub audit: crate::audit::AuditConfig,
    /// Database.
    pub database: crate::db::DatabaseConfig,
    /// Pooled queries by name.
    pub queries: crate::db::queries::Queries,
    /// Path canonicalisation.
    pub paths: crate::canonical::PathsConfig,
    /// Trust of outgoing TLS clients.
    pub tls: crate::tls::TlsConfig,
    /// Compiled routes.
    pub routes: crate::routes::Router,
    /// A short hash of the file's text, shown as `omsgate_config_info{hash}`.
    pub hash: String,
}

/// Typed `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Worker threads (already resolved: never 0).
    pub threads: usize,
    /// Grace period for in-flight requests after SIGTERM.
    pub shutdown_grace: Duration,
    /// Read buffer per client connection, in bytes.
    pub read_buffer: usize,
    /// Idle time allowed between an HTTP/1.x connection's requests, in whole seconds; `None`
    /// closes connections after each response.
    pub keepalive_timeout: Option<u64>,
    /// The longest an HTTP/1.x request header may take to arrive; `None` for no limit.
    pub header_timeout: Option<Duration>,
    /// The longest a request body may take to arrive; `None` for no limit of the gateway's.
    pub body_timeout: Option<Duration>,
    /// Cleartext HTTP/2 (prior knowledge) on a plaintext listener.
    pub h2c: bool,
    /// TLS on the public listener; `None` for plaintext.
    pub tls: Option<crate::tls::ListenerTls>,
    /// `[[server.listeners]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
}

/// Typed `[[server.listeners]]` entry.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Address.
    pub listen: SocketAddr,
    /// TLS; `None` for plaintext.
    pub tls: Option<crate::tls::ListenerTls>,
}

/// Typed `[admin]`.
#[derive(Clone)]
pub struct AdminConfig {
    /// Admin listener address.
    pub listen: SocketAddr,
    /// Bearer token required by the mutating endpoints, read from `token_env`.
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Typed `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Level directive.
    pub level: String,
    /// Whether to write one access-log line per request.
    pub access_log: bool,
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text. Every problem is collected: values of the wrong type
    /// (reported with their key and left out, see [`parse_file_lenient`]), unknown keys, and
    /// everything the sections' validation finds in the rest.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (config, problems) = Config::parse_with_problems(text)?;
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// [`Config::parse`] that returns the config with every problem found (the config is only
    /// meaningful where no problem names it), for checks that add their own problems to the
    /// list (`check-config --database`).
    pub fn parse_with_problems(text: &str) -> Result<(Config, Vec<Problem>), ConfigError> {
        let parsed = parse_file_lenient(text)?;
        let mut problems = Problems::default();
        for key in &parsed.unknown {
            problems.push(
                key.clone(),
                "unknown key (check the spelling against config.toml)",
            );
        }
        let config = Config::from_file(&parsed.file, text, &mut problems);
        // The type problems name routes by their index in the text already; the others by
        // their index among the routes left.
        let mut list = parsed.problems.clone();
        list.extend(problems.list.into_iter().map(|p| Problem {
            key: parsed.original_key(&p.key),
            reason: p.reason,
        }));
        Ok((config, list))
    }

    /// Converts the file layer; problems are recorded, and the returned value is only
    /// meaningful when `problems` stays empty.
    pub fn from_file(file: &FileConfig, text: &str, p: &mut Problems) -> Config {
        let fallback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server = ServerConfig {
            listen: p
                .socket_addr("server.listen", &file.server.listen)
                .unwrap_or(fallback),
            threads: if file.server.threads == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                file.server.threads
            },
            shutdown_grace: p.duration_or(
                "server.shutdown_grace",
                &file.server.shutdown_grace,
                Duration::from_secs(30),
            ),
            read_buffer: match p.bytes("server.read_buffer", &file.server.read_buffer) {
                Some(n) if n == 0 || (512..=1 << 20).contains(&n) => n as usize,
                Some(n) => {
                    p.push(
                        "server.read_buffer",
                        format!("{n} bytes is outside 512 B – 1 MiB; 0 for none (e.g. \"4KiB\")"),
                    );
                    0
                }
                None => 0,
            },
            keepalive_timeout: match p
                .duration("server.keepalive_timeout", &file.server.keepalive_timeout)
            {
                Some(d) if d.is_zero() => None,
                Some(d) if d.subsec_nanos() == 0 => Some(d.as_secs()),
                Some(d) => {
                    p.push(
                        "server.keepalive_timeout",
                        format!("{d:?} is not a whole number of seconds (e.g. \"60s\"; \"0\" closes connections after each response)"),
                    );
                    Some(60)
                }
                None => Some(60),
            },
            header_timeout: p.limit_or(
                "server.header_timeout",
                &file.server.header_timeout,
                Duration::from_secs(10),
            ),
            body_timeout: p.limit_or(
                "server.body_timeout",
                &file.server.body_timeout,
                Duration::from_secs(30),
            ),
            h2c: file.server.h2c,
            tls: crate::tls::ListenerTls::from_file(&file.server.tls, p),
            listeners: file
                .server
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| ListenerConfig {
                    listen: p
                        .socket_addr(&format!("server.listeners[{i}].listen"), &l.listen)
                        .unwrap_or(fallback),
                    tls: crate::tls::ListenerTls::from_file_at(
                        &l.tls,
                        &format!("server.listeners[{i}].tls"),
                        p,
                    ),
                })
                .collect(),
        };
        let token = if file.admin.token_env.is_empty() {
            None
        } else {
            match std::env::var(&file.admin.token_env) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                _ => {
                    p.push(
                        "admin.token_env",
                        format!(
                            "the environment variable `{}` is unset or empty; set it to the \
                             admin token, or remove token_env",
                            file.admin.token_env
                        ),
                    );
                    None
                }
            }
        };
        let admin = AdminConfig {
            listen: p
                .socket_addr("admin.listen", &file.admin.listen)
                .unwrap_or(fallback),
            token,
        };
        if server.listen == admin.listen && server.listen.port() != 0 {
            p.push("admin.listen", "must differ from server.listen: admin endpoints are never served on the public listener");
        }
        for (i, l) in server.listeners.iter().enumerate() {
            let taken = if l.listen == server.listen {
                Some("server.listen".to_string())
            } else if l.listen == admin.listen {
                Some("admin.listen".to_string())
            } else {
                server.listeners[..i]
                    .iter()
                    .position(|o| o.listen == l.listen)
                    .map(|j| format!("server.listeners[{j}].listen"))
            };
            if let Some(other) = taken.filter(|_| l.listen.port() != 0) {
                p.push(
                    format!("server.listeners[{i}].listen"),
                    format!("{} is already {other}", l.listen),
                );
            }
        }
        let log = LogConfig {
            format: match file.log.format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    p.push(
                        "log.format",
                        format!("`{other}` is not one of \"text\", \"json\""),
                    );
                    LogFormat::Text
                }
            },
            level: file.log.level.clone(),
            access_log: file.log.access_log,
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log.level) {
            p.push(
                "log.level",
                format!("`{}` is not a level or directive: {e}", file.log.level),
            );
        }
        let mut upstream = crate::upstream::UpstreamConfig::from_file(&file.upstream, p);
        let tls = crate::tls::TlsConfig::from_file(&file.tls, p);
        let identity = crate::identity::IdentityConfig::from_file(&file.identity, &tls, p);
        let mut cache = crate::cache::CacheConfig::from_file(&file.cache, p);
        let compression = crate::compress::CompressionConfig::from_file(&file.compression, p);
        let mut rate_limit = crate::limit::RateLimitConfig::from_file(&file.rate_limit, p);
        if identity.is_header_mode() && rate_limit.trusted_proxies.is_empty() {
            p.push(
                "identity.mode",
                "mode = \"header\" believes identity headers only from the authenticating proxy: \
                 list its addresses in rate_limit.trusted_proxies",
            );
        }
        let mut audit = crate::audit::AuditConfig::from_file(&file.audit, p);
        let mut database = crate::db::DatabaseConfig::from_file(&file.database, p);
        let paths = crate::canonical::PathsConfig::from_file(&file.paths, p);
        upstream.trust = tls.clone();
        // Each Redis link keeps its own client certificate (`redis.cert`/`key`).
        cache.trust = crate::tls::TlsConfig {
            redis_client: cache.trust.redis_client.take(),
            ..tls.clone()
        };
        rate_limit.trust = crate::tls::TlsConfig {
            redis_client: rate_limit.trust.redis_client.take(),
            ..tls.clone()
        };
        database.trust_roots = tls.extra_roots.clone();
        audit.tls_ca_file = tls.ca_file.clone();
        audit.sink.trust_roots = tls.extra_roots.clone();
        let routes = crate::routes::Router::from_file(&file.routes, &rate_limit, p);
        let queries = crate::db::queries::Queries::from_file(&file.queries, p);
        for (i, r) in file.routes.iter().enumerate() {
            let Some(q) = &r.query else { continue };
            let pattern = crate::routes::PathPattern::parse(&r.path).ok();
            let methods: Vec<http::Method> = r
                .methods
                .iter()
                .filter_map(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect();
            // A query with problems of its own is reported under its key, not again here.
            if !file.queries.contains_key(q) || queries.get(q).is_some() {
                if let Err(e) =
                    crate::db::queries::check_binding(q, &queries, pattern.as_ref(), &methods)
                {
                    p.push(format!("route[{i}].query"), e);
                }
            }
        }
        if database.url.is_none() {
            for (i, r) in file.routes.iter().enumerate() {
                if r.query.is_some() {
                    p.push(
                        format!("route[{i}].query"),
                        format!(
                            "needs a database: set `[database] url` or the environment variable \
                             named by `database.url_env` ({})",
                            database.url_source
                        ),
                    );
                }
            }
        }
        Config {
            server,
            admin,
            upstream,
            identity,
            log,
            cache,
            compression,
            rate_limit,
            audit,
            database,
            queries,
            paths,
            tls,
            routes,
            hash: text_hash(text),
        }
    }
}

/// Parses TOML into the file layer, collecting the paths of unknown keys. Stops at the first
/// error; [`parse_file_lenient`] goes on past values of the wrong type.
pub fn parse_file(text: &str) -> Result<(FileConfig, Vec<String>), ConfigError> {
    deserialize_file(text).map_err(|e| ConfigError::Syntax(format!("config is not valid: {e}")))
}

/// The file layer of a file whose values of the wrong type were left out.
#[derive(Debug)]
pub struct LenientFile {
    /// The file layer, with a default wherever a value of the wrong type was left out.
    pub file: FileConfig,
    /// Paths of the unknown keys.
    pub unknown: Vec<String>,
    /// One problem per value of the wrong type (or table missing a required key), by key.
    pub problems: Vec<Problem>,
    /// For each `[[route]]` left in `file`, its index in the text (a route missing a required
    /// key is left out whole, and the routes after it move up).
    route_index: Vec<usize>,
}

impl LenientFile {
    /// `key` with a `route[i]` of `file` renamed to the route's index in the text.
    pub fn original_key(&self, key: &str) -> String {
        let Some(rest) = key.strip_prefix("route[") else {
            return key.to_string();
        };
        let Some((index, tail)) = rest.split_once(']') else {
            return key.to_string();
        };
        match index
            .parse::<usize>()
            .ok()
            .and_then(|i| self.route_index.get(i))
        {
            Some(original) => format!("route[{original}]{tail}"),
            None => key.to_string(),
        }
    }
}

/// Parses TOML into the file layer like [`parse_file`], but a value of the wrong type
/// (`threads = -1`) does not end the parse: it is recorded as a problem with its key path, left
/// out so that its default applies, and the parse goes on, so the other problems of the file are
/// still found. Only a TOML syntax error (the file does not parse at all) is returned as an
/// error.
///
/// serde stops at the first error and the `toml` crate gives its position, not its key: the
/// file is rendered again with one key per line ([`lenient::render`]), so the line of the error
/// names the key; that key is removed and the parse repeated.
pub fn parse_file_lenient(text: &str) -> Result<LenientFile, ConfigError> {
    let syntax = |e: &toml::de::Error| ConfigError::Syntax(format!("config is not valid: {e}"));
    if let Ok((file, unknown)) = deserialize_file(text) {
        return Ok(LenientFile {
            file,
            unknown,
            problems: Vec::new(),
            route_index: Vec::new(),
        });
    }
    let mut table: toml::Table = text.parse().map_err(|e| syntax(&e))?;
    let routes = table
        .get("route")
        .and_then(|r| r.as_array())
        .map_or(0, |a| a.len());
    let mut route_index: Vec<usize> = (0..routes).collect();
    let mut problems = Vec::new();
    // Each round removes one value from `table`, so this ends.
    loop {
        let (doc, lines) = lenient::render(&table);
        let err = match deserialize_file(&doc) {
            Ok((file, unknown)) => {
                return Ok(LenientFile {
                    file,
                    unknown,
                    problems,
                    route_index,
                })
            }
            Err(e) => e,
        };
        let line = err
            .span()
            .map(|s| doc[..s.start.min(doc.len())].matches('\n').count());
        let Some(Some((mut path, is_table))) = line.and_then(|l| lines.get(l).cloned()) else {
            return Err(syntax(&err));
        };
        // A table missing a required key is reported (and left out) as a whole. The position
        // of such an error can be past the table: in an array of tables, the element is the
        // first one without the key.
        if let Some(field) = missing_field(err.message()) {
            if !is_table {
                path.pop();
            }
            if let [lenient::Seg::Key(top), lenient::Seg::Index(i)] = path.as_mut_slice() {
                let elements = table.get(top.as_str()).and_then(|v| v.as_array());
                if let Some(first) = elements.and_then(|a| {
                    a.iter()
                        .position(|e| e.as_table().is_some_and(|t| !t.contains_key(field)))
                }) {
                    *i = first;
                }
            }
        }
        if path.is_empty() || !lenient::remove(&mut table, &path) {
            return Err(syntax(&err));
        }
        let mut shown = path.clone();
        if let [lenient::Seg::Key(top), lenient::Seg::Index(i), ..] = shown.as_mut_slice() {
            if top == "route" && *i < route_index.len() {
                let original = route_index[*i];
                if path.len() == 2 {
                    route_index.remove(*i);
                }
                *i = original;
            }
        }
        problems.push(Problem {
            key: lenient::path_string(&shown),
            reason: err.message().to_string(),
        });
    }
}

/// `name` of serde's "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Deserializes the file layer, collecting the paths of unknown keys.
fn deserialize_file(text: &str) -> Result<(FileConfig, Vec<String>), toml::de::Error> {
    let mut unknown = Vec::new();
    let file = serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
        unknown.push(index_path(&path.to_string()));
    })?;
    Ok((file, unknown))
}

/// Rendering a parsed TOML table with one key per line, so that an error position names a key.
mod lenient {
    /// One step of a key path.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Seg {
        /// A table key.
        Key(String),
        /// An element of an array of tables.
        Index(usize),
    }

    /// `route[2].cache.ttl`.
    pub fn path_string(path: &[Seg]) -> String {
        let mut out = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// The table as TOML with every leaf on a line of its own (dotted keys; `[[name]]` for a
    /// top-level array of tables), and the key path of each line.
    pub fn render(table: &toml::Table) -> (String, Vec<Line>) {
        let mut out = Out::default();
        for (k, v) in table {
            if table_array(v).is_none() {
                out.leaves(&[Seg::Key(k.clone())], &[k.as_str()], v);
            }
        }
        for (k, v) in table {
            if let Some(elements) = table_array(v) {
                for (i, element) in elements.iter().enumerate() {
                    let base = vec![Seg::Key(k.clone()), Seg::Index(i)];
                    out.line(format!("[[{}]]", quote(k)), Some((base.clone(), true)));
                    for (k2, v2) in element.iter() {
                        let mut path = base.clone();
                        path.push(Seg::Key(k2.clone()));
                        out.leaves(&path, &[k2.as_str()], v2);
                    }
                }
            }
        }
        (out.text, out.lines)
    }

    /// The key path of a rendered line, and whether the line defines a table (a `[[name]]`
    /// header or an empty inline table).
    pub type Line = Option<(Vec<Seg>, bool)>;

    #[derive(Default)]
    struct Out {
        text: String,
        lines: Vec<Line>,
    }

    impl Out {
        fn line(&mut self, line: String, path: Line) {
            self.text.push_str(&line);
            self.text.push('\n');
            self.lines.push(path);
        }

        /// `a.b.c = value` for every leaf under `value`, `keys` being the dotted key so far.
        fn leaves(&mut self, path: &[Seg], keys: &[&str], value: &toml::Value) {
            match value {
                toml::Value::Table(t) if !t.is_empty() => {
                    for (k, v) in t {
                        let mut p = path.to_vec();
                        p.push(Seg::Key(k.clone()));
                        let mut ks = keys.to_vec();
                        ks.push(k);
                        self.leaves(&p, &ks, v);
                    }
                }
                _ => {
                    let key: Vec<String> = keys.iter().map(|k| quote(k)).collect();
                    let is_table = value.is_table();
                    self.line(
                        format!("{} = {value}", key.join(".")),
                        Some((path.to_vec(), is_table)),
                    );
                }
            }
        }
    }

    fn table_array(value: &toml::Value) -> Option<Vec<&toml::Table>> {
        let toml::Value::Array(a) = value else {
            return None;
        };
        let tables: Vec<&toml::Table> = a.iter().filter_map(|v| v.as_table()).collect();
        (!a.is_empty() && tables.len() == a.len()).then_some(tables)
    }

    fn quote(key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            key.to_string()
        } else {
            toml::Value::String(key.to_string()).to_string()
        }
    }

    /// Removes the value at `path`; false when there is none.
    pub fn remove(table: &mut toml::Table, path: &[Seg]) -> bool {
        match path {
            [Seg::Key(k)] => table.remove(k).is_some(),
            [Seg::Key(k), rest @ ..] => table.get_mut(k).is_some_and(|v| remove_in(v, rest)),
            _ => false,
        }
    }

    fn remove_in(value: &mut toml::Value, path: &[Seg]) -> bool {
        match (value, path) {
            (toml::Value::Table(t), _) => remove(t, path),
            (toml::Value::Array(a), [Seg::Index(i)]) if *i < a.len() => {
                a.remove(*i);
                true
            }
            (toml::Value::Array(a), [Seg::Index(i), rest @ ..]) => {
                a.get_mut(*i).is_some_and(|v| remove_in(v, rest))
            }
            _ => false,
        }
    }
}

/// Turns serde_ignored's `route.0.foo` into `route[0].foo`.
fn index_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    // serde_ignored writes `?` for the inside of an `Option` (`route.0.cache.?.ttl`).
    for (i, part) in path.split('.').filter(|p| *p != "?").enumerate() {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn text_hash(text: &str) -> String {
    // FNV-1a: stable across runs and platforms, enough to tell two config versions apart.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Named values in config that are looked up by key (policies, tables of options).
pub type NamedTable<T> = BTreeMap<String, T>;
