//! `omsgate print-config [-c PATH]`: the effective configuration — every key, defaults filled
//! in — with secrets masked, as TOML.
//!
//! The file is validated first (every problem listed, exit 64, as `check-config`). The output is
//! the file layer ([`FileConfig`]) after serde has filled the defaults, so it is itself a valid
//! `config.toml` (apart from the masked secrets) and shows exactly what the gateway runs with.
//!
//! Secrets are found by shape rather than by a list of known keys, so sections added later are
//! covered too: a key whose name says it holds a secret (`jwt_secret`, `password`,
//! `sasl.password`, `token`, ...; not `*_env`, `*_file`, `*_path`, `*_header`, which hold names)
//! is replaced by [`MASK`], and so is the password of any URL (`postgres://u:PASS@h/db`,
//! `redis://:PASS@h`) or `password=...` in a key-value connection string.

use std::path::PathBuf;

use crate::config::{Config, FileConfig};

/// What a masked secret is replaced with.
pub const MASK: &str = "********";

/// Options of `print-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(short, long, default_value = "config.toml")]
    pub config: PathBuf,
}

/// Validates the file and prints its effective form; returns the exit code.
pub fn main(args: Args) -> i32 {
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read config file {}: {e}", args.config.display());
            return super::EXIT_CONFIG;
        }
    };
    let config = match Config::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return super::EXIT_CONFIG;
        }
    };
    let mut file = match crate::config::parse_file(&text) {
        Ok((file, _)) => file,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return super::EXIT_CONFIG;
        }
    };
    let absent = fill_effective(&mut file, &config);
    match effective_toml(&file) {
        Ok(out) => {
            println!(
                "# Effective configuration of {} (hash {}): defaults filled in, secrets masked.",
                args.config.display(),
                config.hash
            );
            print!("{out}");
            if !absent.is_empty() {
                println!();
                println!("# Not set, which is their effective value:");
                for line in absent {
                    println!("#   {line}");
                }
            }
            0
        }
        Err(e) => {
            eprintln!("cannot render the effective configuration: {e}");
            1
        }
    }
}

/// Fills in the optional keys whose effective value the typed `config` knows, so that the output
/// shows every key the gateway runs with: `[compression] store_level`, and per route
/// `compression` (the route's switch, else `[compression] enabled`), `cache.statuses` (else
/// `[cache] statuses`) and `audit` (the per-route defaults). Returns the optional keys that stay
/// absent because absence is their effective value (`route[i].query`: always the OMS,
/// `upstream.keepalive_timeout`: not declared), one line each.
pub fn fill_effective(file: &mut FileConfig, config: &Config) -> Vec<String> {
    let mut absent = Vec::new();
    file.compression.store_level = config.compression.store_level;
    if file.compression.store_level.is_none() {
        absent.push(
            "compression.store_level: cached entries are stored as the origin sent them \
             (gzip is not in compression.algorithms)"
                .to_string(),
        );
    }
    if file.upstream.keepalive_timeout.is_none() {
        absent.push(
            "upstream.keepalive_timeout: not declared (idle_timeout is not compared with it)"
                .to_string(),
        );
    }
    if file.cache.redis.is_none() {
        absent.push("cache.redis: none (cache.redis_url, if set, is one standalone server)".into());
    }
    if file.rate_limit.redis.is_none() {
        absent.push(
            "rate_limit.redis: none (rate_limit.redis_url, if set, is one standalone server)"
                .into(),
        );
    }
    for (i, route) in file.routes.iter_mut().enumerate() {
        route.compression = Some(route.compression.unwrap_or(config.compression.enabled));
        route.audit.get_or_insert_with(Default::default);
        match &mut route.cache {
            Some(cache) => {
                cache
                    .statuses
                    .get_or_insert_with(|| config.cache.statuses.clone());
                if cache.resource.is_none() {
                    absent.push(format!("route[{i}].cache.resource: none"));
                }
            }
            None => absent.push(format!("route[{i}].cache: not cached")),
        }
        if route.query.is_none() {
            absent.push(format!("route[{i}].query: always the OMS"));
        }
    }
    absent
}

/// The file layer as TOML with every secret masked.
pub fn effective_toml(file: &FileConfig) -> Result<String, toml::ser::Error> {
    let mut value = toml::Value::try_from(file)?;
    mask_secrets(&mut value);
    toml::to_string_pretty(&value)
}

