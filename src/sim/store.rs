//! The simulated OMS's in-memory tables, indexed the way its endpoints read them.
//!
//! Each tenant keeps its invoices sorted in listing order (`invoice_date DESC, invoice_number
//! DESC`) and its payments sorted by `payment_date DESC, id`, so a page is a slice (or a filtered
//! scan) and no request sorts. Invoices are shared as `Arc<StoredInvoice>` whose JSON is rendered
//! once, on first use, so list responses are mostly concatenation. Writes replace the `Arc`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use uuid::Uuid;

use super::data::{Dataset, Invoice, Payment};

/// An invoice and its rendered legacy JSON.
#[derive(Debug)]
pub(crate) struct StoredInvoice {
    pub(crate) invoice: Invoice,
    json: OnceLock<Bytes>,
}

impl StoredInvoice {
    fn new(invoice: Invoice) -> Arc<Self> {
        Arc::new(StoredInvoice {
            invoice,
            json: OnceLock::new(),
        })
    }

    /// The invoice's legacy JSON, rendered on first use.
    pub(crate) fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&self.invoice).unwrap_or_default()))
    }
}

/// One page of a listing and the number of rows matching the filter.
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) total: usize,
}

#[derive(Default)]
struct TenantTables {
    /// Listing order: `invoice_date DESC, invoice_number DESC`.
    invoices: Vec<Arc<StoredInvoice>>,
    /// `payment_date DESC, id ASC`.
    payments: Vec<Payment>,
    /// The number the next created invoice gets.
    next_number: u64,
}

/// All tenants' tables plus an index of invoices by id.
#[derive(Default)]
pub(crate) struct Store {
    tenants: HashMap<String, TenantTables>,
    by_id: HashMap<Uuid, Arc<StoredInvoice>>,
}

fn listing_order(a: &Invoice, b: &Invoice) -> Ordering {
    b.invoice_date
        .cmp(&a.invoice_date)
        .then_with(|| b.invoice_number.cmp(&a.invoice_number))
}

fn payment_order(a: &Payment, b: &Payment) -> Ordering {
    b.payment_date
        .cmp(&a.payment_date)
        .then_with(|| a.id.cmp(&b.id))
}

