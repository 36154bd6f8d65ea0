//! `redis = { mode, nodes, master_name }`, the same table in `[cache]` and `[rate_limit]`: the
//! file layer and the typed [`Topology`].

use serde::{Deserialize, Serialize};

use crate::config::Problems;

// === File layer ===

/// `redis = { ... }`: which Redis deployment a concern talks to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisFile {
    /// `"standalone"` (one server, `nodes` has one URL), `"cluster"` (a Redis Cluster; `nodes`
    /// lists some of its nodes, the rest is discovered) or `"sentinel"` (`nodes` lists the
    /// Sentinels watching `master_name`). Default `"standalone"`.
    pub mode: String,
    /// `redis://` or `rediss://` URLs (TLS, verified against `[tls] ca_file` and the system
    /// roots); one TLS mode for all of them. Required.
    pub nodes: Vec<String>,
    /// The name the Sentinels monitor (`sentinel monitor NAME ...`); only with
    /// `mode = "sentinel"`. Default none.
    pub master_name: Option<String>,
    /// PEM certificate chain presented to Redis servers (and Sentinels) that ask for one
    /// (`tls-auth-clients yes`); with `key`, `rediss://` nodes only. Default none.
    pub cert: Option<String>,
    /// PEM private key of `cert`. Default none.
    pub key: Option<String>,
}

impl Default for RedisFile {
    fn default() -> Self {
        Self {
            mode: "standalone".into(),
            nodes: Vec::new(),
            master_name: None,
            cert: None,
            key: None,
        }
    }
}

/// Reads `{section}.redis.cert` and `.key`: the client certificate for `rediss://` nodes,
/// checked (readable, PEM, certificate and key belong together) with every problem under its
/// key; `None` when neither is set.
pub fn client_cert(
    section: &str,
    redis: Option<&RedisFile>,
    p: &mut Problems,
) -> Option<crate::tls::RedisClientCert> {
    let r = redis?;
    let key = format!("{section}.redis");
    let (cert, private) = match (r.cert.as_deref(), r.key.as_deref()) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            p.push(
                format!("{key}.key"),
                "required with cert: the certificate's PEM private key",
            );
            return None;
        }
        (None, Some(_)) => {
            p.push(
                format!("{key}.cert"),
                "required with key: the PEM certificate chain",
            );
            return None;
        }
    };
    if !r
        .nodes
        .iter()
        .all(|n| n.trim_start().starts_with("rediss://"))
    {
        p.push(
            format!("{key}.cert"),
            "a client certificate is sent over TLS only: every node must be a rediss:// URL",
        );
        return None;
    }
    match crate::tls::RedisClientCert::load(cert.as_ref(), private.as_ref()) {
        Ok(c) => Some(c),
        Err((field, e)) => {
            p.push(format!("{key}.{field}"), e);
            None
        }
    }
}

// === Typed layer ===

/// A Redis deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (what `redis_url` means).
    Standalone {
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster, reached through any of `nodes`; redirections (`MOVED`/`ASK`) and
    /// failovers are followed by the redis crate's cluster client.
    Cluster {
        /// Seed nodes.
        nodes: Vec<String>,
    },
    /// A primary (and replicas) watched by Sentinels; the primary is asked of them and asked
    /// again after a failover.
    Sentinel {
        /// The Sentinels.
        nodes: Vec<String>,
        /// The monitored master's name.
        master_name: String,
    },
}

