//! How an entry is laid out in a row of `entries`: read by the entry
//! queries and by the change feed, which joins changes with their entries.

use signet_identity::SpiffeId;
use sqlx::any::AnyRow;

use super::{get, StoreError};
use crate::registry::entry::{Entry, EntrySpec, Selector};

/// The selectors of `spec` as stored: one per line.
pub(super) fn join_selectors(spec: &EntrySpec) -> String {
    spec.selectors
        .iter()
        .map(Selector::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn entry_from_row(row: &AnyRow) -> Result<Entry, StoreError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("entry {what}: {e}"));
    let id: String = get(row, "id")?;
    let spiffe_id =
        SpiffeId::parse(&get::<String>(row, "spiffe_id")?).map_err(|e| corrupt("spiffe_id", &e))?;
    let parent_id =
        SpiffeId::parse(&get::<String>(row, "parent_id")?).map_err(|e| corrupt("parent_id", &e))?;
    let selectors = get::<String>(row, "selectors")?
        .lines()
        .map(Selector::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt("selectors", &e))?;
    let dns_names = get::<String>(row, "dns_names")?
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(Entry {
        id,
        spec: EntrySpec {
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: get::<i64>(row, "x509_svid_ttl")? as u64,
            dns_names,
            admin: get::<i64>(row, "admin")? != 0,
            hint: get(row, "hint")?,
            jwt_svid_ttl: get::<i64>(row, "jwt_svid_ttl")? as u64,
        },
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        revision: get(row, "revision")?,
    })
}

pub(super) const COLUMNS: &str =
    "id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, admin, \
     created_at, updated_at, revision, hint, jwt_svid_ttl";
