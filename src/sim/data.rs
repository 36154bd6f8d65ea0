//! Deterministic seed data for the simulated OMS: tenants, invoices with lines, payments.
//!
//! [`generate`] gives the same [`Dataset`] for the same arguments, so the simulated OMS and a
//! PostgreSQL database seeded from it hold identical rows, and the gateway's pooled query path
//! can be compared byte for byte with the simulated legacy API. Each tenant has its own random
//! stream, so a tenant's data does not depend on how many tenants are generated.
//!
//! The stream is SplitMix64 rather than `rand`'s `StdRng`: its output is fixed by the few lines
//! here (`StdRng`'s may change between `rand` releases, and the data must not), and it stays fast
//! in unoptimised test builds, where ChaCha costs microseconds per number.
//!
//! [`invoice_json`] and [`payment_json`] give the legacy API's JSON (key order included); the
//! [`Serialize`] impls of [`Invoice`] and [`Payment`] write the same JSON without building a
//! `serde_json::Value`.

use std::fmt;

use rand::Rng;
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use uuid::Uuid;

/// Invoice statuses, in the legacy API's vocabulary.
pub const STATUSES: [&str; 4] = ["draft", "open", "paid", "void"];
/// Currencies the legacy API accepts.
pub const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
/// Payment methods.
pub const METHODS: [&str; 3] = ["card", "transfer", "cash"];

/// The first tenants' ids and names; later tenants are `tenant-006`, `tenant-007`, ...
const NAMED_TENANTS: [(&str, &str); 5] = [
    ("acme", "Acme Corporation"),
    ("globex", "Globex Corporation"),
    ("initech", "Initech"),
    ("umbrella", "Umbrella Corporation"),
    ("hooli", "Hooli"),
];

const CUSTOMERS: [&str; 24] = [
    "Aperture Science",
    "Black Mesa",
    "Cyberdyne Systems",
    "Dunder Mifflin",
    "Event Horizon Ltd",
    "Frobozz Magic Co",
    "Gringotts",
    "Hanso Foundation",
    "Ingen",
    "Jupiter Mining Corp",
    "Kwik-E-Mart",
    "LexCorp",
    "Massive Dynamic",
    "Nakatomi Trading",
    "Oceanic Airlines",
    "Pied Piper",
    "Quahog Cannery",
    "Rekall",
    "Soylent Corp",
    "Tyrell Corporation",
    "Vandelay Industries",
    "Wayne Enterprises",
    "Weyland-Yutani",
    "Zorg Industries",
];

/// Catalogue: description and unit price in cents. The SKU is derived from the index.
const PRODUCTS: [(&str, i64); 20] = [
    ("Consulting hour", 12_000),
    ("Support plan (monthly)", 4_900),
    ("Onboarding workshop", 95_000),
    ("Licence seat (annual)", 21_900),
    ("Hardware token", 2_450),
    ("Training day", 68_000),
    ("Cloud storage 1 TB (monthly)", 1_999),
    ("Priority support add-on", 15_000),
    ("Data migration", 250_000),
    ("Custom report", 3_750),
    ("API access (monthly)", 9_900),
    ("On-site visit", 45_000),
    ("Backup service (monthly)", 2_900),
    ("Security audit", 320_000),
    ("Integration connector", 18_000),
    ("Printed manual", 1_250),
    ("Extended warranty", 7_999),
    ("SMS bundle (1000)", 3_500),
    ("Design review", 55_000),
    ("Shipping and handling", 995),
];

/// Day number (days since 1970-01-01) of 2023-01-01: seed invoices are dated 2023-01-01 up to
/// 2024-12-31.
const FIRST_DAY: i64 = 19_358;
/// Number of days seed invoice dates span.
const DAY_SPAN: i64 = 731;

/// Everything [`generate`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Tenants, in generation order (`acme` first).
    pub tenants: Vec<Tenant>,
    /// Invoices of all tenants, grouped by tenant, each tenant's in `invoice_number` order.
    pub invoices: Vec<Invoice>,
    /// Payments of all tenants, grouped by tenant.
    pub payments: Vec<Payment>,
}

