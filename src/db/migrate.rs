//! The migration runner behind `omsgate migrate`: applies the bundled `migrations/NNNN_name.sql`
//! files in order, records each in `omsgate_migrations` with its checksum, and refuses to run when
//! an applied migration has changed.
//!
//! Built for managed PostgreSQL and poolers: everything goes over the simple query protocol
//! (works through PgBouncer/Supavisor in session mode), nothing needs a superuser (building an
//! index needs only ownership of the table), and two runners are kept apart by a session
//! advisory lock. The lock is polled with `pg_try_advisory_lock` rather than awaited with
//! `pg_advisory_lock`: a backend blocked inside a statement holds a snapshot, and
//! `CREATE INDEX CONCURRENTLY` in the other runner would wait for that snapshot forever.
//!
//! A migration whose first line is `-- omsgate: no-transaction` runs outside a transaction, one
//! statement at a time (needed for `CREATE INDEX CONCURRENTLY`); any other migration runs in one
//! transaction together with its bookkeeping row. An index left invalid by an interrupted
//! concurrent build (`pg_index.indisvalid = false`) is dropped and built again.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{check_identifier, quote_ident, DbError};

/// The marker line that makes a migration run outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- omsgate: no-transaction";

/// One bundled migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration<'a> {
    /// Its number, from the file name (`0001_...` → 1); applied in ascending order.
    pub version: u32,
    /// Its name, from the file name (`0001_idx_invoices.sql` → `idx_invoices`).
    pub name: &'a str,
    /// The SQL text.
    pub sql: &'a str,
}

/// `migrations/{version}_{name}.sql`, embedded, for each `"version" "name"` pair.
macro_rules! bundled {
    ($($version:literal $name:literal),* $(,)?) => {
        &[$(Migration {
            version: parse_version($version),
            name: $name,
            sql: include_str!(concat!("../../migrations/", $version, "_", $name, ".sql")),
        }),*]
    };
}

/// `"0001"` → 1, at compile time.
const fn parse_version(digits: &str) -> u32 {
    let bytes = digits.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "a migration version is decimal digits"
        );
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// The migrations embedded in the binary, in order. Keep in sync with `migrations/` (a unit test
/// checks it).
pub static MIGRATIONS: &[Migration<'static>] = bundled![
    "0001" "idx_invoices_tenant_status_date",
    "0002" "idx_payments_tenant_date",
    "0003" "idx_audit_events_tenant_timestamp",
    "0004" "idx_invoice_lines_invoice",
    "0005" "idx_payments_invoice",
    "0006" "query_functions",
    "0007" "audit_events_event_id",
    "0008" "audit_events_request_id_unique",
];

/// The tables and columns each bundled migration that is not made only of index builds needs
/// (those of index builds are read from their statements). When the OMS's schema lacks one, the
/// migration is skipped instead of failing the run. Kept here rather than in the files so that
/// the files' checksums stay those already recorded.
/// `(table, columns)` a migration needs.
type Requires = &'static [(&'static str, &'static [&'static str])];

const BUNDLED_REQUIRES: &[(u32, Requires)] = &[
    (
        6,
        &[
            (
                "invoices",
                &[
                    "id",
                    "tenant_id",
                    "invoice_number",
                    "invoice_status",
                    "invoice_date",
                    "customer",
                    "currency",
                    "total",
                    "created_at",
                    "updated_at",
                ],
            ),
            (
                "invoice_lines",
                &[
                    "id",
                    "invoice_id",
                    "tenant_id",
                    "line_no",
                    "sku",
                    "description",
                    "quantity",
                    "unit_price",
                    "amount",
                ],
            ),
            (
                "payments",
                &[
                    "id",
                    "tenant_id",
                    "invoice_id",
                    "payment_date",
                    "amount",
                    "method",
                ],
            ),
        ],
    ),
    (7, &[("audit_events", &["request_id"])]),
    // 0007, which runs first, adds `event_id`.
    (8, &[("audit_events", &["request_id"])]),
];

