//! Listing the store (`ls`, `/v1/adapters`): rows in one documented order, streamed from
//! covering indexes without a sort, with keyset pages (`limit`, `after`) and a name glob for
//! scripts that walk a large store. Reads only; owns no table.
//!
//! Order: newest `created_at` first; among equal times, dangling adapters (no ref points at
//! them, shown as `<none>`) first, by digest, then refs by name and tag. A page after a row
//! starts right behind it in that order, so walking pages yields the whole listing once.

use super::{text, Ref, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// One listed row: a ref and the listing fields of the adapter it names.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRow {
    pub r#ref: String,
    pub digest: String,
    pub task: Option<String>,
    pub rank: i64,
    pub base: String,
    pub size: i64,
    pub created_at: i64,
}

/// What to list. The default lists everything.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only adapters for this base.
    pub base: Option<Digest>,
    /// Only refs whose name matches this glob (`*`, `?`, `[...]`, case-sensitive); a glob with
    /// a `:` is matched against `NAME:TAG`. Dangling adapters have no name and never match.
    pub name: Option<String>,
    /// Start after this row: a ref `NAME:TAG`, or the digest of a `<none>` row.
    pub after: Option<String>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

/// Where a page starts: behind this row of the order.
enum Cursor {
    Dangling { created_at: i64, digest: String },
    Ref { created_at: i64, name: String, tag: String },
}

