//! `omsgate check-config` on the shipped `config.toml`, and `omsgate print-config`: defaults
//! filled in, secrets masked, the output a valid config again, a bad file rejected with 64.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn omsgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omsgate"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run omsgate {args:?}: {e}"))
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omsgate-ops-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let path = shipped_config();
    let out = omsgate(&["check-config", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "check-config config.toml: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn print_config_fills_defaults_masks_secrets_and_round_trips() {
    let secret = "hs256-secret-that-must-not-leak";
    let path = temp_file(
        "secret.toml",
        &format!(
            r#"
[identity]
mode = "jwt"
jwt_secret = "{secret}"

[[route]]
name = "invoice"
path = "/api/v1/invoices/{{id}}"
"#
        ),
    );
    let out = omsgate(&["print-config", "-c", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "print-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(secret), "secret printed:\n{stdout}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    assert!(stdout.contains("jwt_secret = \"********\""), "{stdout}");
    // Defaults of sections the file does not mention are filled in.
    for line in [
        "listen = \"0.0.0.0:8080\"",
        "shutdown_grace = \"30s\"",
        "servers = [\"127.0.0.1:8000\"]",
        "format = \"text\"",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    // The output is a valid config file itself.
    let again = temp_file("effective.toml", &stdout);
    let out = omsgate(&["check-config", &again.display().to_string()]);
    assert!(
        out.status.success(),
        "check-config on print-config output: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn print_config_rejects_a_bad_config_with_every_problem() {
    let path = temp_file(
        "bad.toml",
        r#"
[server]
listen = "nowhere"
shutdown_grace = "forever"
"#,
    );
    let out = omsgate(&["print-config", "-c", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(stderr.contains("server.shutdown_grace"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Optional keys are printed with their effective value, and those whose absence is their
/// value are named in a comment.
#[test]
fn print_config_prints_every_effective_key() {
    let path = temp_file(
        "routes.toml",
        r#"
[[route]]
name = "invoice"
path = "/api/v1/invoices/{id}"
cache = { ttl = "60s" }

[[route]]
name = "write"
path = "/api/v1/invoices/{id}"
methods = ["PUT"]
compression = false
"#,
    );
    let out = omsgate(&["print-config", "-c", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = stdout
        .parse()
        .unwrap_or_else(|e| panic!("print-config output is not TOML: {e}\n{stdout}"));
    let value = |path: &[&str]| -> Option<toml::Value> {
        let mut v = toml::Value::Table(printed.clone());
        for p in path {
            v = match p.parse::<usize>() {
                Ok(i) => v.as_array()?.get(i)?.clone(),
                Err(_) => v.as_table()?.get(*p)?.clone(),
            };
        }
        Some(v)
    };
    assert_eq!(
        value(&["compression", "store_level"]),
        Some(toml::Value::Integer(6)),
        "{stdout}"
    );
    assert_eq!(
        value(&["route", "0", "compression"]),
        Some(toml::Value::Boolean(true))
    );
    assert_eq!(
        value(&["route", "1", "compression"]),
        Some(toml::Value::Boolean(false))
    );
    assert_eq!(
        value(&["route", "0", "cache", "statuses"]),
        value(&["cache", "statuses"]),
        "{stdout}"
    );
    assert_eq!(
        value(&["route", "1", "audit", "enabled"]),
        Some(toml::Value::Boolean(true))
    );
    for line in [
        "#   route[0].query: always the OMS",
        "#   route[0].cache.resource: none",
        "#   route[1].cache: not cached",
    ] {
        assert!(stdout.contains(line), "`{line}` missing from:\n{stdout}");
    }
}

/// Leaf keys of a table as dotted paths (`cache.memory.max_bytes`); an empty table is a leaf.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut std::collections::BTreeMap<String, toml::Value>,
) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => flatten(&path, t, out),
            _ => {
                out.insert(path, v.clone());
            }
        }
    }
}

fn toml_value(text: &str) -> Option<toml::Value> {
    if text.trim().is_empty() {
        return None;
    }
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()?
        .remove("v")
}

/// The default of every key is stated in three places that must agree: `print-config` of an
/// empty file (what the binary does), the key table of `docs/configuration.md`, and
/// `config.toml` (its values are the defaults unless its comment says otherwise, and every
/// `Default X` in a key's comment is that key's default).
#[test]
fn defaults_agree_between_print_config_the_docs_table_and_config_toml() {
    let empty = temp_file("empty.toml", "");
    let out = omsgate(&["print-config", "-c", &empty.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8_lossy(&out.stdout)
        .parse()
        .unwrap_or_else(|e| panic!("print-config output is not TOML: {e}"));
    let mut defaults = std::collections::BTreeMap::new();
    flatten("", &printed, &mut defaults);
    defaults.remove("route");
    // Optional keys whose absence is their default: print-config names them in its closing
    // comment ("#   key: meaning"); the sample may still set them.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unset: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k))
        .collect();

    // docs/configuration.md: `| `key` | `value` |` rows.
    let docs_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let docs = std::fs::read_to_string(&docs_path).unwrap_or_else(|e| panic!("{e}"));
    let mut documented = std::collections::BTreeMap::new();
    for line in docs.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        if let [key, value] = cells.as_slice() {
            let key = key.trim_start_matches("| `").trim_end_matches('`');
            let value = value
                .trim_end_matches(" |")
                .trim_matches('`')
                .replace("\\|", "|");
            if let Some(v) = toml_value(&value) {
                documented.insert(key.to_string(), v);
            }
        }
    }
    let mut wrong = Vec::new();
    for (key, value) in &defaults {
        match documented.get(key) {
            Some(v) if v == value => {}
            Some(v) => wrong.push(format!("docs say `{key}` = {v}, print-config {value}")),
            None => wrong.push(format!(
                "docs/configuration.md lacks `| `{key}` | `{value}` |`"
            )),
        }
    }
    for key in documented.keys() {
        if !defaults.contains_key(key) {
            wrong.push(format!(
                "docs/configuration.md documents `{key}`, which print-config lacks"
            ));
        }
    }

    // config.toml: values, and the `Default X` of each key's comment.
    let sample = std::fs::read_to_string(shipped_config()).unwrap_or_else(|e| panic!("{e}"));
    // Where the sample deliberately differs from the default (and its comment says so).
    let differs = ["rate_limit.default"];
    let mut section = String::new();
    let mut comment: Vec<String> = Vec::new();
    for line in sample.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            comment.clear();
        } else if let Some(text) = line.strip_prefix('#') {
            let text = text.trim();
            // A commented-out key ends the comment of the key before it.
            let is_key = text.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            if is_key {
                comment.clear();
            } else {
                comment.push(text.to_string());
            }
        } else if let Some((key, value)) = line.split_once(" = ") {
            let path = format!("{section}.{}", key.trim());
            let said = std::mem::take(&mut comment).join(" ");
            if section == "route"
                || section.starts_with("rate_limit.policies")
                || section.starts_with("queries.")
            {
                continue;
            }
            if unset.contains(&path.as_str()) {
                continue;
            }
            let Some(default) = defaults.get(&path).cloned().or_else(|| {
                // Inline tables: compare the whole table.
                printed
                    .get(&section)
                    .and_then(|s| s.get(key.trim()))
                    .cloned()
            }) else {
                wrong.push(format!(
                    "config.toml: `{path}` has no default in print-config"
                ));
                continue;
            };
            let value = value.split(" #").next().unwrap_or(value);
            match toml_value(value) {
                Some(v) if v == default || differs.contains(&path.as_str()) => {}
                Some(v) => wrong.push(format!(
                    "config.toml sets `{path}` = {v}, the default is {default}"
                )),
                None => wrong.push(format!("config.toml: `{path}` does not parse")),
            }
            if let Some(at) = said.rfind("Default ") {
                let rest = &said[at + "Default ".len()..];
                let stated = (1..=rest.len())
                    .rev()
                    .filter(|n| rest.is_char_boundary(*n))
                    .find_map(|n| toml_value(&rest[..n]));
                if let Some(stated) = stated.filter(|_| !default.is_table()) {
                    if stated != default {
                        wrong.push(format!(
                            "config.toml's comment says `{path}` defaults to {stated}, print-config {default}"
                        ));
                    }
                }
            }
        } else if line.is_empty() {
            comment.clear();
        }
    }
    assert!(
        wrong.is_empty(),
        "defaults disagree:\n  {}",
        wrong.join("\n  ")
    );
}