impl Migration<'_> {
    /// `0001_name`, as the file is named.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }

    /// A checksum of the SQL text (FNV-1a 64 over the text with CRLF turned into LF, so a
    /// checkout with Windows line endings does not look changed).
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.sql.replace("\r\n", "\n").bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("fnv1a64:{h:016x}")
    }

    /// Whether it runs inside a transaction (no `-- omsgate: no-transaction` first line).
    pub fn transactional(&self) -> bool {
        self.sql.lines().next().map(str::trim) != Some(NO_TRANSACTION_MARKER)
    }

    /// The names of the indexes it builds with `CREATE INDEX CONCURRENTLY`.
    pub fn concurrent_indexes(&self) -> Vec<String> {
        split_statements(self.sql)
            .iter()
            .filter_map(|s| concurrent_index_name(s))
            .collect()
    }
}

/// The name of the index a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ...`
/// statement builds.
fn concurrent_index_name(statement: &str) -> Option<String> {
    let text = strip_comments(statement).to_ascii_lowercase();
    let mut words = text.split_whitespace().peekable();
    let mut take = |w: &str| words.next_if_eq(&w).is_some();
    if !take("create") {
        return None;
    }
    take("unique");
    if !take("index") || !take("concurrently") {
        return None;
    }
    if take("if") && !(take("not") && take("exists")) {
        return None;
    }
    let name = words.next()?.trim_matches('"');
    (name != "on").then(|| name.to_string())
}

/// The table and plain columns of a `CREATE [UNIQUE] INDEX CONCURRENTLY ... ON table (a, b)`
/// statement (names unquoted, lower-cased; a schema prefix dropped; expressions left out).
fn index_target(statement: &str) -> Option<(String, Vec<String>)> {
    concurrent_index_name(statement)?;
    let text = strip_comments(statement).to_ascii_lowercase();
    let after = text.split_once(" on ")?.1.trim_start();
    let after = after.strip_prefix("only ").unwrap_or(after).trim_start();
    let open = after.find('(')?;
    let table = after[..open].split_whitespace().next()?;
    let table = table.rsplit('.').next()?.trim_matches('"').to_string();
    let close = after.rfind(')')?;
    let columns = after[open + 1..close]
        .split(',')
        .filter_map(|c| {
            let word = c.split_whitespace().next()?.trim_matches('"');
            word.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                .then(|| word.to_string())
        })
        .collect();
    Some((table, columns))
}

fn strip_comments(sql: &str) -> String {
    sql.lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits SQL text into statements at top-level `;`, respecting quotes, dollar quotes and
/// comments. Empty statements (only whitespace or comments) are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    current.push(chars[i]);
                    i += 1;
                }
                continue;
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let start = i;
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i = (i + 2).min(chars.len());
                current.extend(&chars[start..i]);
                continue;
            }
            '\'' | '"' => {
                current.push(c);
                i += 1;
                while i < chars.len() {
                    current.push(chars[i]);
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            current.push(c);
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            '$' => {
                // A dollar quote: `$$` or `$tag$`.
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                if chars.get(j) == Some(&'$') {
                    let tag: String = chars[i..=j].iter().collect();
                    current.push_str(&tag);
                    i = j + 1;
                    let rest: String = chars[i..].iter().collect();
                    match rest.find(&tag) {
                        Some(end) => {
                            current.push_str(&rest[..end + tag.len()]);
                            i += rest[..end + tag.len()].chars().count();
                        }
                        None => {
                            current.push_str(&rest);
                            i = chars.len();
                        }
                    }
                    continue;
                }
                current.push(c);
            }
            ';' => {
                push_statement(&mut out, &current);
                current.clear();
            }
            _ => current.push(c),
        }
        i += 1;
    }
    push_statement(&mut out, &current);
    out
}

fn push_statement(out: &mut Vec<String>, text: &str) {
    if !strip_comments(text).trim().is_empty() {
        out.push(text.trim().to_string());
    }
}

// === Status ===

/// What the database says about one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Recorded with the same checksum.
    Applied {
        /// When (RFC 3339, UTC).
        applied_at: String,
        /// How long it took.
        duration_ms: i64,
    },
    /// Not recorded yet.
    Pending,
    /// Recorded with a different checksum: the bundled file changed after it was applied.
    Changed {
        /// The checksum recorded when it was applied.
        recorded: String,
    },
    /// Not recorded, and not applicable: a bundled index migration whose table or column the
    /// OMS's schema lacks. Not recorded either, so it runs once the column exists.
    Skipped {
        /// What is missing (`table invoice_lines has no column line_no`).
        reason: String,
    },
}