impl Dataset {
    /// Number of invoice lines over all invoices.
    pub fn line_count(&self) -> usize {
        self.invoices.iter().map(|i| i.lines.len()).sum()
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// `acme`, `globex`, `initech`, `umbrella`, `hooli`, then `tenant-006`, ...
    pub id: String,
    /// Display name.
    pub name: String,
}

/// An invoice with its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// Random (version 4) id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: String,
    /// `INV-000123`, unique per tenant, ascending with `invoice_date`.
    pub invoice_number: String,
    /// One of [`STATUSES`].
    pub invoice_status: String,
    /// `YYYY-MM-DD`.
    pub invoice_date: String,
    /// Customer name.
    pub customer: String,
    /// One of [`CURRENCIES`].
    pub currency: String,
    /// Sum of the lines' `amount_cents`.
    pub total_cents: i64,
    /// RFC 3339 UTC, second precision, `Z` suffix.
    pub created_at: String,
    /// RFC 3339 UTC, second precision, `Z` suffix; not before `created_at`.
    pub updated_at: String,
    /// 1 to 8 lines (seed data), ordered by `line_no` starting at 1.
    pub lines: Vec<InvoiceLine>,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    /// Random (version 4) id.
    pub id: Uuid,
    /// Position in the invoice, from 1.
    pub line_no: i32,
    /// `SKU-10000` style article number.
    pub sku: String,
    /// Article description.
    pub description: String,
    /// Units, at least 1.
    pub quantity: i32,
    /// Price of one unit in cents.
    pub unit_price_cents: i64,
    /// `quantity * unit_price_cents`.
    pub amount_cents: i64,
}

/// A payment against an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Random (version 4) id.
    pub id: Uuid,
    /// Owning tenant (the invoice's).
    pub tenant_id: String,
    /// The invoice paid.
    pub invoice_id: Uuid,
    /// `YYYY-MM-DD`, not before the invoice date.
    pub payment_date: String,
    /// Amount in cents, positive.
    pub amount_cents: i64,
    /// One of [`METHODS`].
    pub method: String,
}

// === generate ===

/// Generates `tenants` tenants with `invoices_per_tenant` invoices each, deterministically from
/// `seed`. Paid invoices have one or two payments summing to their total; about a quarter of the
/// open ones have a partial payment; drafts and void invoices have none.
pub fn generate(seed: u64, tenants: usize, invoices_per_tenant: usize) -> Dataset {
    let mut out = Dataset {
        tenants: Vec::with_capacity(tenants),
        invoices: Vec::with_capacity(tenants * invoices_per_tenant),
        payments: Vec::new(),
    };
    for t in 0..tenants {
        let tenant = tenant_at(t);
        let mut rng = SeedRng(tenant_seed(seed, t));
        generate_tenant(&mut rng, &tenant.id, invoices_per_tenant, &mut out);
        out.tenants.push(tenant);
    }
    out
}

/// The `i`-th tenant (0-based) of every dataset.
pub fn tenant_at(i: usize) -> Tenant {
    match NAMED_TENANTS.get(i) {
        Some((id, name)) => Tenant {
            id: (*id).into(),
            name: (*name).into(),
        },
        None => Tenant {
            id: format!("tenant-{:03}", i + 1),
            name: format!("Tenant {:03}", i + 1),
        },
    }
}

fn tenant_seed(seed: u64, index: usize) -> u64 {
    // SplitMix64 streams are one sequence entered at different points, so start states must be
    // scattered (hashed), not evenly spaced, or neighbouring tenants would share their numbers.
    mix64(mix64(seed) ^ index as u64)
}

