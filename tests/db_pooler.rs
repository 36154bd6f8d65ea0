//! The pooled query path behind a real transaction-mode pooler (PgBouncer, as Supabase's and
//! most managed PostgreSQL offerings put in front of the database), over TLS with
//! `sslmode=verify-full` (issue 16: "works through PgBouncer/Supavisor"). PgBouncer hands each
//! transaction to whichever server connection is free, so nothing may rely on session state:
//! `prepared_statements = false` sends unnamed statements, and a `database.schema` other than
//! `public` must be on the server session's `search_path` by the pooler's or the role's doing
//! (PgBouncer refuses the `options` startup parameter the gateway asks for it with, or with
//! `ignore_startup_parameters = options` drops it) — the pool checks that on every new
//! connection and falls back to the OMS, naming the fix, when it is not.

mod common;
mod db_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, TestDir};
use db_support::{database_url, seeded_schema};
use omsgate::db::query::QueryPaths;
use omsgate::db::{DatabaseConfig, DatabaseFile};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A PgBouncer in transaction mode in front of the shared test PostgreSQL, with client TLS.
/// Two database aliases: `plain` (the server's defaults) and `oms` (its `connect_query` puts
/// `schema` on the `search_path`, as an operator would for a non-`public` OMS schema).
struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    fn start(dir: &Path, schema: &str, cert: &Path, key: &Path) -> PgBouncer {
        let upstream: tokio_postgres::Config = database_url().parse().expect("database URL");
        let (host, port) = match (upstream.get_hosts().first(), upstream.get_ports().first()) {
            (Some(tokio_postgres::config::Host::Tcp(h)), Some(p)) => (h.clone(), *p),
            _ => ("127.0.0.1".to_string(), 5432),
        };
        let dbname = upstream.get_dbname().unwrap_or("test").to_string();
        let user = upstream.get_user().unwrap_or("postgres").to_string();
        let listen = free_port();
        let server = format!("host={host} port={port} dbname={dbname} user={user}");
        let config = format!(
            "[databases]\n\
             plain = {server}\n\
             oms = {server} connect_query='SET search_path TO \"{schema}\", public'\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 2\n\
             max_client_conn = 200\n\
             ignore_startup_parameters = options\n\
             server_tls_sslmode = disable\n\
             client_tls_sslmode = require\n\
             client_tls_cert_file = {cert}\n\
             client_tls_key_file = {key}\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        let mut cmd = Command::new(pgbouncer_bin());
        // PgBouncer refuses to run as root: as root, hand it the postgres user and its files.
        if unsafe { libc::geteuid() } == 0 {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()
                .expect("chown");
            assert!(chown.success(), "chown the PgBouncer files to postgres");
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer (Debian package pgbouncer; scripts/test installs it)");
        let bouncer = PgBouncer {
            child,
            port: listen,
            dir: dir.to_path_buf(),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "PgBouncer did not listen on {listen}: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// A URL of `alias` through the pooler, verified against `ca` with the name `localhost`.
    fn url(&self, alias: &str, ca: &Path) -> String {
        let user = database_url()
            .parse::<tokio_postgres::Config>()
            .ok()
            .and_then(|c| c.get_user().map(str::to_string))
            .unwrap_or_else(|| "postgres".into());
        format!(
            "postgres://{user}@localhost:{}/{alias}?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pgbouncer_bin() -> PathBuf {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pgbouncer"))
}

/// A throwaway CA (written to `dir/ca.pem`) and a server certificate for `localhost`
/// (`dir/server.pem`, `dir/server.key`).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "omsgate test CA pgbouncer");
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

fn database(url: &str, schema: &str, prepared: bool) -> DatabaseConfig {
    let file = DatabaseFile {
        url: url.to_string(),
        schema: schema.to_string(),
        prepared_statements: prepared,
        max_connections: 8,
        acquire_timeout: "2s".into(),
        connect_timeout: "2s".into(),
        ..Default::default()
    };
    let mut problems = omsgate::config::Problems::default();
    let config = DatabaseConfig::from_file(&file, &mut problems);
    assert!(problems.is_empty(), "{:?}", problems.list());
    config
}

fn params(id: &str) -> omsgate::routes::Params {
    omsgate::routes::Params(vec![("id".into(), id.to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_path_through_a_transaction_mode_pgbouncer_over_verify_full() {
    let (schema, dataset) = seeded_schema("pgbouncer", 23, 3, 30).await;
    let dir = TestDir::new("pgbouncer");
    let (ca, cert, key) = pki(dir.path());
    let bouncer = PgBouncer::start(dir.path(), &schema.name, &cert, &key);
    let query = db_support::reference_query("invoice_with_lines");

    // The reference answers: a direct session-mode pool with prepared statements.
    let direct = QueryPaths::new(&database(&database_url(), &schema.name, true)).unwrap();
    // Through the pooler: unnamed statements, no session state, TLS verified.
    let pooled = std::sync::Arc::new(
        QueryPaths::new(&database(&bouncer.url("oms", &ca), &schema.name, false)).unwrap(),
    );

    // Many requests at once over 8 client connections that PgBouncer multiplexes onto 2 server
    // connections: every answer is the direct one, and each is one statement.
    let invoices: Vec<(String, String)> = dataset
        .invoices
        .iter()
        .map(|i| (i.tenant_id.clone(), i.id.to_string()))
        .collect();
    let sent_before = pooled.statements_sent();
    let mut tasks = Vec::new();
    for (tenant, id) in invoices.iter().cloned() {
        let pooled = pooled.clone();
        tasks.push(tokio::spawn(async move {
            let got = pooled
                .answer(query, &tenant, None, &params(&id), None)
                .await;
            (tenant, id, got.map_err(|e| e.to_string()))
        }));
    }
    for task in tasks {
        let (tenant, id, got) = task.await.unwrap();
        let got = got
            .unwrap_or_else(|e| panic!("{tenant} {id} through PgBouncer: {e}\n{}", bouncer.log()))
            .expect("an answer");
        let want = direct
            .answer(query, &tenant, None, &params(&id), None)
            .await
            .unwrap()
            .expect("an answer");
        assert_eq!(got.status, 200, "{tenant} {id}");
        assert_eq!((got.status, &got.body), (want.status, &want.body), "{id}");
    }
    assert_eq!(
        pooled.statements_sent() - sent_before,
        invoices.len() as u64,
        "one unnamed statement per request, no prepares"
    );
    // Another tenant's invoice is not found through the pooler either.
    let (tenant, _) = &invoices[0];
    let other = invoices.iter().find(|(t, _)| t != tenant).unwrap();
    let got = pooled
        .answer(query, tenant, None, &params(&other.1), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, 404);

    // The alias without the schema on its search_path: the pool refuses its connections
    // (the request would go to the OMS) with the fix in the error, rather than run the
    // queries against another schema.
    let bare = QueryPaths::new(&database(&bouncer.url("plain", &ca), &schema.name, false)).unwrap();
    let (tenant, id) = &invoices[0];
    let err = bare
        .answer(query, tenant, None, &params(id), None)
        .await
        .map(|r| r.map(|r| r.status))
        .expect_err("no answer from a connection on another search_path")
        .to_string();
    assert!(
        err.contains("is not on the search_path") && err.contains("ALTER ROLE"),
        "{err}"
    );

    // `check-config --database` says the same about the pooler alias, and nothing about the
    // one that has the schema.
    let queries = db_support::reference_queries();
    let problems = omsgate::db::queries::check_against_database(
        &database(&bouncer.url("plain", &ca), &schema.name, false),
        queries,
    )
    .await
    .unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.key == "database.schema" && p.reason.contains("search_path")),
        "{problems:?}"
    );
    let problems = omsgate::db::queries::check_against_database(
        &database(&bouncer.url("oms", &ca), &schema.name, false),
        queries,
    )
    .await
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    schema.drop_schema().await;
}
