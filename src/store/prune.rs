//! `prune`: selecting adapters by policy and deleting them with their refs (their blobs go at
//! the `gc` that follows). Selection runs in SQLite over ordered index scans and temp tables,
//! never over in-memory maps of the whole store, so memory stays flat in the number of
//! adapters and victims stream out as they are found. Owns no table of its own; deletes rows
//! of `adapters` and `refs` only, and of `leases` only through `lease::protected`.

use super::{lease, text, GcReport, Store};
use crate::error::Result;
use crate::util::now_secs;
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

#[derive(Default, Debug, Clone)]
pub struct PrunePolicy {
    pub keep_last: Option<usize>,
    pub older_than: Option<i64>,
    pub unused_for: Option<i64>,
    pub grace: i64,
}

/// Everything a prune selected, collected (see `prune_each` for the streaming form).
#[derive(Serialize, Debug, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    pub adapters: Vec<String>,
    pub refs: Vec<String>,
    pub gc: Option<GcReport>,
}

/// Counts of what `prune_each` selected (and removed unless dry-run).
#[derive(Serialize, Debug, Default)]
pub struct PruneSummary {
    pub dry_run: bool,
    pub adapters: usize,
    pub refs: usize,
    pub gc: Option<GcReport>,
}

const TEMP_TABLES: &str = "
CREATE TEMP TABLE IF NOT EXISTS prune_keep(digest TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS prune_protect(digest TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS prune_victims(digest TEXT NOT NULL, ref_count INTEGER NOT NULL);
DELETE FROM temp.prune_keep; DELETE FROM temp.prune_protect; DELETE FROM temp.prune_victims;
";

impl Store {
    /// Deletes adapters by policy, then (unless dry-run) sweeps their blobs with `gc`.
    ///
    /// Selection: adapters matching every age filter given (`older_than` on creation,
    /// `unused_for` on last use); with no age filter, only adapters no ref points at. With
    /// `keep_last N` the N newest adapters of each name are always kept, and without age
    /// filters everything older than them is selected. Leased adapters are never selected
    /// (see `lease`: a lease lasts while its holder process lives).
    pub fn prune(&mut self, p: &PrunePolicy, dry_run: bool) -> Result<PruneReport> {
        self.prune_at(p, dry_run, now_secs())
    }

    /// `prune` as if the clock read `now` (Unix seconds): ages are measured from it, and
    /// leases whose holder's liveness cannot be told expire by it.
    pub fn prune_at(&mut self, p: &PrunePolicy, dry_run: bool, now: i64) -> Result<PruneReport> {
        let (mut adapters, mut refs) = (vec![], vec![]);
        let s = self.prune_each(
            p,
            dry_run,
            now,
            |d| {
                adapters.push(d.to_string());
                Ok(())
            },
            Some(&mut |r: &str| {
                refs.push(r.to_string());
                Ok(())
            }),
        )?;
        Ok(PruneReport { dry_run, adapters, refs, gc: s.gc })
    }

    /// `prune_at`, streaming: `on_adapter` gets every selected adapter's digest, oldest first
    /// (by creation, then digest); then, if given, `on_ref` gets their refs (`NAME:TAG`) in the
    /// same adapter order, each adapter's sorted. A dry run holds no write lock.
    pub fn prune_each(
        &mut self,
        p: &PrunePolicy,
        dry_run: bool,
        now: i64,
        mut on_adapter: impl FnMut(&str) -> Result<()>,
        on_ref: Option<&mut dyn FnMut(&str) -> Result<()>>,
    ) -> Result<PruneSummary> {
        let behavior = if dry_run { TransactionBehavior::Deferred } else { TransactionBehavior::Immediate };
        let tx = self.conn.transaction_with_behavior(behavior)?;
        tx.execute_batch(TEMP_TABLES)?;
        {
            let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO temp.prune_protect(digest) VALUES(?1)")?;
            for d in lease::protected(&tx, now, dry_run)? {
                ins.execute([d])?;
            }
        }
        if let Some(k) = p.keep_last {
            keep_newest(&tx, k)?;
        }
        let age_filter = p.older_than.is_some() || p.unused_for.is_some();
        let created_before = p.older_than.map_or(i64::MAX, |a| now.saturating_sub(a));
        let used_before = p.unused_for.map_or(i64::MAX, |a| now.saturating_sub(a));
        let (index, refs_filter) =
            if age_filter || p.keep_last.is_some() { ("adapters_age", "") } else { ("adapters_dangling", "AND a.ref_count = 0") };
        tx.execute(
            &format!(
                "INSERT INTO temp.prune_victims(digest, ref_count)
                 SELECT a.digest, a.ref_count FROM adapters a INDEXED BY {index}
                 WHERE a.created_at < ?1 AND COALESCE(a.last_used_at, a.created_at) < ?2 {refs_filter}
                   AND NOT EXISTS (SELECT 1 FROM temp.prune_keep k WHERE k.digest = a.digest)
                   AND NOT EXISTS (SELECT 1 FROM temp.prune_protect l WHERE l.digest = a.digest)
                 ORDER BY a.created_at, a.digest"
            ),
            params![created_before, used_before],
        )?;
        let mut summary = PruneSummary { dry_run, ..Default::default() };
        {
            let mut st = tx.prepare("SELECT digest, ref_count FROM temp.prune_victims ORDER BY rowid")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                on_adapter(text(r, 0)?)?;
                summary.adapters += 1;
                summary.refs += r.get::<_, i64>(1)? as usize;
            }
        }
        if let Some(on_ref) = on_ref {
            let mut st = tx.prepare(
                "SELECT r.name, r.tag FROM temp.prune_victims v JOIN refs r INDEXED BY refs_by_digest ON r.digest = v.digest
                 ORDER BY v.rowid, r.name, r.tag",
            )?;
            let mut rows = st.query([])?;
            let mut s = String::new();
            while let Some(r) = rows.next()? {
                s.clear();
                s.push_str(text(r, 0)?);
                s.push(':');
                s.push_str(text(r, 1)?);
                on_ref(&s)?;
            }
        }
        if !dry_run {
            tx.execute_batch(
                "DELETE FROM refs WHERE digest IN (SELECT digest FROM temp.prune_victims);
                 DELETE FROM adapters WHERE digest IN (SELECT digest FROM temp.prune_victims);",
            )?;
        }
        tx.execute_batch("DELETE FROM temp.prune_keep; DELETE FROM temp.prune_protect; DELETE FROM temp.prune_victims;")?;
        tx.commit()?;
        if !dry_run {
            summary.gc = Some(self.gc(p.grace, false)?);
        }
        Ok(summary)
    }
}

/// Fills `temp.prune_keep` with the `k` newest distinct adapters of every name: a skip scan
/// over `refs_by_name` (two seeks and at most `k` rows plus duplicate tags per name), so the
/// cost follows the number of names, not of refs.
fn keep_newest(conn: &Connection, k: usize) -> Result<()> {
    if k == 0 {
        return Ok(());
    }
    let mut next_name = conn.prepare("SELECT name FROM refs INDEXED BY refs_by_name WHERE name > ?1 ORDER BY name LIMIT 1")?;
    let mut newest =
        conn.prepare("SELECT digest FROM refs INDEXED BY refs_by_name WHERE name = ?1 ORDER BY created_at DESC, digest")?;
    let mut keep = conn.prepare("INSERT OR IGNORE INTO temp.prune_keep(digest) VALUES(?1)")?;
    let mut name = String::new();
    let mut last = String::new();
    loop {
        let next: Option<String> = {
            let mut rows = next_name.query([&name])?;
            rows.next()?.map(|r| r.get(0)).transpose()?
        };
        let Some(n) = next else { break };
        name = n;
        let mut rows = newest.query([&name])?;
        let mut distinct = 0;
        last.clear();
        while let Some(r) = rows.next()? {
            let d = text(r, 0)?;
            // tags of one name naming one adapter are adjacent (same created_at and digest)
            if d != last {
                keep.execute([d])?;
                last.clear();
                last.push_str(d);
                distinct += 1;
                if distinct == k {
                    break;
                }
            }
        }
    }
    Ok(())
}