/// SplitMix64's output function: a bijective 64-bit hash.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn generate_tenant(rng: &mut SeedRng, tenant_id: &str, n: usize, out: &mut Dataset) {
    // Numbers ascend with dates, as in a real ledger: draw the dates first, then number them.
    let mut days: Vec<i64> = (0..n)
        .map(|_| FIRST_DAY + rng.below_i64(DAY_SPAN))
        .collect();
    days.sort_unstable();
    for (i, day) in days.into_iter().enumerate() {
        let id = rng.uuid();
        let status = match rng.below(100) {
            0..10 => "draft",
            10..40 => "open",
            40..90 => "paid",
            _ => "void",
        };
        let line_count = 1 + rng.pick(8);
        let mut lines = Vec::with_capacity(line_count);
        for line_no in 1..=line_count {
            let p = rng.pick(PRODUCTS.len());
            let (description, unit_price_cents) = PRODUCTS[p];
            let quantity = 1 + rng.below_i64(20);
            lines.push(InvoiceLine {
                id: rng.uuid(),
                line_no: line_no as i32,
                sku: format!("SKU-{}", 10_000 + p * 37),
                description: description.into(),
                quantity: quantity as i32,
                unit_price_cents,
                amount_cents: quantity * unit_price_cents,
            });
        }
        let total_cents = lines.iter().map(|l| l.amount_cents).sum();
        let created = day * 86_400 + 8 * 3_600 + rng.below_i64(10 * 3_600);
        let updated = match status {
            "draft" => created,
            "open" => created + rng.below_i64(2 * 86_400),
            _ => created + 86_400 + rng.below_i64(29 * 86_400),
        };
        let method = METHODS[rng.pick(METHODS.len())];
        let payment = |rng: &mut SeedRng, amount_cents: i64, on: i64| Payment {
            id: rng.uuid(),
            tenant_id: tenant_id.into(),
            invoice_id: id,
            payment_date: date(on),
            amount_cents,
            method: method.into(),
        };
        match status {
            "paid" if rng.below(100) < 15 && total_cents >= 2 => {
                let first = total_cents / 2;
                let first_day = day + rng.below_i64(15);
                out.payments.push(payment(rng, first, first_day));
                out.payments
                    .push(payment(rng, total_cents - first, updated / 86_400));
            }
            "paid" => out
                .payments
                .push(payment(rng, total_cents, updated / 86_400)),
            "open" if rng.below(100) < 25 => {
                let share = 10 + rng.below_i64(81);
                let amount = (total_cents * share / 100).max(1);
                out.payments.push(payment(rng, amount, updated / 86_400));
            }
            _ => {}
        }
        out.invoices.push(Invoice {
            id,
            tenant_id: tenant_id.into(),
            invoice_number: format!("INV-{:06}", i + 1),
            invoice_status: status.into(),
            invoice_date: date(day),
            customer: CUSTOMERS[rng.pick(CUSTOMERS.len())].into(),
            currency: CURRENCIES[rng.pick(CURRENCIES.len())].into(),
            total_cents,
            created_at: timestamp(created),
            updated_at: timestamp(updated),
            lines,
        });
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): the seed data's random stream.
struct SeedRng(u64);

