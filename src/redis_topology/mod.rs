//! The one way omsgate talks to Redis, whatever the deployment: a standalone server, a Redis
//! Cluster or a Sentinel-watched primary ([`Topology`], the `redis = { ... }` table of `[cache]`
//! and `[rate_limit]`). The cache (`cache::backend`, `cache::storage`, `cache::generations`) and
//! the distributed rate limiter (`limit::distributed`) hold a [`RedisClient`] and run their
//! commands and scripts on a [`Conn`], which implements the redis crate's `ConnectionLike`.
//!
//! - **Standalone**: a `ConnectionManager` (reconnects by itself).
//! - **Cluster**: the redis crate's async `ClusterConnection`, which routes each command by the
//!   slot of its keys, follows `MOVED`/`ASK`, refreshes the slot map after a failover and splits
//!   multi-key reads (`MGET`) by slot. Scripts must keep their keys in one slot: every key the
//!   gateway writes carries a hash tag right after its prefix (see README "Redis key layout").
//! - **Sentinel**: a multiplexed connection to the primary the Sentinels name; a connection
//!   error or a `READONLY` answer (the old primary, demoted) drops it, and the next command asks
//!   the Sentinels again.
//!
//! Pub/sub (cache invalidation) uses a dedicated connection ([`RedisClient::pubsub`]): on a
//! cluster, to one node at a time, rotating through `nodes` (a `PUBLISH` reaches every node of
//! a cluster); on Sentinel, to the current primary.
//!
//! Nothing here connects on construction: connections are opened inside the runtime.

pub mod config;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

pub use self::config::{RedisFile, Topology};

/// Deadline of opening one connection (off the request path).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of asking the Sentinels for the primary (and checking its role).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis deployment to connect to.
pub struct RedisClient {
    kind: Kind,
    topology: Topology,
}

enum Kind {
    Standalone(redis::Client),
    Cluster {
        client: ClusterClient,
        /// One plain client per seed node, for pub/sub.
        nodes: Vec<redis::Client>,
        next: AtomicUsize,
    },
    Sentinel(Arc<SentinelShared>),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("mode", &self.topology.mode())
            .field("nodes", &self.describe())
            .finish()
    }
}

impl RedisClient {
    /// A client for `topology` (parsed, not connected); `rediss://` nodes are verified against
    /// `trust`. `response_timeout` bounds each answer inside the cluster and Sentinel clients
    /// (the callers' own deadlines still apply).
    pub fn new(
        topology: &Topology,
        trust: &crate::tls::TlsConfig,
        response_timeout: Duration,
    ) -> RedisResult<RedisClient> {
        let kind = match topology {
            Topology::Standalone { url } => Kind::Standalone(trust.redis_client(url)?),
            Topology::Cluster { nodes } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout.max(Duration::from_millis(250)))
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(certs) = trust.redis_certificates() {
                    if nodes.iter().any(|n| n.starts_with("rediss://")) {
                        builder = builder.certs(certs);
                    }
                }
                Kind::Cluster {
                    client: builder.build()?,
                    nodes: nodes
                        .iter()
                        .map(|n| trust.redis_client(n))
                        .collect::<RedisResult<_>>()?,
                    next: AtomicUsize::new(0),
                }
            }
            Topology::Sentinel { nodes, master_name } => Kind::Sentinel(Arc::new(
                SentinelShared::new(nodes, master_name, trust, response_timeout)?,
            )),
        };
        Ok(RedisClient {
            kind,
            topology: topology.clone(),
        })
    }

    /// The deployment.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether keys of one command or script must share a slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// Mode and nodes for logs (without credentials).
    pub fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .topology
            .nodes()
            .iter()
            .map(|n| crate::db::redact_url(n))
            .collect();
        format!("{} {}", self.topology.mode(), nodes.join(","))
    }

    /// Opens the shared connection: a `ConnectionManager` (standalone), a `ClusterConnection`
    /// (cluster) or the Sentinel-following connection.
    pub async fn connect(&self) -> RedisResult<Conn> {
        match &self.kind {
            Kind::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_number_of_retries(2)
                    .set_factor(50)
                    .set_max_delay(1000);
                Ok(Conn::Standalone(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            Kind::Cluster { client, .. } => Ok(Conn::Cluster(client.get_async_connection().await?)),
            Kind::Sentinel(shared) => {
                // Resolve once now, so that a failure shows here (and is retried by the caller).
                shared.current().await?;
                Ok(Conn::Sentinel(shared.clone()))
            }
        }
    }

    /// A dedicated pub/sub connection: the server (standalone), the next seed node in turn
    /// (cluster: `PUBLISH` is forwarded to every node), or the current primary (Sentinel).
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match &self.kind {
            Kind::Standalone(client) => client.get_async_pubsub().await,
            Kind::Cluster { nodes, next, .. } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % nodes.len().max(1);
                match nodes.get(i) {
                    Some(c) => c.get_async_pubsub().await,
                    None => Err(RedisError::from((
                        ErrorKind::ClientError,
                        "no cluster nodes",
                    ))),
                }
            }
            Kind::Sentinel(shared) => shared.master_client().await?.get_async_pubsub().await,
        }
    }
}

