//! Private Redis deployments of a test's own: a Redis Cluster of three primaries and three
//! replicas ([`PrivateRedisCluster`]) and a primary with a replica watched by three Sentinels
//! ([`PrivateSentinel`]), each speaking plain TCP or TLS only ([`Transport`]). Free ports, a
//! unique temporary directory, short timeouts (node timeout 1000 ms) so that failovers finish
//! within seconds, every `redis-cli` call bounded by a deadline (a hang fails with a message
//! instead of hanging CI), and every process killed on drop: tests stay self-contained and may
//! run in parallel.

use super::pki::{Ca, Issued};
use super::{free_port, tail, wait_for, TestDir};
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one `redis-cli` call may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `redis-cli --cluster create` may take (it waits for the nodes to meet).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the processes of a private deployment accept connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP (`port P`); URLs are `redis://127.0.0.1:P`.
    Plain,
    /// TLS only (`port 0`, `tls-port P`), between the servers too (`tls-replication yes`, and
    /// `tls-cluster yes` on a cluster), with a certificate for `localhost` and `127.0.0.1` from a
    /// CA generated for the deployment; clients are not asked for a certificate. URLs are
    /// `rediss://localhost:P`: the gateway verifies the seed nodes and Sentinels by name and the
    /// nodes and primaries they announce (by IP) against the CA.
    Tls,
}

/// The server side of [`Transport::Tls`]: the CA, the certificate every process serves, and
/// the one it shows when it connects to another (replication, cluster bus, Sentinel).
struct ServerTls {
    ca_file: PathBuf,
    cert: Issued,
    client: Issued,
}

impl ServerTls {
    fn new(dir: &Path) -> ServerTls {
        let ca = Ca::new(dir, "redis");
        ServerTls {
            cert: ca.issue("redis-server", &["localhost", "127.0.0.1"], false),
            client: ca.issue("redis-peer", &["redis-peer"], true),
            ca_file: ca.pem_path("redis"),
        }
    }

    /// `tls-*` settings of a server or Sentinel listening on `port` (and on no plain port), as
    /// `(key, value)` pairs for the command line or a config file.
    fn settings(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("port", "0".to_string()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", self.cert.cert.display().to_string()),
            ("tls-key-file", self.cert.key.display().to_string()),
            ("tls-ca-cert-file", self.ca_file.display().to_string()),
            // The cluster bus asks every connecting node for a certificate, whatever
            // `tls-auth-clients` says, and refuses one without the client-auth usage: without
            // these the nodes never meet and `--cluster create` waits forever (the refusal is
            // logged only at `loglevel verbose`).
            (
                "tls-client-cert-file",
                self.client.cert.display().to_string(),
            ),
            ("tls-client-key-file", self.client.key.display().to_string()),
            ("tls-auth-clients", "no".to_string()),
            // Replicas connect to their primary (and Sentinels to both) over TLS.
            ("tls-replication", "yes".to_string()),
        ]
    }
}

/// Runs `cmd` to completion within `limit`, killing it when the deadline passes.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let out = stdout.join().unwrap_or_default();
                return Err(format!(
                    "{cmd:?} did not finish within {limit:?} and was killed; its output:\n{}",
                    String::from_utf8_lossy(&out)
                ));
            }
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

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

/// `redis-cli -p PORT ARGS...` over plain TCP, its standard output (empty when it fails or
/// takes more than 5 s).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    cli(None, port, args)
}