impl Store {
    /// Every ref (and dangling adapter) in listing order; optionally only those for one base.
    pub fn list(&self, base: Option<&Digest>) -> Result<Vec<ListRow>> {
        let mut out = Vec::new();
        self.list_each(base, |r| {
            out.push(r.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams `list`'s rows to `f` without materializing them.
    pub fn list_each(&self, base: Option<&Digest>, f: impl FnMut(&ListRow) -> Result<()>) -> Result<()> {
        self.list_query(&ListQuery { base: base.copied(), ..Default::default() }, f)
    }

    /// Streams the rows `q` selects to `f`, in listing order. Refs come in order from a
    /// covering index, dangling adapters from a partial index, merged; `f` gets one reused
    /// row, so 1M rows cost no per-row allocation and memory stays flat.
    pub fn list_query(&self, q: &ListQuery, mut f: impl FnMut(&ListRow) -> Result<()>) -> Result<()> {
        let cursor = q.after.as_deref().map(|a| self.cursor(a)).transpose()?;
        let base = q.base.map(|b| b.to_string());
        let mut limit = q.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(());
        }
        // dangling adapters (`<none>`): none match a name glob
        let mut dangling_sql = String::from(
            "SELECT digest, task, rank, base_fingerprint, size, created_at FROM adapters INDEXED BY adapters_dangling
             WHERE ref_count = 0 AND (?1 IS NULL OR base_fingerprint = ?1)",
        );
        let (mut dc, mut dd) = (None::<i64>, None::<String>);
        match &cursor {
            Some(Cursor::Dangling { created_at, digest }) => {
                dangling_sql.push_str(" AND created_at <= ?2 AND (created_at < ?2 OR digest > ?3)");
                (dc, dd) = (Some(*created_at), Some(digest.clone()));
            }
            Some(Cursor::Ref { created_at, .. }) => {
                dangling_sql.push_str(" AND created_at < ?2 AND ?3 IS NULL");
                dc = Some(*created_at);
            }
            None => dangling_sql.push_str(" AND ?2 IS NULL AND ?3 IS NULL"),
        }
        dangling_sql.push_str(" ORDER BY created_at DESC, digest");
        if q.name.is_some() {
            dangling_sql.push_str(" LIMIT 0");
        }
        let mut dst = self.conn.prepare_cached(&dangling_sql)?;
        let mut drows = dst.query(params![base, dc, dd])?;
        let mut next_dangling = |row: &mut Option<ListRow>| -> Result<()> {
            *row = match drows.next()? {
                Some(r) => Some(ListRow {
                    r#ref: "<none>".into(),
                    digest: r.get(0)?,
                    task: r.get(1)?,
                    rank: r.get(2)?,
                    base: r.get(3)?,
                    size: r.get(4)?,
                    created_at: r.get(5)?,
                }),
                None => None,
            };
            Ok(())
        };
        let mut dangling = None;
        next_dangling(&mut dangling)?;

        let mut refs_sql = String::from(
            "SELECT name, tag, digest, task, rank, base_fingerprint, size, created_at FROM refs INDEXED BY refs_list
             WHERE (?1 IS NULL OR base_fingerprint = ?1)",
        );
        let (mut rc, mut rn, mut rt) = (None::<i64>, None::<String>, None::<String>);
        match &cursor {
            Some(Cursor::Dangling { created_at, .. }) => {
                refs_sql.push_str(" AND created_at <= ?2 AND ?3 IS NULL AND ?4 IS NULL");
                rc = Some(*created_at);
            }
            Some(Cursor::Ref { created_at, name, tag }) => {
                // a range seek on the index; only the few rows of the cursor's second are filtered
                refs_sql.push_str(" AND created_at <= ?2 AND (created_at < ?2 OR (name, tag) > (?3, ?4))");
                (rc, rn, rt) = (Some(*created_at), Some(name.clone()), Some(tag.clone()));
            }
            None => refs_sql.push_str(" AND ?2 IS NULL AND ?3 IS NULL AND ?4 IS NULL"),
        }
        let glob = q.name.clone();
        match &glob {
            Some(g) if g.contains(':') => refs_sql.push_str(" AND (name || ':' || tag) GLOB ?5"),
            Some(_) => refs_sql.push_str(" AND name GLOB ?5"),
            None => refs_sql.push_str(" AND ?5 IS NULL"),
        }
        refs_sql.push_str(" ORDER BY created_at DESC, name, tag");
        let mut st = self.conn.prepare_cached(&refs_sql)?;
        let mut rows = st.query(params![base, rc, rn, rt, glob])?;
        let mut row = ListRow::default();
        while let Some(r) = rows.next()? {
            let created: i64 = r.get(7)?;
            while let Some(d) = dangling.as_ref().filter(|d| d.created_at >= created) {
                f(d)?;
                limit -= 1;
                if limit == 0 {
                    return Ok(());
                }
                next_dangling(&mut dangling)?;
            }
            row.r#ref.clear();
            row.r#ref.push_str(text(r, 0)?);
            row.r#ref.push(':');
            row.r#ref.push_str(text(r, 1)?);
            row.digest.clear();
            row.digest.push_str(text(r, 2)?);
            match r.get_ref(3)?.as_str_or_null().ok().flatten() {
                Some(t) => {
                    let task = row.task.get_or_insert_with(String::new);
                    task.clear();
                    task.push_str(t);
                }
                None => row.task = None,
            }
            row.rank = r.get(4)?;
            row.base.clear();
            row.base.push_str(text(r, 5)?);
            row.size = r.get(6)?;
            row.created_at = created;
            f(&row)?;
            limit -= 1;
            if limit == 0 {
                return Ok(());
            }
        }
        while let Some(d) = &dangling {
            f(d)?;
            limit -= 1;
            if limit == 0 {
                return Ok(());
            }
            next_dangling(&mut dangling)?;
        }
        Ok(())
    }

    /// The position of the row `after` names: a ref, or the digest of a dangling adapter.
    fn cursor(&self, after: &str) -> Result<Cursor> {
        if after.starts_with("sha256:") {
            let d = Digest::parse(after)?;
            let row: Option<(i64, i64)> = self
                .conn
                .query_row("SELECT created_at, ref_count FROM adapters WHERE digest = ?1", [d.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            return match row {
                None => Err(Error::NotFound(format!("adapter {d} (--after names the last row of the previous page)"))),
                Some((_, n)) if n > 0 => Err(Error::InvalidArgument(format!(
                    "{d} is listed under its refs, not as a <none> row: page after the last ref printed"
                ))),
                Some((created_at, _)) => Ok(Cursor::Dangling { created_at, digest: d.to_string() }),
            };
        }
        let r = Ref::parse(after)?;
        let created_at: Option<i64> = self
            .conn
            .query_row("SELECT created_at FROM refs WHERE name = ?1 AND tag = ?2", params![r.name, r.tag], |row| row.get(0))
            .optional()?;
        let created_at = created_at.ok_or_else(|| {
            Error::NotFound(format!("ref {r} (--after names the last row of the previous page; it was removed since)"))
        })?;
        Ok(Cursor::Ref { created_at, name: r.name, tag: r.tag })
    }
}
