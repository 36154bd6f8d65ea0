//! Private Redis deployments of a test's own: a Redis Cluster of three primaries and three
//! replicas ([`PrivateRedisCluster`]) and a primary with a replica watched by three Sentinels
//! ([`PrivateSentinel`]). Free ports, a unique temporary directory, short timeouts (node
//! timeout 1000 ms) so that failovers finish within seconds, and every process killed on drop:
//! tests stay self-contained and may run in parallel.

use super::{free_port, redis_ping, tail, wait_for, TestDir};
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `redis-server` (or Sentinel) process on a port of its own.
struct Node {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn spawn(dir: &std::path::Path, port: u16, args: &[String]) -> Node {
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let log = node_dir.join("redis.log");
        let out = File::create(&log).expect("node log");
        let err = out.try_clone().expect("node log");
        let child = Command::new("redis-server")
            .args(args)
            .arg("--dir")
            .arg(&node_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        Node {
            port,
            child: Some(child),
            log,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...`, its standard output (empty when it fails).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn base_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

// === PrivateRedisCluster ===

/// Three primaries, three replicas, `cluster-node-timeout 1000`.
pub struct PrivateRedisCluster {
    nodes: Vec<Node>,
    dir: TestDir,
}

impl PrivateRedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create --cluster-replicas 1` and
    /// waits until every node reports `cluster_state:ok` (panics with the logs after 30 s).
    pub fn start() -> PrivateRedisCluster {
        let dir = TestDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let bus = free_port();
            let mut args = base_args(port);
            for (k, v) in [
                ("--cluster-enabled", "yes".to_string()),
                ("--cluster-port", bus.to_string()),
                ("--cluster-config-file", format!("nodes-{port}.conf")),
                ("--cluster-node-timeout", "1000".to_string()),
                // A replica always takes over, however long since it last heard its primary.
                ("--cluster-replica-validity-factor", "0".to_string()),
                // The other slots keep serving while one primary is being replaced.
                ("--cluster-require-full-coverage", "no".to_string()),
            ] {
                args.push(k.to_string());
                args.push(v);
            }
            nodes.push(Node::spawn(dir.path(), port, &args));
        }
        let cluster = PrivateRedisCluster { nodes, dir };
        for n in &cluster.nodes {
            let addr = n.addr();
            assert!(
                wait_for(Duration::from_secs(10), || redis_ping(addr)),
                "cluster node {addr} did not answer PING:\n{}",
                tail(&n.log(), 20)
            );
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        let ok = wait_for(Duration::from_secs(30), || {
            ports.iter().all(|p| {
                redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok")
                    && redis_cli(*p, &["cluster", "nodes"]).lines().count() == 6
            })
        });
        assert!(ok, "the cluster did not become ok:\n{}", cluster.logs());
        // Every replica has finished its first sync, so that a failover finds it ready.
        let synced = wait_for(Duration::from_secs(30), || {
            cluster
                .replicas()
                .iter()
                .all(|p| redis_cli(*p, &["info", "replication"]).contains("master_link_status:up"))
        });
        assert!(synced, "replicas did not sync:\n{}", cluster.logs());
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node (the seed list of `redis.nodes`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis = { mode = "cluster", nodes = [...] }`.
    pub fn redis_table(&self) -> String {
        let nodes: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "redis = {{ mode = \"cluster\", nodes = [{}] }}",
            nodes.join(", ")
        )
    }

    /// Ports of the live nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn any_live(&self) -> u16 {
        self.ports()[0]
    }

    /// Ports of the live replicas.
    pub fn replicas(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| redis_cli(*p, &["role"]).starts_with("slave"))
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        redis_cli(self.any_live(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// The port of the primary serving `slot`, as the live nodes see it now.
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        let nodes = redis_cli(self.any_live(), &["cluster", "nodes"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            for range in &f[8..] {
                let mut it = range.split('-');
                let (Some(a), b) = (it.next(), it.next()) else {
                    continue;
                };
                let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.unwrap_or(a).parse::<u16>()) else {
                    continue;
                };
                if (a..=b).contains(&slot) {
                    return Some(port);
                }
            }
        }
        None
    }

    /// Kills (SIGKILL) the node on `port`, like a crash.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// Whether every live node reports `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        self.ports()
            .iter()
            .all(|p| redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
    }

    /// The tail of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "--- node {} ---\n{}\n",
                n.port,
                tail(&n.log(), 15)
            ));
        }
        out
    }