/// Groups key indices by hash tag (the text between the first `{` and the next `}`, which is
/// what Redis Cluster hashes), in order of first appearance; keys without a tag each form their
/// own group. On a cluster one script call per group keeps every call in one slot.
pub fn group_by_tag<S: AsRef<str>>(keys: &[S]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let tag = hash_tag(k.as_ref());
        match tag.and_then(|t| groups.iter_mut().find(|(g, _)| *g == Some(t))) {
            Some((_, v)) => v.push(i),
            None => groups.push((tag, vec![i])),
        }
    }
    groups.into_iter().map(|(_, v)| v).collect()
}

/// The hash tag of a key, as Redis Cluster reads it.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// Counts and logs a `CROSSSLOT` answer (`omsgate_redis_crossslot_errors_total{concern}`): the
/// key layout let one command's keys span slots, which is a bug, so it is logged as an error.
pub fn note_error(concern: &'static str, e: &RedisError) {
    if e.code() == Some("CROSSSLOT") || e.to_string().contains("CROSSSLOT") {
        crate::metrics::REDIS_CROSSSLOT
            .with_label_values(&[concern])
            .inc();
        tracing::error!(concern, error = %e, "Redis refused keys spanning cluster slots (CROSSSLOT).");
    }
}

// === Conn ===

/// A connection to any topology; cheap to clone (every clone shares the same connection).
#[derive(Clone)]
pub enum Conn {
    /// A standalone server.
    Standalone(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The primary named by Sentinels.
    Sentinel(Arc<SentinelShared>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.current().await?;
                let r = c.req_packed_command(cmd).await;
                s.check(&r);
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.current().await?;
                let r = c.req_packed_commands(cmd, offset, count).await;
                s.check(&r);
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

// === Sentinel ===

/// The Sentinel client and the connection to the primary it last named.
pub struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// Held while one caller asks the Sentinels and connects, so the others wait for it.
    resolving: tokio::sync::Mutex<()>,
    current: parking_lot::Mutex<Option<MultiplexedConnection>>,
    response_timeout: Duration,
}

impl SentinelShared {
    fn new(
        nodes: &[String],
        master_name: &str,
        trust: &crate::tls::TlsConfig,
        response_timeout: Duration,
    ) -> RedisResult<SentinelShared> {
        let infos: Vec<redis::ConnectionInfo> = nodes
            .iter()
            .map(|n| redis::IntoConnectionInfo::into_connection_info(n.as_str()))
            .collect::<RedisResult<_>>()?;
        let tls = infos
            .iter()
            .any(|i| matches!(i.addr, redis::ConnectionAddr::TcpTls { .. }));
        let mut builder = SentinelClientBuilder::new(
            infos.iter().map(|i| i.addr.clone()),
            master_name.to_string(),
            SentinelServerType::Master,
        )?;
        // The credentials and database of the first URL apply to the Sentinels and the primary.
        if let Some(first) = infos.first() {
            builder = builder.set_client_to_redis_db(first.redis.db);
            if let Some(u) = &first.redis.username {
                builder = builder
                    .set_client_to_redis_username(u.clone())
                    .set_client_to_sentinel_username(u.clone());
            }
            if let Some(pw) = &first.redis.password {
                builder = builder
                    .set_client_to_redis_password(pw.clone())
                    .set_client_to_sentinel_password(pw.clone());
            }
        }
        if tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = trust.redis_certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        Ok(SentinelShared {
            sentinel: tokio::sync::Mutex::new(builder.build()?),
            resolving: tokio::sync::Mutex::new(()),
            current: parking_lot::Mutex::new(None),
            response_timeout: response_timeout.max(Duration::from_millis(250)),
        })
    }

    /// A client for the primary the Sentinels name now (verified with `ROLE`), within
    /// [`RESOLVE_TIMEOUT`]: a hung Sentinel or primary must not keep the lock.
    async fn master_client(&self) -> RedisResult<redis::Client> {
        let mut sentinel = self.sentinel.lock().await;
        match tokio::time::timeout(RESOLVE_TIMEOUT, sentinel.async_get_client()).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from((
                ErrorKind::IoError,
                "the Sentinels did not name a reachable primary in time",
            ))),
        }
    }

    /// The connection to the primary, asking the Sentinels when there is none.
    async fn current(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.lock().as_ref() {
            return Ok(c.clone());
        }
        let guard = self.resolving.lock().await;
        if let Some(c) = self.current.lock().as_ref() {
            return Ok(c.clone());
        }
        let client = self.master_client().await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(self.response_timeout);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        tracing::info!(
            primary = %client.get_connection_info().addr,
            "Connected to the Redis primary named by the Sentinels."
        );
        *self.current.lock() = Some(conn.clone());
        drop(guard);
        Ok(conn)
    }

    /// Drops the connection after an error that means the primary is gone or demoted, so the
    /// next command asks the Sentinels again.
    fn check<T>(&self, r: &RedisResult<T>) {
        if let Err(e) = r {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.kind() == ErrorKind::ReadOnly
            {
                tracing::debug!(error = %e, "Redis primary failed; asking the Sentinels again.");
                *self.current.lock() = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_group_keys() {
        assert_eq!(hash_tag("p:gen:{acme}:invoice:1"), Some("acme"));
        assert_eq!(hash_tag("p:{}x"), None);
        assert_eq!(hash_tag("p:x"), None);
        let keys = [
            "p:{acme}:a",
            "p:{*}:epoch",
            "p:{acme}:b",
            "p:untagged",
            "p:untagged",
        ];
        assert_eq!(
            group_by_tag(&keys),
            vec![vec![0, 2], vec![1], vec![3], vec![4]]
        );
    }
}