impl Topology {
    /// `"standalone"`, `"cluster"` or `"sentinel"`.
    pub fn mode(&self) -> &'static str {
        match self {
            Topology::Standalone { .. } => "standalone",
            Topology::Cluster { .. } => "cluster",
            Topology::Sentinel { .. } => "sentinel",
        }
    }

    /// The URLs it is reached through.
    pub fn nodes(&self) -> Vec<&str> {
        match self {
            Topology::Standalone { url } => vec![url.as_str()],
            Topology::Cluster { nodes } | Topology::Sentinel { nodes, .. } => {
                nodes.iter().map(String::as_str).collect()
            }
        }
    }

    /// Reads `{section}.redis_url` and `{section}.redis`, recording every problem with its key;
    /// `None` when neither is set (or they are unusable).
    pub fn from_file(
        section: &str,
        redis_url: &str,
        redis: Option<&RedisFile>,
        p: &mut Problems,
    ) -> Option<Topology> {
        let url = redis_url.trim();
        match (url.is_empty(), redis) {
            (true, None) => None,
            (false, None) => match redis::Client::open(url) {
                Ok(_) => Some(Topology::Standalone {
                    url: url.to_string(),
                }),
                Err(e) => {
                    p.push(
                        format!("{section}.redis_url"),
                        format!(
                            "`{url}` is not a Redis URL ({e}); write e.g. \"redis://127.0.0.1:6379/0\", or \"\" for none"
                        ),
                    );
                    None
                }
            },
            (false, Some(_)) => {
                p.push(
                    format!("{section}.redis"),
                    format!(
                        "set either {section}.redis_url (one standalone server) or {section}.redis, not both"
                    ),
                );
                None
            }
            (true, Some(r)) => Self::from_table(&format!("{section}.redis"), r, p),
        }
    }

    fn from_table(key: &str, r: &RedisFile, p: &mut Problems) -> Option<Topology> {
        let before = p.list().len();
        if r.nodes.is_empty() {
            p.push(
                format!("{key}.nodes"),
                "must list at least one \"redis://HOST:PORT\" URL",
            );
        }
        let mut tls = None;
        for (i, node) in r.nodes.iter().enumerate() {
            let nkey = format!("{key}.nodes[{i}]");
            let info = match redis::IntoConnectionInfo::into_connection_info(node.as_str()) {
                Ok(info) => info,
                Err(e) => {
                    p.push(&nkey, format!("`{node}` is not a Redis URL ({e})"));
                    continue;
                }
            };
            let is_tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
            if matches!(info.addr, redis::ConnectionAddr::Unix(_)) && r.mode != "standalone" {
                p.push(
                    &nkey,
                    format!(
                        "`{node}`: a {} is reached over TCP (redis:// or rediss://), not a socket",
                        r.mode
                    ),
                );
            }
            match tls {
                None => tls = Some(is_tls),
                Some(t) if t != is_tls => p.push(
                    &nkey,
                    "mixes redis:// and rediss://: every node uses the same TLS mode",
                ),
                Some(_) => {}
            }
            if r.mode == "cluster" && info.redis.db != 0 {
                p.push(
                    &nkey,
                    format!(
                        "`{node}` selects database {}: a Redis Cluster has only database 0",
                        info.redis.db
                    ),
                );
            }
        }
        if r.mode != "sentinel" && r.master_name.is_some() {
            p.push(
                format!("{key}.master_name"),
                format!("only with mode = \"sentinel\" (mode is \"{}\")", r.mode),
            );
        }
        let topology = match r.mode.as_str() {
            "standalone" => {
                if r.nodes.len() > 1 {
                    p.push(
                        format!("{key}.nodes"),
                        format!(
                            "mode = \"standalone\" takes one URL, not {}; for several servers use mode = \"cluster\" or \"sentinel\"",
                            r.nodes.len()
                        ),
                    );
                }
                Topology::Standalone {
                    url: r.nodes.first().cloned().unwrap_or_default(),
                }
            }
            "cluster" => Topology::Cluster {
                nodes: r.nodes.clone(),
            },
            "sentinel" => {
                let name = r.master_name.as_deref().unwrap_or("").trim();
                if name.is_empty() {
                    p.push(
                        format!("{key}.master_name"),
                        "required with mode = \"sentinel\": the name the Sentinels monitor, e.g. \"mymaster\"",
                    );
                }
                Topology::Sentinel {
                    nodes: r.nodes.clone(),
                    master_name: name.to_string(),
                }
            }
            other => {
                p.push(
                    format!("{key}.mode"),
                    format!("`{other}` is not one of \"standalone\", \"cluster\", \"sentinel\""),
                );
                return None;
            }
        };
        (p.list().len() == before).then_some(topology)
    }
}