impl SeedRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (multiply-shift; its bias, below n / 2^64, does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..n` for a positive `n`.
    fn below_i64(&mut self, n: i64) -> i64 {
        self.below(n.unsigned_abs()) as i64
    }

    /// A uniform index into a slice of `len` items.
    fn pick(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A version 4 UUID from the next 16 bytes.
    fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// A random version 4 UUID (for rows created at run time).
pub fn random_uuid<R: Rng + ?Sized>(rng: &mut R) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random::<[u8; 16]>()).into_uuid()
}

// === money and time ===

/// Formats cents as the legacy API's money string: `123450` → `"1234.50"`, `-5` → `"-0.05"`.
pub fn money(cents: i64) -> String {
    Money(cents).to_string()
}

/// Parses a money string with at most two decimals (`"12"`, `"12.5"`, `"12.50"`) into cents.
/// `None` for anything else, including a sign other than a leading `-` and overflow.
pub fn parse_money(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || frac.len() > 2 || !all_digits(whole) || !all_digits(frac) {
        return None;
    }
    if digits.ends_with('.') {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    let cents = whole.checked_mul(100)?.checked_add(frac)?;
    Some(if negative { -cents } else { cents })
}

/// Cents displayed as a money string, without allocating.
struct Money(i64);

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A UUID serialized as its lowercase hyphenated string (uuid's own serde feature is not on).
struct UuidStr(Uuid);

impl Serialize for UuidStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
pub fn date(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC with second precision and `Z` of a Unix time in seconds.
pub fn timestamp(unix_seconds: i64) -> String {
    let day = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(day);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// Parses a `YYYY-MM-DD` calendar date into its day number; `None` if it is not a real date.
pub fn parse_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let (y, m, d) = (
        num(text.get(0..4)?)?,
        num(text.get(5..7)?)?,
        num(text.get(8..10)?)?,
    );
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let day = days_from_civil(y, m, d);
    // Round-trips only for a day that exists in that month.
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// Parses the [`timestamp`] format back into Unix seconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let (d, t) = text.strip_suffix('Z')?.split_once('T')?;
    let day = parse_date(d)?;
    let mut parts = t
        .split(':')
        .map(|p| p.parse::<i64>().ok().filter(|_| p.len() == 2));
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() || h > 23 || m > 59 || s > 59 {
        return None;
    }
    Some(day * 86_400 + h * 3_600 + m * 60 + s)
}

// Howard Hinnant's civil-from-days / days-from-civil algorithms (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// === JSON ===

/// The legacy API's JSON for an invoice with its lines (key order as the legacy API).
pub fn invoice_json(inv: &Invoice) -> serde_json::Value {
    serde_json::to_value(inv).unwrap_or(serde_json::Value::Null)
}

/// A JSON array of `items` (each already JSON), in order, with as many whole items as fit in
/// `n` bytes (at least `[]`): the benches' page of the legacy API's JSON.
pub fn json_array_within<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>, n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(n);
    body.push(b'[');
    for item in items {
        let item = item.as_ref();
        if body.len() + item.len() + 2 > n {
            break;
        }
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.push(b']');
    body
}

/// The legacy API's JSON for a payment.
pub fn payment_json(p: &Payment) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
}

/// Writes the legacy API's invoice JSON: `id, tenant_id, invoice_number, invoice_status,
/// invoice_date, customer, currency, total, created_at, updated_at, lines` with money as
/// two-decimal strings and lines in `line_no` order.
impl Serialize for Invoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Invoice", 11)?;
        st.serialize_field("id", &UuidStr(self.id))?;
        st.serialize_field("tenant_id", &self.tenant_id)?;
        st.serialize_field("invoice_number", &self.invoice_number)?;
        st.serialize_field("invoice_status", &self.invoice_status)?;
        st.serialize_field("invoice_date", &self.invoice_date)?;
        st.serialize_field("customer", &self.customer)?;
        st.serialize_field("currency", &self.currency)?;
        st.serialize_field("total", &Money(self.total_cents))?;
        st.serialize_field("created_at", &self.created_at)?;
        st.serialize_field("updated_at", &self.updated_at)?;
        st.serialize_field("lines", &LinesByNumber(&self.lines))?;
        st.end()
    }
}

/// Lines serialized in `line_no` order whatever their order in memory.
struct LinesByNumber<'a>(&'a [InvoiceLine]);

impl Serialize for LinesByNumber<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        if self.0.windows(2).all(|w| w[0].line_no <= w[1].line_no) {
            for l in self.0 {
                seq.serialize_element(l)?;
            }
        } else {
            let mut sorted: Vec<&InvoiceLine> = self.0.iter().collect();
            sorted.sort_by_key(|l| l.line_no);
            for l in sorted {
                seq.serialize_element(l)?;
            }
        }
        seq.end()
    }
}

/// Writes `id, line_no, sku, description, quantity, unit_price, amount`.
impl Serialize for InvoiceLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("InvoiceLine", 7)?;
        st.serialize_field("id", &UuidStr(self.id))?;
        st.serialize_field("line_no", &self.line_no)?;
        st.serialize_field("sku", &self.sku)?;
        st.serialize_field("description", &self.description)?;
        st.serialize_field("quantity", &self.quantity)?;
        st.serialize_field("unit_price", &Money(self.unit_price_cents))?;
        st.serialize_field("amount", &Money(self.amount_cents))?;
        st.end()
    }
}

