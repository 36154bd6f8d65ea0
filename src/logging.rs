//! Structured logs through `tracing`: text or JSON lines on stderr, level from config or
//! `RUST_LOG`.
//!
//! - `log.format = "json"`: one JSON object per line (`timestamp`, `level`, `target`, the event's
//!   fields flattened, `message`). Pingora's own `log` records are bridged into the same output.
//! - `RUST_LOG`, when set to a valid directive, overrides `log.level` (at start and on reload).
//! - `log.level` is reloadable; the format is fixed at start (the subscriber is global).
//! - ANSI colours only when stderr is a terminal, so journald and files get plain text.
//! - Nothing here logs request or config contents; modules log ids, names and counts, never
//!   credentials (tokens, secrets, passwords are never fields of a log line).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the level filter of the installed subscriber.
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// `RUST_LOG` when it is set to a valid directive.
fn env_filter() -> Option<EnvFilter> {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(cfg: &LogConfig) {
    let filter = env_filter()
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match cfg.format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }
    };
    if result.is_err() {
        // Already installed (tests, demo running twice): keep the first.
    }
}

/// What a reload did to the log level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The new `log.level` is in force.
    Applied,
    /// `RUST_LOG` is set and keeps overriding `log.level`.
    OverriddenByRustLog,
    /// No reloadable subscriber is installed (not running `omsgate run`).
    NotInstalled,
    /// The filter could not be replaced.
    Failed(String),
}

/// Applies a reloaded `log.level` (already validated) unless `RUST_LOG` overrides it.
pub fn set_level(level: &str) -> LevelChange {
    if env_filter().is_some() {
        return LevelChange::OverriddenByRustLog;
    }
    let Some(set) = SET_FILTER.get() else {
        return LevelChange::NotInstalled;
    };
    match EnvFilter::try_new(level) {
        Ok(filter) => match set(filter) {
            Ok(()) => LevelChange::Applied,
            Err(e) => LevelChange::Failed(e),
        },
        Err(e) => LevelChange::Failed(e.to_string()),
    }
}