/// Masks secrets in place, anywhere in `value` (see the module docs for what counts).
pub fn mask_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) {
                    mask_all(v);
                } else {
                    mask_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        toml::Value::String(s) => {
            if let Some(masked) = mask_in_text(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

fn mask_all(value: &mut toml::Value) {
    match value {
        toml::Value::String(s) if s.is_empty() => {}
        toml::Value::String(s) => *s = MASK.to_string(),
        toml::Value::Array(items) => items.iter_mut().for_each(mask_all),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| mask_all(v)),
        _ => {}
    }
}

/// Whether a key's name says its value is a secret (rather than the name of one).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let names_something = [
        "_env", "_file", "_path", "_header", "_headers", "_fields", "_claim",
    ]
    .iter()
    .any(|s| k.ends_with(s));
    // `[identity.api_keys]` names the file of key hashes; its own keys are checked one by one.
    if names_something || k == "api_keys" {
        return false;
    }
    [
        "secret",
        "password",
        "passwd",
        "token",
        "credential",
        "private_key",
        "api_key",
    ]
    .iter()
    .any(|s| k.contains(s))
        || k == "sasl.oauthbearer.config"
}

/// Masks the password of a URL (`scheme://user:PASS@host`) or of `password=...` in a key-value
/// connection string; `None` when there is nothing to mask.
pub fn mask_in_text(text: &str) -> Option<String> {
    if let Some(scheme_end) = text.find("://") {
        let rest = &text[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                if colon + 1 < userinfo.len() {
                    let start = scheme_end + 3 + colon + 1;
                    let end = scheme_end + 3 + at;
                    return Some(format!("{}{MASK}{}", &text[..start], &text[end..]));
                }
            }
        }
        return None;
    }
    // libpq key-value form: `host=db user=oms password=s3cret dbname=oms`.
    let mut changed = false;
    let words: Vec<String> = text
        .split(' ')
        .map(|w| match w.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case("password") && !v.is_empty() => {
                changed = true;
                format!("{k}={MASK}")
            }
            _ => w.to_string(),
        })
        .collect();
    changed.then(|| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_passwords_only() {
        assert_eq!(
            mask_in_text("postgres://oms:s3cret@db:5432/oms?sslmode=disable").as_deref(),
            Some("postgres://oms:********@db:5432/oms?sslmode=disable")
        );
        assert_eq!(
            mask_in_text("redis://:pw@127.0.0.1:6379/0").as_deref(),
            Some("redis://:********@127.0.0.1:6379/0")
        );
        assert_eq!(mask_in_text("redis://127.0.0.1:6379"), None);
        assert_eq!(mask_in_text("postgres://postgres@127.0.0.1/test"), None);
        assert_eq!(mask_in_text("http://a/b?x=user:pw@c"), None);
        assert_eq!(
            mask_in_text("host=db user=oms password=s3cret dbname=oms").as_deref(),
            Some("host=db user=oms password=******** dbname=oms")
        );
        assert_eq!(mask_in_text("plain text"), None);
    }

    #[test]
    fn secret_keys_are_told_from_keys_that_name_secrets() {
        for k in [
            "jwt_secret",
            "password",
            "sasl.password",
            "ssl.key.password",
            "api_token",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "jwt_secret_env",
            "jwt_public_key",
            "password_file",
            "api_key_header",
            "api_keys",
            "sasl.username",
            "tenant_claim",
            "redact_headers",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn effective_config_fills_defaults_and_masks_secrets() {
        let text = r#"
[identity]
mode = "jwt"
jwt_secret = "do-not-print-me"

[database]
url = "postgres://oms:db-pass-do-not-print@db:5432/oms"

[audit.kafka_options]
"sasl.username" = "gateway"
"sasl.password" = "kafka-pass-do-not-print"

[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
"#;
        let (file, unknown) = crate::config::parse_file(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(unknown.is_empty());
        let out = effective_toml(&file).unwrap_or_else(|e| panic!("render: {e}"));
        assert!(!out.contains("do-not-print"), "{out}");
        assert!(out.contains("postgres://oms:********@db:5432/oms"), "{out}");
        assert!(out.contains("\"sasl.password\" = \"********\""), "{out}");
        assert!(out.contains("\"sasl.username\" = \"gateway\""), "{out}");
        assert!(out.contains(&format!("jwt_secret = \"{MASK}\"")), "{out}");
        // Defaults are filled in.
        assert!(out.contains("shutdown_grace = \"30s\""), "{out}");
        assert!(out.contains("listen = \"127.0.0.1:9091\""), "{out}");
        // The output is a config file again.
        let again = crate::config::parse_file(&out).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            again.1.is_empty(),
            "unknown keys in the output: {:?}",
            again.1
        );
        assert_eq!(again.0.routes.len(), 1);
    }
}