/// One line of `omsgate migrate status`.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// `0001_name`.
    pub label: String,
    /// The migration's number.
    pub version: u32,
    /// Its state.
    pub state: State,
    /// Indexes of this migration that exist but are invalid (an interrupted concurrent build).
    pub invalid_indexes: Vec<String>,
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Applied {
                applied_at,
                duration_ms,
            } => write!(
                f,
                "{:<42} applied          {applied_at} ({duration_ms} ms)",
                self.label
            )?,
            State::Pending => write!(f, "{:<42} pending", self.label)?,
            State::Changed { .. } => write!(f, "{:<42} CHANGED-CHECKSUM", self.label)?,
            State::Skipped { reason } => write!(
                f,
                "{:<42} skipped          ({reason}: the schema differs from the reference one)",
                self.label
            )?,
        }
        for idx in &self.invalid_indexes {
            write!(
                f,
                "  [index {idx} is INVALID; `omsgate migrate` rebuilds it]"
            )?;
        }
        Ok(())
    }
}

/// The whole status: one line per bundled migration, and the recorded versions this binary does
/// not know (applied by a newer omsgate).
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Bundled migrations, in order.
    pub migrations: Vec<MigrationStatus>,
    /// `(version, name)` recorded in the database but not bundled.
    pub unknown: Vec<(u32, String)>,
}

impl Status {
    /// Migrations not applied yet.
    pub fn pending(&self) -> usize {
        self.migrations
            .iter()
            .filter(|m| m.state == State::Pending)
            .count()
    }

    /// Migrations skipped because the schema lacks their table or column.
    pub fn skipped(&self) -> usize {
        self.migrations
            .iter()
            .filter(|m| matches!(m.state, State::Skipped { .. }))
            .count()
    }

    /// Whether everything is applied (or skipped), unchanged and valid.
    pub fn up_to_date(&self) -> bool {
        self.migrations.iter().all(|m| {
            matches!(m.state, State::Applied { .. } | State::Skipped { .. })
                && m.invalid_indexes.is_empty()
        })
    }
}

// === Runner ===

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print the SQL that would run instead of running it.
    pub dry_run: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Labels of the migrations applied by this run.
    pub applied: Vec<String>,
    /// Invalid indexes dropped and built again.
    pub rebuilt: Vec<String>,
    /// Whether this run had to wait for another runner's lock.
    pub waited_for_lock: bool,
}

/// The `source` of the bundled migrations in `omsgate_migrations`.
pub const BUNDLED: &str = "bundled";
/// The `source` of the operator's migrations (`omsgate migrate --dir`).
pub const OPERATOR: &str = "operator";

/// The operator's migrations of `dir`: every `NNNN_name.sql` file (`name` of
/// `[A-Za-z0-9_]`), as `(version, name, sql)` sorted by version. Any other `.sql` file name, or
/// two files with one version, is an error; files not ending in `.sql` are ignored.
pub fn load_dir(dir: &std::path::Path) -> Result<Vec<(u32, String, String)>, DbError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| DbError::Config(format!("--dir {}: {e}", dir.display())))?;
    let mut out: Vec<(u32, String, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DbError::Config(format!("--dir {}: {e}", dir.display())))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        let parsed = stem.split_once('_').and_then(|(v, n)| {
            let ok = !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            ok.then(|| Some((v.parse::<u32>().ok()?, n.to_string())))
                .flatten()
        });
        let Some((version, name)) = parsed else {
            return Err(DbError::Config(format!(
                "--dir {}: `{file}` is not named NNNN_name.sql (digits, `_`, then letters, digits \
                 and `_`)",
                dir.display()
            )));
        };
        let sql = std::fs::read_to_string(entry.path())
            .map_err(|e| DbError::Config(format!("{}: {e}", entry.path().display())))?;
        if let Some(other) = out.iter().find(|m| m.0 == version) {
            return Err(DbError::Config(format!(
                "--dir {}: `{file}` and `{:04}_{}.sql` have the same version {version}",
                dir.display(),
                other.0,
                other.1
            )));
        }
        out.push((version, name, sql));
    }
    out.sort_by_key(|m| m.0);
    Ok(out)
}