/// Writes `id, tenant_id, invoice_id, payment_date, amount, method`.
impl Serialize for Payment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Payment", 6)?;
        st.serialize_field("id", &UuidStr(self.id))?;
        st.serialize_field("tenant_id", &self.tenant_id)?;
        st.serialize_field("invoice_id", &UuidStr(self.invoice_id))?;
        st.serialize_field("payment_date", &self.payment_date)?;
        st.serialize_field("amount", &Money(self.amount_cents))?;
        st.serialize_field("method", &self.method)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_stream_is_splitmix64() {
        // Reference output of SplitMix64 seeded with 1234567.
        let mut r = SeedRng(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        let mut r = SeedRng(5);
        assert!((0..1_000).all(|_| r.below(6) < 6));
        assert_eq!(r.uuid().get_version_num(), 4);
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = generate(7, 3, 50);
        assert_eq!(a, generate(7, 3, 50));
        assert_ne!(a.invoices[0].id, generate(8, 3, 50).invoices[0].id);
    }

    #[test]
    fn a_tenant_does_not_depend_on_how_many_tenants_are_generated() {
        let small = generate(1, 2, 20);
        let large = generate(1, 7, 20);
        assert_eq!(small.invoices[..40], large.invoices[..40]);
        assert_eq!(large.tenants[5].id, "tenant-006");
        assert_eq!(large.tenants[6].id, "tenant-007");
        let ids: Vec<&str> = large.tenants[..5].iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["acme", "globex", "initech", "umbrella", "hooli"]);
    }

    #[test]
    fn invariants_hold() {
        let d = generate(42, 12, 300);
        assert_eq!(d.invoices.len(), 3_600);
        let mut ids = std::collections::HashSet::new();
        for inv in &d.invoices {
            assert!(ids.insert(inv.id));
            assert_eq!(inv.id.get_version_num(), 4);
            assert!((1..=8).contains(&inv.lines.len()));
            assert_eq!(
                inv.total_cents,
                inv.lines.iter().map(|l| l.amount_cents).sum::<i64>()
            );
            for (i, l) in inv.lines.iter().enumerate() {
                assert_eq!(l.line_no, i as i32 + 1);
                assert_eq!(l.amount_cents, i64::from(l.quantity) * l.unit_price_cents);
                assert!(ids.insert(l.id));
            }
            assert!(STATUSES.contains(&inv.invoice_status.as_str()));
            assert!(CURRENCIES.contains(&inv.currency.as_str()));
            assert!(parse_date(&inv.invoice_date).is_some());
            let created = parse_timestamp(&inv.created_at).unwrap();
            assert!(parse_timestamp(&inv.updated_at).unwrap() >= created);
            assert_eq!(&inv.created_at[..10], inv.invoice_date);
        }
        // Numbers are unique per tenant and ascend with the date.
        for t in d.invoices.chunks(300) {
            for w in t.windows(2) {
                assert!(w[0].invoice_number < w[1].invoice_number);
                assert!(w[0].invoice_date <= w[1].invoice_date);
            }
        }
        // Paid invoices are paid in full; payments belong to their invoice's tenant.
        let by_id: std::collections::HashMap<_, _> = d.invoices.iter().map(|i| (i.id, i)).collect();
        let mut paid = std::collections::HashMap::new();
        for p in &d.payments {
            let inv = by_id[&p.invoice_id];
            assert_eq!(p.tenant_id, inv.tenant_id);
            assert!(p.amount_cents > 0);
            assert!(p.payment_date >= inv.invoice_date);
            assert!(METHODS.contains(&p.method.as_str()));
            *paid.entry(p.invoice_id).or_insert(0) += p.amount_cents;
        }
        for inv in &d.invoices {
            let sum = paid.get(&inv.id).copied().unwrap_or(0);
            match inv.invoice_status.as_str() {
                "paid" => assert_eq!(sum, inv.total_cents),
                "open" => assert!(sum < inv.total_cents),
                _ => assert_eq!(sum, 0),
            }
        }
        for s in STATUSES {
            assert!(
                d.invoices.iter().any(|i| i.invoice_status == s),
                "no {s} invoice"
            );
        }
    }

    #[test]
    fn invoice_json_has_the_legacy_shape_and_key_order() {
        let inv = Invoice {
            id: Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef),
            tenant_id: "acme".into(),
            invoice_number: "INV-000001".into(),
            invoice_status: "open".into(),
            invoice_date: "2024-02-29".into(),
            customer: "Pied Piper".into(),
            currency: "EUR".into(),
            total_cents: 7_500,
            created_at: "2024-02-29T09:30:00Z".into(),
            updated_at: "2024-03-01T10:00:00Z".into(),
            lines: vec![InvoiceLine {
                id: Uuid::from_u128(1),
                line_no: 1,
                sku: "SKU-10000".into(),
                description: "Custom report".into(),
                quantity: 2,
                unit_price_cents: 3_750,
                amount_cents: 7_500,
            }],
        };
        let expected = concat!(
            r#"{"id":"01234567-89ab-4def-8123-456789abcdef","tenant_id":"acme","#,
            r#""invoice_number":"INV-000001","invoice_status":"open","invoice_date":"2024-02-29","#,
            r#""customer":"Pied Piper","currency":"EUR","total":"75.00","#,
            r#""created_at":"2024-02-29T09:30:00Z","updated_at":"2024-03-01T10:00:00Z","#,
            r#""lines":[{"id":"00000000-0000-0000-0000-000000000001","line_no":1,"#,
            r#""sku":"SKU-10000","description":"Custom report","quantity":2,"#,
            r#""unit_price":"37.50","amount":"75.00"}]}"#
        );
        assert_eq!(invoice_json(&inv).to_string(), expected);
        assert_eq!(serde_json::to_string(&inv).unwrap(), expected);
    }

    #[test]
    fn lines_are_written_in_line_no_order() {
        let mut inv = generate(3, 1, 50)
            .invoices
            .into_iter()
            .find(|i| i.lines.len() > 2)
            .unwrap();
        let in_order = serde_json::to_string(&inv).unwrap();
        inv.lines.reverse();
        assert_eq!(serde_json::to_string(&inv).unwrap(), in_order);
    }

    #[test]
    fn payment_json_has_the_legacy_shape_and_key_order() {
        let p = Payment {
            id: Uuid::from_u128(2),
            tenant_id: "globex".into(),
            invoice_id: Uuid::from_u128(3),
            payment_date: "2024-01-31".into(),
            amount_cents: 123_450,
            method: "card".into(),
        };
        assert_eq!(
            payment_json(&p).to_string(),
            concat!(
                r#"{"id":"00000000-0000-0000-0000-000000000002","tenant_id":"globex","#,
                r#""invoice_id":"00000000-0000-0000-0000-000000000003","#,
                r#""payment_date":"2024-01-31","amount":"1234.50","method":"card"}"#
            )
        );
    }

    #[test]
    fn money_formats_and_parses() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(3_750), "37.50");
        assert_eq!(money(123_450), "1234.50");
        assert_eq!(money(-5), "-0.05");
        assert_eq!(money(-123_456), "-1234.56");
        assert_eq!(money(i64::MIN), "-92233720368547758.08");
        assert_eq!(parse_money("37.5"), Some(3_750));
        assert_eq!(parse_money("37.50"), Some(3_750));
        assert_eq!(parse_money("37"), Some(3_700));
        assert_eq!(parse_money("-0.05"), Some(-5));
        for bad in [
            "",
            ".5",
            "1.",
            "1.234",
            "+1",
            "1e3",
            "abc",
            "1.-5",
            "99999999999999999999",
        ] {
            assert_eq!(parse_money(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_and_timestamps_round_trip() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(FIRST_DAY), "2023-01-01");
        assert_eq!(date(FIRST_DAY + DAY_SPAN - 1), "2024-12-31");
        assert_eq!(timestamp(1_709_199_000), "2024-02-29T09:30:00Z");
        assert_eq!(parse_timestamp("2024-02-29T09:30:00Z"), Some(1_709_199_000));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "20240101",
            "2024-01-32",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        for day in [-1_000, 0, 11_016, 19_782, 60_000] {
            assert_eq!(parse_date(&date(day)), Some(day));
        }
    }
}
