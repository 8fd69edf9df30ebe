//! Blob housekeeping: `gc` (mark-and-sweep of blobs no adapter references, and of crashed
//! writers' temp files) and `verify` (re-hash every blob, find the ones the index needs but
//! lacks). Both stream: each blob file is checked against the index by seeks, never against an
//! in-memory set of the whole store. Deletes files under `blobs/` and `tmp/` only; writes no
//! table.

use super::{writer_alive, Store};
use crate::digest::Digest;
use crate::error::{IoContext, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;

#[derive(Serialize, Debug, Default, Clone)]
pub struct GcReport {
    pub dry_run: bool,
    /// Blobs kept because an adapter references them.
    pub referenced: usize,
    pub removed: Vec<String>,
    pub removed_bytes: u64,
    pub kept_in_grace: usize,
    pub temp_files_removed: usize,
}

#[derive(Serialize, Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    pub corrupt: Vec<String>,
    pub missing: Vec<String>,
    pub stray: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

/// Whether some adapter names the blob `sha256:<hex>` as its manifest, config or weights.
fn referenced(conn: &Connection, digest: &str) -> Result<bool> {
    let mut st = conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM adapters WHERE digest = ?1)
             OR EXISTS(SELECT 1 FROM adapters INDEXED BY adapters_config WHERE config_digest = ?1)
             OR EXISTS(SELECT 1 FROM adapters INDEXED BY adapters_weights WHERE weights_digest = ?1)",
    )?;
    Ok(st.query_row([digest], |r| r.get(0))?)
}

impl Store {
    /// Mark-and-sweep: deletes blobs no adapter references, if older than `grace` seconds,
    /// and temp files of crashed writers older than `grace`. Runs under the write lock.
    pub fn gc(&mut self, grace: i64, dry_run: bool) -> Result<GcReport> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut report = GcReport { dry_run, ..Default::default() };
        let now = std::time::SystemTime::now();
        let old_enough = |p: &Path| -> bool {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).map(|d| d.as_secs() as i64 >= grace).unwrap_or(false))
                .unwrap_or(false)
        };
        let blob_dir = self.home.join("blobs/sha256");
        let mut digest = String::with_capacity(71);
        for e in std::fs::read_dir(&blob_dir).at(&blob_dir)? {
            let e = e.at(&blob_dir)?;
            let name = e.file_name().to_string_lossy().to_string();
            digest.clear();
            digest.push_str("sha256:");
            digest.push_str(&name);
            if referenced(&tx, &digest)? {
                report.referenced += 1;
                continue;
            }
            let p = e.path();
            if !old_enough(&p) {
                report.kept_in_grace += 1;
                continue;
            }
            report.removed_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            report.removed.push(digest.clone());
            if !dry_run {
                std::fs::remove_file(&p).at(&p)?;
            }
        }
        let tmp_dir = self.home.join("tmp");
        for e in std::fs::read_dir(&tmp_dir).at(&tmp_dir)? {
            let p = e.at(&tmp_dir)?.path();
            // a temp file is a writer's work in progress while that process lives
            if old_enough(&p) && !writer_alive(&p) {
                report.temp_files_removed += 1;
                if !dry_run {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        tx.commit()?;
        report.removed.sort();
        Ok(report)
    }

    /// Re-hashes every blob; reports corrupt blobs, blobs the index needs but lacks, and
    /// files in the blob directory whose names are not digests.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let blob_dir = self.home.join("blobs/sha256");
        for e in std::fs::read_dir(&blob_dir).at(&blob_dir)? {
            let p = e.at(&blob_dir)?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let Ok(want) = Digest::parse(&format!("sha256:{name}")) else {
                rep.stray.push(p.display().to_string());
                continue;
            };
            let (got, n) = crate::digest::hash_file(&p)?;
            rep.checked += 1;
            rep.bytes += n;
            if got != want {
                rep.corrupt.push(want.to_string());
            }
        }
        // what the index needs: one stat per blob name, the few bad ones remembered
        let corrupt: HashSet<&str> = rep.corrupt.iter().map(String::as_str).collect();
        let mut missing: HashSet<String> = HashSet::new();
        let mut stmt = self.conn.prepare("SELECT manifest_digest, config_digest, weights_digest FROM adapters")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..3 {
                let d = Digest::parse(super::text(r, i)?)?;
                if !self.blob_path(&d).is_file() && !corrupt.contains(d.to_string().as_str()) && missing.insert(d.to_string()) {
                    rep.missing.push(d.to_string());
                }
            }
        }
        Ok(rep)
    }
}