/// Applies migrations to one schema over one connection.
pub struct Migrator<'m> {
    schema: String,
    migrations: &'m [Migration<'m>],
    lock_poll: Duration,
    source: &'static str,
}

impl Migrator<'static> {
    /// A runner for the bundled migrations in `schema`.
    pub fn new(schema: &str) -> Result<Migrator<'static>, DbError> {
        Migrator::with_migrations(schema, MIGRATIONS)
    }
}

impl<'m> Migrator<'m> {
    /// A runner for `migrations` (sorted by version) in `schema`.
    pub fn with_migrations(
        schema: &str,
        migrations: &'m [Migration<'m>],
    ) -> Result<Migrator<'m>, DbError> {
        check_identifier(schema).map_err(DbError::Config)?;
        if migrations.windows(2).any(|w| w[0].version >= w[1].version) {
            return Err(DbError::Config(
                "migrations must be sorted by unique version".into(),
            ));
        }
        Ok(Migrator {
            schema: schema.to_string(),
            migrations,
            lock_poll: Duration::from_millis(200),
            source: BUNDLED,
        })
    }

    /// The same runner recording its migrations under `source` ([`BUNDLED`] by default,
    /// [`OPERATOR`] for `--dir`).
    pub fn with_source(mut self, source: &'static str) -> Migrator<'m> {
        self.source = source;
        self
    }

    /// The source its migrations are recorded under.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The advisory lock key: one per schema, so runners on different schemas do not wait for
    /// each other.
    pub fn lock_key(&self) -> i64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in format!("omsgate_migrations:{}", self.schema).bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h as i64
    }

    /// Prepares the session: checks the schema exists, points `search_path` at it, and lifts the
    /// statement timeout (an index build on a big table takes as long as it takes).
    async fn prepare_session(&self, client: &Client) -> Result<(), DbError> {
        let rows = simple_rows(
            client,
            &format!(
                "SELECT 1 FROM pg_namespace WHERE nspname = {}",
                literal(&self.schema)
            ),
        )
        .await?;
        if rows.is_empty() {
            return Err(DbError::Refused(format!(
                "schema `{}` does not exist in this database; check `[database] schema`",
                self.schema
            )));
        }
        client
            .batch_execute(&format!(
                "SET search_path TO {}; SET statement_timeout = 0",
                quote_ident(&self.schema)
            ))
            .await?;
        Ok(())
    }

    /// Reads the status of every migration.
    pub async fn status(&self, client: &Client) -> Result<Status, DbError> {
        self.prepare_session(client).await?;
        self.read_status(client).await
    }

    async fn read_status(&self, client: &Client) -> Result<Status, DbError> {
        let table = format!("{}.omsgate_migrations", quote_ident(&self.schema));
        let exists = simple_rows(
            client,
            &format!("SELECT to_regclass({}) IS NOT NULL", literal(&table)),
        )
        .await?;
        let mut recorded: Vec<(u32, String, String, String, i64)> = Vec::new();
        let exists = exists.first().and_then(|r| r.first()).map(String::as_str) == Some("t");
        // A table of an older omsgate has no `source` column: all its rows are bundled ones.
        let filter = if !exists {
            None
        } else if self.has_source_column(client).await? {
            Some(format!("WHERE source = {}", literal(self.source)))
        } else if self.source == BUNDLED {
            Some(String::new())
        } else {
            None
        };
        if let Some(filter) = filter {
            for r in simple_rows(
                client,
                &format!(
                    "SELECT version, name, checksum, \
                     to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                     duration_ms FROM {table} {filter} ORDER BY version"
                ),
            )
            .await?
            {
                let version = r[0].parse().unwrap_or(0);
                let duration = r[4].parse().unwrap_or(0);
                recorded.push((version, r[1].clone(), r[2].clone(), r[3].clone(), duration));
            }
        }
        let invalid = self.invalid_indexes(client).await?;
        let mut status = Status::default();
        for m in self.migrations {
            let state = match recorded.iter().find(|r| r.0 == m.version) {
                None => match self.missing_for(client, m).await? {
                    Some(reason) => State::Skipped { reason },
                    None => State::Pending,
                },
                Some(r) if r.2 == m.checksum() => State::Applied {
                    applied_at: r.3.clone(),
                    duration_ms: r.4,
                },
                Some(r) => State::Changed {
                    recorded: r.2.clone(),
                },
            };
            let invalid_indexes = m
                .concurrent_indexes()
                .into_iter()
                .filter(|i| invalid.contains(i))
                .collect();
            status.migrations.push(MigrationStatus {
                label: m.label(),
                version: m.version,
                state,
                invalid_indexes,
            });
        }
        status.unknown = recorded
            .iter()
            .filter(|r| !self.migrations.iter().any(|m| m.version == r.0))
            .map(|r| (r.0, r.1.clone()))
            .collect();
        Ok(status)
    }

    /// For a bundled migration made only of `CREATE INDEX CONCURRENTLY ... ON table (columns)`,
    /// or listed in [`BUNDLED_REQUIRES`]: the first table or column it needs that the schema
    /// lacks.
    async fn missing_for(
        &self,
        client: &Client,
        m: &Migration<'_>,
    ) -> Result<Option<String>, DbError> {
        if self.source != BUNDLED {
            return Ok(None);
        }
        let targets: Vec<(String, Vec<String>)> =
            match BUNDLED_REQUIRES.iter().find(|(v, _)| *v == m.version) {
                Some((_, tables)) => tables
                    .iter()
                    .map(|(t, cols)| (t.to_string(), cols.iter().map(|c| c.to_string()).collect()))
                    .collect(),
                None => {
                    let statements = split_statements(m.sql);
                    let targets: Vec<(String, Vec<String>)> =
                        statements.iter().filter_map(|s| index_target(s)).collect();
                    if targets.is_empty() || targets.len() != statements.len() {
                        return Ok(None);
                    }
                    targets
                }
            };
        for (table, columns) in targets {
            let have: Vec<String> = simple_rows(
                client,
                &format!(
                    "SELECT column_name FROM information_schema.columns \
                     WHERE table_schema = {} AND table_name = {}",
                    literal(&self.schema),
                    literal(&table)
                ),
            )
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect();
            if have.is_empty() {
                return Ok(Some(format!("no table {table}")));
            }
            if let Some(c) = columns.iter().find(|c| !have.contains(c)) {
                return Ok(Some(format!("table {table} has no column {c}")));
            }
        }
        Ok(None)
    }

    async fn has_source_column(&self, client: &Client) -> Result<bool, DbError> {
        let rows = simple_rows(
            client,
            &format!(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = {} \
                 AND table_name = 'omsgate_migrations' AND column_name = 'source'",
                literal(&self.schema)
            ),
        )
        .await?;
        Ok(!rows.is_empty())
    }

    /// Creates the tracking table, or upgrades one of an older omsgate: adds `source` (its rows
    /// are bundled ones) and makes the key `(source, version)`.
    async fn ensure_table(&self, client: &Client) -> Result<(), DbError> {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS omsgate_migrations (\
                   source      text NOT NULL DEFAULT 'bundled',\
                   version     integer NOT NULL,\
                   name        text NOT NULL,\
                   checksum    text NOT NULL,\
                   applied_at  timestamptz NOT NULL DEFAULT now(),\
                   duration_ms bigint NOT NULL,\
                   PRIMARY KEY (source, version));\
                 ALTER TABLE omsgate_migrations \
                   ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'bundled'",
            )
            .await?;
        let key = simple_rows(
            client,
            "SELECT conname, array_length(conkey, 1) FROM pg_constraint \
             WHERE conrelid = 'omsgate_migrations'::regclass AND contype = 'p'",
        )
        .await?;
        match key.first() {
            Some(r) if r[1] == "2" => {}
            Some(r) => {
                client
                    .batch_execute(&format!(
                        "ALTER TABLE omsgate_migrations DROP CONSTRAINT {}, \
                         ADD PRIMARY KEY (source, version)",
                        quote_ident(&r[0])
                    ))
                    .await?
            }
            None => {
                client
                    .batch_execute(
                        "ALTER TABLE omsgate_migrations ADD PRIMARY KEY (source, version)",
                    )
                    .await?
            }
        }
        Ok(())
    }

    /// Names of the bundled migrations' indexes that exist in the schema but are invalid.
    async fn invalid_indexes(&self, client: &Client) -> Result<Vec<String>, DbError> {
        let names: Vec<String> = self
            .migrations
            .iter()
            .flat_map(|m| m.concurrent_indexes())
            .collect();
        if names.is_empty() {
            return Ok(vec![]);
        }
        let list = names
            .iter()
            .map(|n| literal(n))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = simple_rows(
            client,
            &format!(
                "SELECT c.relname FROM pg_index x \
                 JOIN pg_class c ON c.oid = x.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND NOT x.indisvalid AND c.relname IN ({list}) \
                 ORDER BY 1",
                literal(&self.schema)
            ),
        )
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    /// Applies every pending migration (and rebuilds invalid indexes), writing one progress line
    /// per step to `out`. With `dry_run`, prints the SQL instead and changes nothing.
    pub async fn run(
        &self,
        client: &Client,
        options: RunOptions,
        out: &mut dyn Write,
    ) -> Result<RunReport, DbError> {
        self.prepare_session(client).await?;
        if options.dry_run {
            return self.dry_run(client, out).await;
        }
        let mut report = RunReport {
            waited_for_lock: self.lock(client, out).await?,
            ..RunReport::default()
        };
        let result = self.run_locked(client, out, &mut report).await;
        let unlocked = client
            .batch_execute(&format!("SELECT pg_advisory_unlock({})", self.lock_key()))
            .await;
        result?;
        unlocked?;
        Ok(report)
    }

    async fn lock(&self, client: &Client, out: &mut dyn Write) -> Result<bool, DbError> {
        let started = Instant::now();
        let mut announced = false;
        let mut last_note = Instant::now();
        loop {
            let rows = simple_rows(
                client,
                &format!("SELECT pg_try_advisory_lock({})", self.lock_key()),
            )
            .await?;
            if rows.first().and_then(|r| r.first()).map(String::as_str) == Some("t") {
                if announced {
                    writeln!(out, "Lock acquired after {}.", elapsed(started))?;
                }
                return Ok(announced);
            }
            if !announced || last_note.elapsed() >= Duration::from_secs(10) {
                writeln!(
                    out,
                    "Another `omsgate migrate` holds the migration lock on schema `{}`; waiting \
                     ({} so far).",
                    self.schema,
                    elapsed(started)
                )?;
                announced = true;
                last_note = Instant::now();
            }
            tokio::time::sleep(self.lock_poll).await;
        }
    }

    async fn run_locked(
        &self,
        client: &Client,
        out: &mut dyn Write,
        report: &mut RunReport,
    ) -> Result<(), DbError> {
        self.ensure_table(client).await?;
        let status = self.read_status(client).await?;
        self.refuse_changed(&status)?;
        for s in &status.migrations {
            if let State::Skipped { reason } = &s.state {
                writeln!(
                    out,
                    "Skipping {}: {reason} (the schema differs from the reference one; it runs \
                     once they exist).",
                    s.label
                )?;
            }
        }
        let steps: Vec<(&Migration, &MigrationStatus)> = self
            .migrations
            .iter()
            .zip(&status.migrations)
            .filter(|(_, s)| s.state == State::Pending || !s.invalid_indexes.is_empty())
            .collect();
        if steps.is_empty() {
            if self.source == BUNDLED {
                writeln!(
                    out,
                    "Schema `{}` is up to date ({} migrations applied).",
                    self.schema,
                    self.migrations.len()
                )?;
            } else {
                writeln!(
                    out,
                    "Schema `{}`: the {} migrations are up to date ({} applied).",
                    self.schema,
                    self.source,
                    self.migrations.len()
                )?;
            }
            return Ok(());
        }
        let total = Instant::now();
        for (n, (m, s)) in steps.iter().enumerate() {
            for idx in &s.invalid_indexes {
                let started = Instant::now();
                write!(
                    out,
                    "[{}/{}] {}: dropping invalid index {idx} ... ",
                    n + 1,
                    steps.len(),
                    m.label()
                )?;
                out.flush()?;
                client
                    .batch_execute(&format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                        quote_ident(&self.schema),
                        quote_ident(idx)
                    ))
                    .await?;
                writeln!(out, "done in {}", elapsed(started))?;
                report.rebuilt.push(idx.clone());
            }
            let started = Instant::now();
            let label = match self.source {
                BUNDLED => m.label(),
                other => format!("{other} {}", m.label()),
            };
            write!(out, "[{}/{}] {label} ... ", n + 1, steps.len())?;
            out.flush()?;
            match self.apply(client, m, s.state == State::Pending).await {
                Ok(()) => {
                    writeln!(out, "done in {}", elapsed(started))?;
                    if s.state == State::Pending {
                        report.applied.push(m.label());
                    }
                }
                Err(e) => {
                    writeln!(out, "FAILED after {}", elapsed(started))?;
                    return Err(e);
                }
            }
        }
        writeln!(
            out,
            "Applied {} migration(s), rebuilt {} index(es) in {}.",
            report.applied.len(),
            report.rebuilt.len(),
            elapsed(total)
        )?;
        Ok(())
    }

    fn refuse_changed(&self, status: &Status) -> Result<(), DbError> {
        let changed: Vec<String> = status
            .migrations
            .iter()
            .filter_map(|s| match &s.state {
                State::Changed { recorded } => {
                    let now = self
                        .migrations
                        .iter()
                        .find(|m| m.version == s.version)
                        .map(|m| m.checksum())
                        .unwrap_or_default();
                    Some(format!(
                        "  - {} (recorded {recorded}, {} {now})",
                        s.label, self.source
                    ))
                }
                _ => None,
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        Err(DbError::Refused(format!(
            "refusing to migrate schema `{}`: {} applied migration(s) differ from the {} \
             file(s):\n{}\nAn applied migration must never change; restore the original file and \
             put the change in a new migration.",
            self.schema,
            changed.len(),
            self.source,
            changed.join("\n")
        )))
    }

    /// Runs one migration and records it (`record = false` for an index rebuild of an already
    /// recorded migration).
    async fn apply(&self, client: &Client, m: &Migration<'_>, record: bool) -> Result<(), DbError> {
        let started = Instant::now();
        let insert = |duration: Duration| {
            format!(
                "INSERT INTO omsgate_migrations (source, version, name, checksum, duration_ms) \
                 VALUES ({}, {}, {}, {}, {})",
                literal(self.source),
                m.version,
                literal(m.name),
                literal(&m.checksum()),
                duration.as_millis()
            )
        };
        if m.transactional() {
            client.batch_execute("BEGIN").await?;
            let result = async {
                client.batch_execute(m.sql).await?;
                if record {
                    client.batch_execute(&insert(started.elapsed())).await?;
                }
                client.batch_execute("COMMIT").await
            }
            .await;
            if let Err(e) = result {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e.into());
            }
        } else {
            // One statement per message: several statements in one simple query would form an
            // implicit transaction, where CREATE INDEX CONCURRENTLY cannot run.
            for statement in split_statements(m.sql) {
                client.batch_execute(&statement).await?;
            }
            if record {
                client.batch_execute(&insert(started.elapsed())).await?;
            }
        }
        Ok(())
    }

    async fn dry_run(&self, client: &Client, out: &mut dyn Write) -> Result<RunReport, DbError> {
        let status = self.read_status(client).await?;
        self.refuse_changed(&status)?;
        let mut any = false;
        for (m, s) in self.migrations.iter().zip(&status.migrations) {
            if let State::Skipped { reason } = &s.state {
                writeln!(out, "-- {}: skipped ({reason})\n", m.label())?;
            }
            for idx in &s.invalid_indexes {
                any = true;
                writeln!(out, "-- {}: rebuild invalid index {idx}", m.label())?;
                writeln!(
                    out,
                    "DROP INDEX CONCURRENTLY IF EXISTS {}.{};\n",
                    quote_ident(&self.schema),
                    quote_ident(idx)
                )?;
            }
            if s.state == State::Pending || !s.invalid_indexes.is_empty() {
                any = true;
                print_migration(out, m)?;
            }
        }
        if !any {
            writeln!(
                out,
                "-- Schema `{}` is up to date; nothing to run.",
                self.schema
            )?;
        }
        Ok(RunReport::default())
    }
}

