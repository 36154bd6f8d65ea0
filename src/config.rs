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
    /// Read buffer of each client connection (every open connection holds one, idle or not).
    /// Pingora's own default is 64 KiB. Default `"4KiB"`: requests are small, and 10 000 idle
    /// keepalive connections then hold 40 MiB of buffers instead of 640 MiB.
    pub read_buffer: crate::units::ByteSize,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            threads: 2,
            shutdown_grace: "30s".into(),
            read_buffer: crate::units::ByteSize::Text("4KiB".into()),
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
    /// Path canonicalisation.
    pub paths: crate::canonical::PathsConfig,
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

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file = parse_file(text)?;
        let mut problems = Problems::default();
        for key in file.1 {
            problems.push(key, "unknown key (check the spelling against config.toml)");
        }
        let config = Config::from_file(&file.0, text, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems.list))
        }
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
                Some(n) if (512..=1 << 20).contains(&n) => n as usize,
                Some(n) => {
                    p.push(
                        "server.read_buffer",
                        format!("{n} bytes is outside 512 B – 1 MiB (e.g. \"4KiB\")"),
                    );
                    4096
                }
                None => 4096,
            },
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
        let upstream = crate::upstream::UpstreamConfig::from_file(&file.upstream, p);
        let identity = crate::identity::IdentityConfig::from_file(&file.identity, p);
        let cache = crate::cache::CacheConfig::from_file(&file.cache, p);
        let compression = crate::compress::CompressionConfig::from_file(&file.compression, p);
        let rate_limit = crate::limit::RateLimitConfig::from_file(&file.rate_limit, p);
        if identity.is_header_mode() && rate_limit.trusted_proxies.is_empty() {
            p.push(
                "identity.mode",
                "mode = \"header\" believes identity headers only from the authenticating proxy: \
                 list its addresses in rate_limit.trusted_proxies",
            );
        }
        let audit = crate::audit::AuditConfig::from_file(&file.audit, p);
        let database = crate::db::DatabaseConfig::from_file(&file.database, p);
        let paths = crate::canonical::PathsConfig::from_file(&file.paths, p);
        let routes = crate::routes::Router::from_file(&file.routes, &rate_limit, p);
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
            paths,
            routes,
            hash: text_hash(text),
        }
    }
}

/// Parses TOML into the file layer, collecting the paths of unknown keys.
pub fn parse_file(text: &str) -> Result<(FileConfig, Vec<String>), ConfigError> {
    let de = toml::Deserializer::new(text);
    let mut unknown = Vec::new();
    let file: FileConfig = serde_ignored::deserialize(de, |path| {
        unknown.push(index_path(&path.to_string()));
    })
    .map_err(|e| ConfigError::Syntax(format!("config is not valid: {e}")))?;
    Ok((file, unknown))
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
