//! The index schema and its migrations. Owns table and index definitions only; every change
//! is additive (`IF NOT EXISTS`, guarded `ADD COLUMN`) so a store written by any earlier
//! version opens without losing a row, and an earlier version can still open a migrated store.
//! `PRAGMA user_version` records the last migration applied, so opening an up-to-date store
//! (every `loradex ls`) runs no DDL at all.

use crate::error::Result;
use rusqlite::{Connection, TransactionBehavior};

/// The schema this version writes; stores below it are migrated at open.
pub const VERSION: i64 = 3;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS adapters(
  digest TEXT PRIMARY KEY,
  manifest_digest TEXT NOT NULL,
  config_digest TEXT NOT NULL,
  weights_digest TEXT NOT NULL,
  base_fingerprint TEXT NOT NULL,
  base_arch TEXT NOT NULL,
  task TEXT,
  rank INTEGER NOT NULL,
  alpha REAL NOT NULL,
  use_rslora INTEGER NOT NULL,
  target_modules TEXT NOT NULL,
  modules_to_save TEXT NOT NULL,
  labels TEXT NOT NULL,
  metrics TEXT,
  provenance TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  last_used_at INTEGER,
  size INTEGER NOT NULL,
  ref_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS adapters_dangling ON adapters(created_at) WHERE ref_count = 0;
CREATE INDEX IF NOT EXISTS adapters_base ON adapters(base_fingerprint);
-- refs carry copies of their adapter's immutable listing fields so that `ls` is one scan
CREATE TABLE IF NOT EXISTS refs(
  name TEXT NOT NULL,
  tag TEXT NOT NULL,
  digest TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  task TEXT,
  rank INTEGER NOT NULL,
  base_fingerprint TEXT NOT NULL,
  size INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY(name, tag)
);
-- covering index in listing order: `ls` streams it without a sort or a table lookup
CREATE INDEX IF NOT EXISTS refs_list ON refs(created_at DESC, name, tag, digest, task, rank, base_fingerprint, size);
CREATE TABLE IF NOT EXISTS bases(
  fingerprint TEXT PRIMARY KEY,
  arch TEXT NOT NULL,
  config TEXT NOT NULL,
  path TEXT,
  registered_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS base_paths(path TEXT PRIMARY KEY, stamp TEXT NOT NULL, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases(digest TEXT NOT NULL, holder TEXT NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY(digest, holder));
"#;

/// Version 2: leases tied to a process; indexes that let prune and gc stream in order.
const V2_INDEXES: &str = r#"
-- prune: the adapters in (created_at, digest) order with what its filters read, no lookups
CREATE INDEX IF NOT EXISTS adapters_age ON adapters(created_at, digest, ref_count, last_used_at);
-- gc: is a blob some adapter's config or weights (manifests are `digest` itself)
CREATE INDEX IF NOT EXISTS adapters_config ON adapters(config_digest);
CREATE INDEX IF NOT EXISTS adapters_weights ON adapters(weights_digest);
-- prune --keep-last: the newest adapters of each name, by seeks
CREATE INDEX IF NOT EXISTS refs_by_name ON refs(name, created_at DESC, digest);
-- the refs of an adapter, sorted, without a table lookup
CREATE INDEX IF NOT EXISTS refs_by_digest ON refs(digest, name, tag);
-- prefixes of the two above
DROP INDEX IF EXISTS adapters_created;
DROP INDEX IF EXISTS refs_digest;
"#;

/// Version 3: `loradex eval --record` results. A side table, not a column of `adapters` and
/// not in the manifest blob: an evaluation is a fact about an adapter *and a data set*, made
/// after the adapter exists, so it must not change the adapter's digest, and one adapter has
/// one row per data set (keyed by the data's digest; recording again replaces it). The
/// foreign key drops an adapter's rows with it, in every version that deletes adapters
/// (the store opens with `foreign_keys = ON`).
const V3_EVALUATIONS: &str = r#"
CREATE TABLE IF NOT EXISTS evaluations(
  digest TEXT NOT NULL REFERENCES adapters(digest) ON DELETE CASCADE,
  data_digest TEXT NOT NULL,
  data_path TEXT NOT NULL,
  recorded_at INTEGER NOT NULL,
  metrics TEXT NOT NULL,
  PRIMARY KEY(digest, data_digest)
);
"#;

/// Brings the index at `conn` up to `VERSION` (a no-op read when it is there already).
pub fn migrate(conn: &mut Connection) -> Result<()> {
    if user_version(conn)? >= VERSION {
        return Ok(());
    }
    // under the write lock, re-checked: two processes opening an old store migrate it once
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let v = user_version(&tx)?;
    if v < VERSION {
        tx.execute_batch(TABLES)?;
        for (col, ty) in [("pid", "INTEGER"), ("pid_start", "INTEGER"), ("scope", "TEXT")] {
            if !has_column(&tx, "leases", col)? {
                tx.execute_batch(&format!("ALTER TABLE leases ADD COLUMN {col} {ty}"))?;
            }
        }
        tx.execute_batch(V2_INDEXES)?;
        tx.execute_batch(V3_EVALUATIONS)?;
        tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))?;
    }
    tx.commit()?;
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

fn has_column(conn: &Connection, table: &str, col: &str) -> Result<bool> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2", [table, col], |r| r.get(0))?;
    Ok(n > 0)
}