/// Writes a migration's SQL as `--dry-run` shows it.
pub fn print_migration(out: &mut dyn Write, m: &Migration<'_>) -> std::io::Result<()> {
    let mode = if m.transactional() {
        "in a transaction"
    } else {
        "outside a transaction"
    };
    writeln!(
        out,
        "-- ==== {} ({mode}, checksum {}) ====",
        m.label(),
        m.checksum()
    )?;
    writeln!(out, "{}", m.sql.trim_end())?;
    writeln!(out)
}

/// Runs a simple query and returns its rows as text (NULL as empty string).
async fn simple_rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, DbError> {
    let mut rows = Vec::new();
    for msg in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = msg {
            rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// A SQL string literal (standard-conforming strings).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn elapsed(since: Instant) -> String {
    let d = since.elapsed();
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_targets_are_read_from_the_statement() {
        assert_eq!(
            index_target(
                "-- c\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i\n ON public.\"Invoices\" (tenant_id, lower(x), \"line_no\" DESC)"
            ),
            Some((
                "invoices".to_string(),
                vec!["tenant_id".to_string(), "line_no".to_string()]
            ))
        );
        assert_eq!(index_target("ALTER TABLE t ADD COLUMN c int"), None);
        for m in &MIGRATIONS[..5] {
            let targets: Vec<_> = split_statements(m.sql)
                .iter()
                .filter_map(|s| index_target(s))
                .collect();
            assert_eq!(targets.len(), 1, "{}", m.label());
        }
    }

    #[test]
    fn bundled_list_matches_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let bundled: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.label()))
            .collect();
        assert_eq!(
            files, bundled,
            "MIGRATIONS must list every file in migrations/, in order"
        );
    }

    #[test]
    fn index_migrations_run_outside_a_transaction() {
        for m in MIGRATIONS {
            let indexes = m.concurrent_indexes();
            assert_eq!(!indexes.is_empty(), !m.transactional(), "{}", m.label());
        }
        assert_eq!(
            MIGRATIONS[0].concurrent_indexes(),
            vec!["idx_invoices_tenant_status_date"]
        );
        assert!(MIGRATIONS[5].transactional());
    }

    #[test]
    fn statements_split_respecting_quotes() {
        let sql =
            "-- a; comment\nSELECT 'a;b';\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ \
                   LANGUAGE sql; /* x; */ SELECT \"q;\" ;\n-- trailing";
        let s = split_statements(sql);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].ends_with("SELECT 'a;b'"));
        assert!(s[1].contains("$$ SELECT 1; $$"));
        assert!(s[2].contains("\"q;\""));
    }

    #[test]
    fn index_names_are_found() {
        assert_eq!(
            concurrent_index_name("CREATE INDEX CONCURRENTLY IF NOT EXISTS x ON t (a)"),
            Some("x".into())
        );
        assert_eq!(
            concurrent_index_name("create unique index concurrently \"y\" on t (a)"),
            Some("y".into())
        );
        assert_eq!(
            concurrent_index_name("CREATE INDEX CONCURRENTLY ON t (a)"),
            None
        );
        assert_eq!(concurrent_index_name("CREATE INDEX x ON t (a)"), None);
    }

    #[test]
    fn checksums_ignore_line_endings_only() {
        let a = Migration {
            version: 1,
            name: "a",
            sql: "SELECT 1;\nSELECT 2;\n",
        };
        let b = Migration {
            sql: "SELECT 1;\r\nSELECT 2;\r\n",
            ..a
        };
        let c = Migration {
            sql: "SELECT 1;\nSELECT 3;\n",
            ..a
        };
        assert_eq!(a.checksum(), b.checksum());
        assert_ne!(a.checksum(), c.checksum());
    }
}