    /// The directory holding the nodes' files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("private Redis Cluster logs:\n{}", self.logs());
        }
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

// === PrivateSentinel ===

/// A primary, one replica and three Sentinels monitoring them as `mymaster` (quorum 2,
/// `down-after-milliseconds 1000`, `failover-timeout 3000`).
pub struct PrivateSentinel {
    primary: Node,
    replica: Node,
    sentinels: Vec<Node>,
    dir: TestDir,
}

/// The monitored name.
pub const MASTER_NAME: &str = "mymaster";

impl PrivateSentinel {
    /// Starts them and waits until the Sentinels see the replica and each other.
    pub fn start() -> PrivateSentinel {
        let dir = TestDir::new("redis-sentinel");
        let pport = free_port();
        let primary = Node::spawn(dir.path(), pport, &base_args(pport));
        let rport = free_port();
        let mut rargs = base_args(rport);
        rargs.extend(["--replicaof".into(), "127.0.0.1".into(), pport.to_string()]);
        let replica = Node::spawn(dir.path(), rport, &rargs);
        for n in [&primary, &replica] {
            let addr = n.addr();
            assert!(
                wait_for(Duration::from_secs(10), || redis_ping(addr)),
                "{addr} did not answer PING:\n{}",
                tail(&n.log(), 20)
            );
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {pport} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n"
                ),
            )
            .expect("sentinel.conf");
            let args = vec![conf.display().to_string(), "--sentinel".to_string()];
            sentinels.push(Node::spawn(dir.path(), port, &args));
        }
        let s = PrivateSentinel {
            primary,
            replica,
            sentinels,
            dir,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            s.replica_synced()
                && s.sentinels.iter().all(|n| {
                    let m = redis_cli(n.port, &["sentinel", "master", MASTER_NAME]);
                    let mut lines = m.lines();
                    let mut replicas = 0;
                    let mut others = 0;
                    while let Some(k) = lines.next() {
                        let v = lines.next().unwrap_or("");
                        match k {
                            "num-slaves" => replicas = v.parse().unwrap_or(0),
                            "num-other-sentinels" => others = v.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    replicas == 1 && others == 2
                })
        });
        assert!(ready, "the Sentinels did not settle:\n{}", s.logs());
        s
    }

    fn replica_synced(&self) -> bool {
        redis_cli(self.replica.port, &["info", "replication"]).contains("master_link_status:up")
    }

    /// `redis = { mode = "sentinel", nodes = [...], master_name = "mymaster" }`.
    pub fn redis_table(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!(
            "redis = {{ mode = \"sentinel\", nodes = [{}], master_name = \"{MASTER_NAME}\" }}",
            nodes.join(", ")
        )
    }

    /// Port of the first primary.
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// Port of the replica.
    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// The primary's address as the first live Sentinel names it.
    pub fn current_primary(&self) -> Option<u16> {
        for s in &self.sentinels {
            let out = redis_cli(
                s.port,
                &["sentinel", "get-master-addr-by-name", MASTER_NAME],
            );
            let mut lines = out.lines();
            if let (Some(_), Some(port)) = (lines.next(), lines.next()) {
                return port.trim().parse().ok();
            }
        }
        None
    }

    /// Kills (SIGKILL) the first primary.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// The tail of every process's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in std::iter::once(&self.primary)
            .chain(std::iter::once(&self.replica))
            .chain(&self.sentinels)
        {
            out.push_str(&format!("--- {} ---\n{}\n", n.port, tail(&n.log(), 15)));
        }
        out
    }

    /// The directory holding the processes' files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PrivateSentinel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("private Sentinel deployment logs:\n{}", self.logs());
        }
        for n in &mut self.sentinels {
            n.kill();
        }
        self.replica.kill();
        self.primary.kill();
    }
}