/// `redis-cli` against `port`, with TLS when `tls` is set.
fn cli(tls: Option<&ServerTls>, port: u16, args: &[&str]) -> String {
    let mut cmd = cli_command(tls);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    output_within(&mut cmd, CLI_TIMEOUT)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn cli_command(tls: Option<&ServerTls>) -> Command {
    let mut cmd = Command::new("redis-cli");
    if let Some(tls) = tls {
        cmd.arg("--tls").arg("--cacert").arg(&tls.ca_file);
    }
    cmd
}

/// The command line of a server on `port`: plain, or TLS only.
fn base_args(port: u16, tls: Option<&ServerTls>) -> Vec<String> {
    let mut args: Vec<String> = [
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
    .collect();
    match tls {
        None => args.extend(["--port".to_string(), port.to_string()]),
        Some(tls) => {
            for (k, v) in tls.settings(port) {
                args.extend([format!("--{k}"), v]);
            }
        }
    }
    args
}

/// Waits until `node` answers `PING` (panics with its log after 10 s).
fn wait_ping(tls: Option<&ServerTls>, node: &Node, what: &str) {
    let addr = node.addr();
    assert!(
        wait_for(Duration::from_secs(10), || cli(tls, node.port, &["ping"])
            .trim()
            == "PONG"),
        "{what} {addr} did not answer PING:\n{}",
        tail(&node.log(), 20)
    );
}

/// `rediss://localhost:PORT` or `redis://127.0.0.1:PORT`.
fn url(tls: Option<&ServerTls>, port: u16) -> String {
    match tls {
        Some(_) => format!("rediss://localhost:{port}"),
        None => format!("redis://127.0.0.1:{port}"),
    }
}

/// `[tls] ca_file = "..."` trusting the deployment's CA (empty when it is plain).
fn tls_section(tls: Option<&ServerTls>) -> String {
    tls.map(|t| format!("\n[tls]\nca_file = \"{}\"\n", t.ca_file.display()))
        .unwrap_or_default()
}

// === PrivateRedisCluster ===

/// Three primaries, three replicas, `cluster-node-timeout 1000`.
pub struct PrivateRedisCluster {
    nodes: Vec<Node>,
    tls: Option<ServerTls>,
    dir: TestDir,
}

impl PrivateRedisCluster {
    /// [`Self::start_with`] over plain TCP.
    pub fn start() -> PrivateRedisCluster {
        Self::start_with(Transport::Plain)
    }

    /// Starts six nodes, joins them with `redis-cli --cluster create --cluster-replicas 1` and
    /// waits until every node reports `cluster_state:ok` and every replica has synced (panics
    /// with the logs after 30 s each).
    pub fn start_with(transport: Transport) -> PrivateRedisCluster {
        let dir = TestDir::new("redis-cluster");
        let tls = (transport == Transport::Tls).then(|| ServerTls::new(dir.path()));
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            // The bus port is set, not derived: the default (the data port + 10000, the
            // tls-port's with `port 0`) may be taken, or above 65535 for an ephemeral port.
            let bus = free_port();
            let mut args = base_args(port, tls.as_ref());
            if tls.is_some() {
                // The nodes gossip over TLS, and announce their TLS port to clients (with
                // `port 0` there is no other).
                args.extend(["--tls-cluster".to_string(), "yes".to_string()]);
            }
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
        let cluster = PrivateRedisCluster { nodes, tls, dir };
        for n in &cluster.nodes {
            wait_ping(cluster.tls.as_ref(), n, "cluster node");
        }
        let mut create = cli_command(cluster.tls.as_ref());
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = output_within(&mut create, CREATE_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "redis-cli --cluster create hung (nodes that cannot reach each other's cluster \
                 bus wait forever): {e}\n{}",
                cluster.logs()
            )
        });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        let ok = wait_for(Duration::from_secs(30), || {
            ports.iter().all(|p| {
                cluster
                    .cli(*p, &["cluster", "info"])
                    .contains("cluster_state:ok")
                    && cluster.cli(*p, &["cluster", "nodes"]).lines().count() == 6
            })
        });
        assert!(ok, "the cluster did not become ok:\n{}", cluster.logs());
        // Every replica has finished its first sync, so that a failover finds it ready.
        let synced = wait_for(Duration::from_secs(30), || {
            cluster.replicas().iter().all(|p| {
                cluster
                    .cli(*p, &["info", "replication"])
                    .contains("master_link_status:up")
            })
        });
        assert!(synced, "replicas did not sync:\n{}", cluster.logs());
        cluster
    }

    /// `redis-cli -p PORT ARGS...` (with TLS on a TLS cluster), its standard output (empty when
    /// it fails or takes more than 5 s).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(self.tls.as_ref(), port, args)
    }

    /// The URL of every node (the seed list of `redis.nodes`): `redis://127.0.0.1:PORT`, or
    /// `rediss://localhost:PORT` over TLS.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| url(self.tls.as_ref(), n.port))
            .collect()
    }

    /// `[tls] ca_file` trusting the cluster's CA (empty for a plain cluster), for the gateway's
    /// config.
    pub fn tls_section(&self) -> String {
        tls_section(self.tls.as_ref())
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
            .filter(|p| self.cli(*p, &["role"]).starts_with("slave"))
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.cli(self.any_live(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// The port of the primary serving `slot`, as the live nodes see it now.
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        let nodes = self.cli(self.any_live(), &["cluster", "nodes"]);
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
        self.ports().iter().all(|p| {
            self.cli(*p, &["cluster", "info"])
                .contains("cluster_state:ok")
        })
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
    tls: Option<ServerTls>,
    dir: TestDir,
}

/// The monitored name.
pub const MASTER_NAME: &str = "mymaster";

impl PrivateSentinel {
    /// [`Self::start_with`] over plain TCP.
    pub fn start() -> PrivateSentinel {
        Self::start_with(Transport::Plain)
    }

    /// Starts them and waits until the replica has synced and the Sentinels see it and each
    /// other (panics with the logs after 30 s).
    pub fn start_with(transport: Transport) -> PrivateSentinel {
        let dir = TestDir::new("redis-sentinel");
        let tls = (transport == Transport::Tls).then(|| ServerTls::new(dir.path()));
        let pport = free_port();
        let primary = Node::spawn(dir.path(), pport, &base_args(pport, tls.as_ref()));
        let rport = free_port();
        let mut rargs = base_args(rport, tls.as_ref());
        rargs.extend(["--replicaof".into(), "127.0.0.1".into(), pport.to_string()]);
        let replica = Node::spawn(dir.path(), rport, &rargs);
        for n in [&primary, &replica] {
            wait_ping(tls.as_ref(), n, "server");
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            let listen: String = match &tls {
                None => format!("port {port}\n"),
                Some(tls) => tls
                    .settings(port)
                    .iter()
                    .map(|(k, v)| format!("{k} {v}\n"))
                    .collect(),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndaemonize no\n\
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
            tls,
            dir,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            s.replica_synced()
                && s.sentinels.iter().all(|n| {
                    let m = s.cli(n.port, &["sentinel", "master", MASTER_NAME]);
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
        self.cli(self.replica.port, &["info", "replication"])
            .contains("master_link_status:up")
    }

    /// `redis-cli -p PORT ARGS...` (with TLS on a TLS deployment), its standard output (empty
    /// when it fails or takes more than 5 s).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(self.tls.as_ref(), port, args)
    }

    /// `[tls] ca_file` trusting the deployment's CA (empty for a plain one), for the gateway's
    /// config.
    pub fn tls_section(&self) -> String {
        tls_section(self.tls.as_ref())
    }

    /// `redis = { mode = "sentinel", nodes = [...], master_name = "mymaster" }` (`rediss://`
    /// Sentinels over TLS).
    pub fn redis_table(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("\"{}\"", url(self.tls.as_ref(), n.port)))
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
            let out = self.cli(
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