fn number_of(invoice_number: &str) -> u64 {
    invoice_number
        .strip_prefix("INV-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Store {
    /// Loads a dataset.
    pub(crate) fn new(data: Dataset) -> Store {
        let mut store = Store::default();
        for t in data.tenants {
            store.tenants.entry(t.id).or_default();
        }
        for inv in data.invoices {
            let stored = StoredInvoice::new(inv);
            let tables = store
                .tenants
                .entry(stored.invoice.tenant_id.clone())
                .or_default();
            tables.next_number = tables
                .next_number
                .max(number_of(&stored.invoice.invoice_number));
            tables.invoices.push(stored.clone());
            store.by_id.insert(stored.invoice.id, stored);
        }
        for p in data.payments {
            store
                .tenants
                .entry(p.tenant_id.clone())
                .or_default()
                .payments
                .push(p);
        }
        for tables in store.tenants.values_mut() {
            tables
                .invoices
                .sort_by(|a, b| listing_order(&a.invoice, &b.invoice));
            tables.payments.sort_by(payment_order);
            tables.next_number += 1;
        }
        store
    }

    /// A page of the tenant's invoices, optionally only those with `status`.
    pub(crate) fn list_invoices(
        &self,
        tenant: &str,
        status: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Page<Arc<StoredInvoice>> {
        let Some(tables) = self.tenants.get(tenant) else {
            return Page {
                items: Vec::new(),
                total: 0,
            };
        };
        match status {
            None => Page {
                items: tables
                    .invoices
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .cloned()
                    .collect(),
                total: tables.invoices.len(),
            },
            Some(status) => {
                let mut items = Vec::new();
                let mut total = 0;
                for inv in tables
                    .invoices
                    .iter()
                    .filter(|i| i.invoice.invoice_status == status)
                {
                    if total >= offset && items.len() < limit {
                        items.push(inv.clone());
                    }
                    total += 1;
                }
                Page { items, total }
            }
        }
    }

    /// The tenant's invoice `id`; `None` when unknown or another tenant's.
    pub(crate) fn invoice(&self, tenant: &str, id: Uuid) -> Option<Arc<StoredInvoice>> {
        self.by_id
            .get(&id)
            .filter(|s| s.invoice.tenant_id == tenant)
            .cloned()
    }

    /// Adds an invoice for `invoice.tenant_id`, giving it the tenant's next invoice number.
    pub(crate) fn create(&mut self, mut invoice: Invoice) -> Arc<StoredInvoice> {
        let tables = self.tenants.entry(invoice.tenant_id.clone()).or_default();
        tables.next_number = tables.next_number.max(1);
        invoice.invoice_number = format!("INV-{:06}", tables.next_number);
        tables.next_number += 1;
        let stored = StoredInvoice::new(invoice);
        insert_sorted(&mut tables.invoices, stored.clone());
        self.by_id.insert(stored.invoice.id, stored.clone());
        stored
    }

    /// Applies `change` to the tenant's invoice `id` and stores the result; `None` when the
    /// invoice is unknown or another tenant's. `change` may not alter id, tenant or number.
    pub(crate) fn update(
        &mut self,
        tenant: &str,
        id: Uuid,
        change: impl FnOnce(&mut Invoice),
    ) -> Option<Arc<StoredInvoice>> {
        let old = self.invoice(tenant, id)?;
        let mut invoice = old.invoice.clone();
        change(&mut invoice);
        invoice.id = old.invoice.id;
        invoice.tenant_id = old.invoice.tenant_id.clone();
        invoice.invoice_number = old.invoice.invoice_number.clone();
        let stored = StoredInvoice::new(invoice);
        let tables = self.tenants.get_mut(tenant)?;
        remove_sorted(&mut tables.invoices, &old.invoice);
        insert_sorted(&mut tables.invoices, stored.clone());
        self.by_id.insert(id, stored.clone());
        Some(stored)
    }

    /// Deletes the tenant's invoice `id` and its payments; `false` when unknown or another
    /// tenant's.
    pub(crate) fn delete(&mut self, tenant: &str, id: Uuid) -> bool {
        let Some(old) = self.invoice(tenant, id) else {
            return false;
        };
        self.by_id.remove(&id);
        if let Some(tables) = self.tenants.get_mut(tenant) {
            remove_sorted(&mut tables.invoices, &old.invoice);
            tables.payments.retain(|p| p.invoice_id != id);
        }
        true
    }

    /// A page of the tenant's payments, optionally only those of one invoice; `render` is
    /// applied to each payment of the page.
    pub(crate) fn list_payments<T>(
        &self,
        tenant: &str,
        invoice_id: Option<Uuid>,
        limit: usize,
        offset: usize,
        render: impl Fn(&Payment) -> T,
    ) -> Page<T> {
        let Some(tables) = self.tenants.get(tenant) else {
            return Page {
                items: Vec::new(),
                total: 0,
            };
        };
        let mut items = Vec::new();
        let mut total = 0;
        for p in tables
            .payments
            .iter()
            .filter(|p| invoice_id.is_none_or(|id| p.invoice_id == id))
        {
            if total >= offset && items.len() < limit {
                items.push(render(p));
            }
            total += 1;
        }
        Page { items, total }
    }
}

fn insert_sorted(list: &mut Vec<Arc<StoredInvoice>>, stored: Arc<StoredInvoice>) {
    let at = list
        .binary_search_by(|probe| listing_order(&probe.invoice, &stored.invoice))
        .unwrap_or_else(|at| at);
    list.insert(at, stored);
}

fn remove_sorted(list: &mut Vec<Arc<StoredInvoice>>, invoice: &Invoice) {
    if let Ok(at) = list.binary_search_by(|probe| listing_order(&probe.invoice, invoice)) {
        list.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::data::generate;

    #[test]
    fn listing_is_sorted_and_paged() {
        let data = generate(5, 2, 120);
        let store = Store::new(data.clone());
        let all = store.list_invoices("acme", None, 1_000, 0);
        assert_eq!(all.total, 120);
        for w in all.items.windows(2) {
            assert_eq!(listing_order(&w[0].invoice, &w[1].invoice), Ordering::Less);
        }
        let page = store.list_invoices("acme", None, 10, 115);
        assert_eq!(page.items.len(), 5);
        assert_eq!(page.items[0].invoice, all.items[115].invoice);
        let paid = store.list_invoices("acme", Some("paid"), 5, 3);
        let expected: Vec<_> = all
            .items
            .iter()
            .filter(|i| i.invoice.invoice_status == "paid")
            .collect();
        assert_eq!(paid.total, expected.len());
        assert_eq!(paid.items[0].invoice, expected[3].invoice);
        assert_eq!(store.list_invoices("nobody", None, 10, 0).total, 0);
    }

    #[test]
    fn invoices_are_only_visible_to_their_tenant() {
        let data = generate(5, 2, 10);
        let globex_invoice = data.invoices[15].id;
        let store = Store::new(data);
        assert!(store.invoice("globex", globex_invoice).is_some());
        assert!(store.invoice("acme", globex_invoice).is_none());
    }

    #[test]
    fn writes_keep_order_numbers_and_payments_consistent() {
        let data = generate(9, 1, 50);
        let mut store = Store::new(data.clone());
        let mut new = data.invoices[0].clone();
        new.id = Uuid::from_u128(99);
        new.invoice_date = "2030-01-01".into();
        let created = store.create(new);
        assert_eq!(created.invoice.invoice_number, "INV-000051");
        let first = store.list_invoices("acme", None, 1, 0);
        assert_eq!(first.items[0].invoice.id, created.invoice.id);

        let updated = store
            .update("acme", created.invoice.id, |i| {
                i.invoice_date = "2000-01-01".into()
            })
            .unwrap();
        assert_eq!(updated.invoice.invoice_number, "INV-000051");
        let all = store.list_invoices("acme", None, 100, 0);
        assert_eq!(all.total, 51);
        assert_eq!(all.items[50].invoice.id, created.invoice.id);
        assert!(store.update("globex", created.invoice.id, |_| {}).is_none());

        let paid = data.payments[0].invoice_id;
        let before = store.list_payments("acme", None, 1_000, 0, |p| p.id).total;
        assert!(store.delete("acme", paid));
        assert!(!store.delete("acme", paid));
        assert!(store.invoice("acme", paid).is_none());
        assert_eq!(
            store
                .list_payments("acme", Some(paid), 10, 0, |p| p.id)
                .total,
            0
        );
        assert!(store.list_payments("acme", None, 1_000, 0, |p| p.id).total < before);
        assert_eq!(store.list_invoices("acme", None, 100, 0).total, 50);
    }
}