/// Checks a key prefix for the hash-tag braces: every key puts its tag (`{...}`) right after the
/// prefix, and Redis Cluster hashes the first `{...}` of a key, so a brace in the prefix would
/// put every key in one slot (or split a script's keys over several).
pub fn check_prefix(key: &str, prefix: &str, p: &mut Problems) {
    if prefix.contains(['{', '}']) {
        p.push(
            key,
            format!(
                "`{prefix}` must not contain `{{` or `}}`: they mark the hash tag that keeps related keys in one Redis Cluster slot"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, table: Option<&str>) -> (Option<Topology>, Vec<String>) {
        let mut p = Problems::default();
        let r: Option<RedisFile> = table.map(|t| toml::from_str(t).unwrap());
        let t = Topology::from_file("cache", url, r.as_ref(), &mut p);
        (t, p.list().iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn redis_url_is_standalone() {
        let (t, problems) = parse("redis://127.0.0.1:6379/0", None);
        assert!(problems.is_empty());
        assert_eq!(
            t,
            Some(Topology::Standalone {
                url: "redis://127.0.0.1:6379/0".into()
            })
        );
        assert_eq!(parse("", None), (None, vec![]));
    }

    #[test]
    fn cluster_and_sentinel() {
        let (t, problems) = parse(
            "",
            Some(
                r#"mode = "cluster"
nodes = ["redis://a:7000", "redis://b:7001"]"#,
            ),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.unwrap().nodes(), vec!["redis://a:7000", "redis://b:7001"]);
        let (t, problems) = parse(
            "",
            Some(
                r#"mode = "sentinel"
nodes = ["redis://a:26379"]
master_name = "mymaster""#,
            ),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.unwrap().mode(), "sentinel");
    }

    #[test]
    fn every_problem_is_named_with_its_key() {
        let (t, problems) = parse(
            "",
            Some(
                r#"mode = "cluster"
nodes = ["redis://a:7000/2", "rediss://b:7001", "mongodb://c"]
master_name = "x""#,
            ),
        );
        assert_eq!(t, None);
        let keys: Vec<&str> = problems
            .iter()
            .map(|m| m.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            vec![
                "cache.redis.nodes[0]",
                "cache.redis.nodes[1]",
                "cache.redis.nodes[2]",
                "cache.redis.master_name"
            ],
            "{problems:?}"
        );
        let (_, problems) = parse(
            "",
            Some(
                r#"mode = "sentinel"
nodes = []"#,
            ),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("cache.redis.nodes:"));
        assert!(problems[1].starts_with("cache.redis.master_name:"));
        let (_, problems) = parse(
            "",
            Some(
                r#"mode = "ring"
nodes = ["redis://a"]"#,
            ),
        );
        assert!(problems[0].starts_with("cache.redis.mode:"), "{problems:?}");
        let (_, problems) = parse("redis://a", Some(r#"nodes = ["redis://a"]"#));
        assert!(problems[0].starts_with("cache.redis:"), "{problems:?}");
        let (_, problems) = parse("", Some(r#"nodes = ["redis://a", "redis://b"]"#));
        assert!(
            problems[0].starts_with("cache.redis.nodes:"),
            "{problems:?}"
        );
    }

    #[test]
    fn prefixes_without_braces() {
        let mut p = Problems::default();
        check_prefix("cache.key_prefix", "omsgate:", &mut p);
        check_prefix("cache.key_prefix", "a{b}:", &mut p);
        let m: Vec<String> = p.list().iter().map(|x| x.to_string()).collect();
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("cache.key_prefix:"));
    }
}
