//! API-key identity for service clients (`[identity.api_keys]`): a file maps the SHA-256 of each
//! key to a tenant and an optional subject. The keys themselves are never stored, configured or
//! logged; a request's key is hashed and looked up.
//!
//! File format, one key a line, `#` starts a comment:
//!
//! ```text
//! # sha256 of the key (64 hex digits)                               tenant   subject (optional)
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  acme     billing-sync
//! ```
//!
//! (`printf %s "$KEY" | sha256sum` gives the hash.) The file is read at config load (a bad file
//! is a config problem), on every reload, and whenever its modification time or size changes
//! (checked every second); a changed file that does not parse keeps the previous keys (counted in
//! `omsgate_identity_api_keys_reloads_total{outcome="invalid"}`, logged without its content).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::Identity;
use crate::metrics;

type Stamp = Option<(SystemTime, u64)>;

/// The API keys in force.
pub struct ApiKeys {
    path: PathBuf,
    /// The request header carrying the key.
    pub header: http::HeaderName,
    keys: ArcSwap<HashMap<[u8; 32], Identity>>,
    stamp: parking_lot::Mutex<Stamp>,
    started: AtomicBool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "API keys from {} ({})", self.path.display(), self.header)
    }
}

impl ApiKeys {
    /// Reads `path`; an unreadable or invalid file is an error for the config.
    pub fn load(path: &Path, header: http::HeaderName) -> Result<ApiKeys, String> {
        let stamp = stamp(path);
        let keys = read(path)?;
        Ok(ApiKeys {
            path: path.to_path_buf(),
            header,
            keys: ArcSwap::from_pointee(keys),
            stamp: parking_lot::Mutex::new(stamp),
            started: AtomicBool::new(false),
        })
    }

    /// The identity of the key `presented`, if it is one of the file's.
    pub fn identify(&self, presented: &[u8]) -> Option<Identity> {
        let digest = ring::digest::digest(&ring::digest::SHA256, presented);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.keys.load().get(&hash).cloned()
    }

    /// Starts watching the file (once); the watcher ends when these keys are dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("omsgate-api-keys".into())
            .spawn(move || watch(weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the API key file watcher; the file is read again on reload only");
        }
    }

    fn check(&self) {
        let now = stamp(&self.path);
        let mut last = self.stamp.lock();
        if now == *last {
            return;
        }
        *last = now;
        match read(&self.path) {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Arc::new(keys));
                metrics::API_KEYS_RELOADS.with_label_values(&["ok"]).inc();
                tracing::info!(path = %self.path.display(), keys = count, "API key file reloaded.");
            }
            Err(e) => {
                metrics::API_KEYS_RELOADS
                    .with_label_values(&["invalid"])
                    .inc();
                tracing::warn!(error = %e, "API key file not reloaded; the previous keys stay in force.");
            }
        }
    }
}

fn watch(weak: Weak<ApiKeys>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(keys) = weak.upgrade() else {
            return;
        };
        keys.check();
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Parses the file. Errors name the line but never echo it (it could hold a key pasted in clear).
fn read(path: &Path) -> Result<HashMap<[u8; 32], Identity>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("{} line {}: {why}", path.display(), i + 1);
        let mut fields = line.split_whitespace();
        let hash = fields.next().unwrap_or_default();
        let tenant = fields
            .next()
            .ok_or_else(|| bad("expected `<sha256 hex> <tenant> [<subject>]`"))?;
        let subject = fields.next();
        if fields.next().is_some() {
            return Err(bad("more than three fields"));
        }
        let hash = parse_hash(hash).ok_or_else(|| {
            bad("the first field must be the key's SHA-256 as 64 hex digits (not the key)")
        })?;
        let identity = Identity {
            tenant: Some(tenant.to_string()),
            subject: subject.map(str::to_string),
        };
        if keys.insert(hash, identity).is_some() {
            return Err(bad("the same key hash is listed twice"));
        }
    }
    Ok(keys)
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hex SHA-256 of `key`, as the file lists it.
pub fn hash_hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_looked_up_by_hash_and_bad_lines_are_refused_without_echo() {
        let dir = std::env::temp_dir().join(format!("omsgate-apikeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        let text = format!(
            "# service clients\n{}  acme  sync # the nightly job\n{} globex\n",
            hash_hex("k-acme"),
            hash_hex("k-globex")
        );
        std::fs::write(&path, text).unwrap();
        let keys = ApiKeys::load(&path, http::HeaderName::from_static("x-api-key")).unwrap();
        let id = keys.identify(b"k-acme").unwrap();
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.subject.as_deref(), Some("sync"));
        assert_eq!(keys.identify(b"k-globex").unwrap().subject, None);
        assert!(keys.identify(b"k-other").is_none());

        std::fs::write(&path, "sk_live_secret acme\n").unwrap();
        let e = ApiKeys::load(&path, http::HeaderName::from_static("x-api-key")).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("sk_live_secret"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
