//! The local adapter store: content-addressed blobs under `blobs/sha256/` and a SQLite index
//! (WAL) of manifests, refs, bases and leases. Owns every file under the store home and
//! nothing outside it. Crash safety: blobs are written to `tmp/` while hashed, fsynced and
//! renamed into place before any index row names them; index changes are single transactions.
//! Concurrency: writers take SQLite's write lock (`BEGIN IMMEDIATE`); `gc` sweeps only while
//! holding it and only blobs older than a grace period, and importers re-check their blobs
//! under the same lock, so an import racing a prune never loses a blob.
//!
//! This file owns opening the store, blobs, adding, resolving, tagging and removing; the
//! schema and its migrations are `schema`'s, listing `list`'s, leases `lease`'s, policy
//! deletion `prune`'s, blob sweeping and checking `gc`'s, recorded evaluations `evals`', and
//! the temp files blobs are written through (also by downloads, without the lock) `staging`'s.

mod evals;
mod gc;
mod lease;
mod list;
mod prune;
pub mod refs;
mod schema;
mod staging;

use crate::base::BaseDir;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::util::{now_secs, rfc3339};
pub use evals::Evaluation;
pub use gc::{GcReport, VerifyReport};
pub use lease::{Holder, Liveness, RENEW_EVERY_SECS};
pub use list::{ListQuery, ListRow};
pub use prune::{PrunePolicy, PruneReport, PruneSummary};
pub use refs::Ref;
pub use staging::{BlobWriter, StagedBlob, Staging};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How long a writer waits for another's write lock before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Default grace period before an unreferenced blob may be swept.
pub const DEFAULT_GRACE_SECS: i64 = 3600;

/// The content-addressed record of an adapter: what its digest is computed over.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ManifestBlob {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Digest,
    pub weights: Digest,
    pub base: Digest,
    pub labels: Vec<String>,
}

/// Everything `show --json` prints (described by `schemas/manifest.schema.json`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub refs: Vec<String>,
    pub peft_type: String,
    pub task: Option<String>,
    pub base_fingerprint: Digest,
    pub base_arch: String,
    pub rank: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub target_modules: Vec<String>,
    pub modules_to_save: Vec<String>,
    pub labels: Vec<String>,
    pub metrics: Option<serde_json::Value>,
    pub provenance: serde_json::Value,
    pub config_digest: Digest,
    pub weights_digest: Digest,
    pub manifest_digest: Digest,
    pub size: u64,
    pub created_at: String,
    pub last_used_at: Option<String>,
    /// `loradex eval --record` results, one per data set (kept beside the index row, outside
    /// the digest).
    #[serde(default)]
    pub evaluations: Vec<Evaluation>,
}

/// A blob for `add`: bytes in memory, or a file already staged and verified in `tmp/` (a
/// pull's download), which `add` renames into place rather than copying.
pub enum BlobSource<'a> {
    Bytes(&'a [u8]),
    Staged(StagedBlob),
}

impl BlobSource<'_> {
    fn len(&self) -> u64 {
        match self {
            BlobSource::Bytes(b) => b.len() as u64,
            BlobSource::Staged(s) => s.len(),
        }
    }

    /// Bytes are written to `blobs/` now (outside the write lock); a staged blob only names
    /// its digest until `place`.
    fn put(&self, home: &Path) -> Result<Digest> {
        match self {
            BlobSource::Bytes(b) => write_blob(home, b),
            BlobSource::Staged(s) => Ok(*s.digest()),
        }
    }

    /// Under the write lock: a staged blob is renamed into place, and bytes written before are
    /// written again if a concurrent sweep took them.
    fn place(self, home: &Path, d: &Digest) -> Result<()> {
        match self {
            BlobSource::Staged(s) => s.commit(),
            BlobSource::Bytes(_) if home.join("blobs/sha256").join(d.hex()).is_file() => Ok(()),
            BlobSource::Bytes(b) => write_blob(home, b).map(|_| ()),
        }
    }
}

/// A new adapter to add (from `import`, `train`, `combine` or `pull`).
pub struct NewAdapter<'a> {
    pub config_blob: BlobSource<'a>,
    pub weights_blob: BlobSource<'a>,
    pub config: &'a crate::peft::LoraConfig,
    pub base_fingerprint: Digest,
    pub base_arch: &'a str,
    pub labels: Vec<String>,
    pub metrics: Option<serde_json::Value>,
    pub provenance: serde_json::Value,
}

pub struct Store {
    home: PathBuf,
    conn: Connection,
    /// When this handle last wrote each adapter's lease and use time (`lease::renew`).
    renewed: HashMap<Digest, i64>,
}

/// `$LORADEX_HOME`, else `$XDG_DATA_HOME/loradex`, else `~/.local/share/loradex`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("LORADEX_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("loradex");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/loradex")
}

fn sql_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializable")
}

impl Store {
    pub fn open(home: &Path) -> Result<Store> {
        for d in [home.to_path_buf(), home.join("blobs/sha256"), home.join("tmp")] {
            std::fs::create_dir_all(&d).at(&d)?;
        }
        let mut conn = Connection::open(home.join("index.db"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // read pages straight from the mapped file: listing 100k refs was 10% pread copies
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        schema::migrate(&mut conn)?;
        Ok(Store { home: home.to_path_buf(), conn, renewed: HashMap::new() })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.home.join("blobs/sha256").join(d.hex())
    }

    /// Writes a blob: temp file while hashing, fsync, rename. Identical content is stored once.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        write_blob(&self.home, bytes)
    }

    /// The store's temp area, for writing blobs (a download) without holding the store.
    pub fn staging(&self) -> Staging {
        Staging::new(&self.home)
    }

    /// Reads a blob and checks it still hashes to its name: corruption is an error at the
    /// first read, never served or exported (about 1 ms per MB).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let bytes = std::fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("blob {d} (run `loradex verify`)")),
            _ => Error::io(&p, e),
        })?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(Error::Corrupt { digest: d.to_string(), actual: actual.to_string() });
        }
        Ok(bytes)
    }

    /// The base's fingerprint, cached by path + (size, mtime) of its files.
    pub fn base_fingerprint(&self, base: &BaseDir) -> Result<Digest> {
        let path = base.dir.display().to_string();
        let stamp = base.stamp()?;
        let cached: Option<(String, String)> = self
            .conn
            .query_row("SELECT stamp, fingerprint FROM base_paths WHERE path = ?1", [&path], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((s, fp)) = cached {
            if s == stamp {
                return Digest::parse(&fp);
            }
        }
        let fp = base.fingerprint()?;
        self.conn.execute(
            "INSERT INTO base_paths(path, stamp, fingerprint) VALUES(?1, ?2, ?3)
             ON CONFLICT(path) DO UPDATE SET stamp = excluded.stamp, fingerprint = excluded.fingerprint",
            params![path, stamp, fp.to_string()],
        )?;
        self.conn.execute(
            "INSERT OR IGNORE INTO bases(fingerprint, arch, config, path, registered_at) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![fp.to_string(), base.arch.name(), String::from_utf8_lossy(&base.config_bytes), path, now_secs()],
        )?;
        Ok(fp)
    }

    /// The directories a base with fingerprint `fp` was opened from (as this store saw them;
    /// they may have moved or changed since).
    pub fn base_paths(&self, fp: &Digest) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path FROM base_paths WHERE fingerprint = ?1 UNION SELECT path FROM bases WHERE fingerprint = ?1 AND path IS NOT NULL",
        )?;
        let rows = stmt.query_map([fp.to_string()], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Adds an adapter and points `name` at it. Returns its digest.
    pub fn add(&mut self, a: NewAdapter, name: &Ref) -> Result<Digest> {
        let config_digest = a.config_blob.put(&self.home)?;
        let weights_digest = a.weights_blob.put(&self.home)?;
        let mb = ManifestBlob {
            schema_version: 1,
            media_type: "application/vnd.loradex.adapter.v1+json".into(),
            config: config_digest,
            weights: weights_digest,
            base: a.base_fingerprint,
            labels: a.labels.clone(),
        };
        let mb_bytes = serde_json::to_vec(&mb).expect("manifest serializes");
        let digest = self.put_blob(&mb_bytes)?;
        let size = (a.config_blob.len() + a.weights_blob.len() + mb_bytes.len() as u64) as i64;
        let now = now_secs();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Under the write lock gc cannot run: staged blobs are renamed into place now, and the
        // ones written earlier are re-checked (a sweep racing this add may have taken them).
        for (d, blob) in [(&config_digest, a.config_blob), (&weights_digest, a.weights_blob), (&digest, BlobSource::Bytes(&mb_bytes))] {
            blob.place(&self.home, d)?;
        }
        let mut targets = a.config.target_modules.clone();
        targets.sort();
        tx.execute(
            "INSERT OR IGNORE INTO adapters(digest, manifest_digest, config_digest, weights_digest, base_fingerprint, base_arch,
               task, rank, alpha, use_rslora, target_modules, modules_to_save, labels, metrics, provenance, created_at, size)
             VALUES(?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                digest.to_string(),
                config_digest.to_string(),
                weights_digest.to_string(),
                a.base_fingerprint.to_string(),
                a.base_arch,
                a.config.task_type,
                a.config.r as i64,
                a.config.lora_alpha,
                a.config.use_rslora,
                sql_json(&targets),
                sql_json(&a.config.modules_to_save),
                sql_json(&a.labels),
                a.metrics.as_ref().map(sql_json),
                sql_json(&a.provenance),
                now,
                size
            ],
        )?;
        if let Some(m) = &a.metrics {
            tx.execute("UPDATE adapters SET metrics = ?2 WHERE digest = ?1", params![digest.to_string(), sql_json(m)])?;
        }
        upsert_ref(&tx, name, &digest, now)?;
        tx.commit()?;
        Ok(digest)
    }

    /// Resolves `sha256:<hex>` or `NAME[:TAG]` to a stored adapter's digest.
    pub fn resolve(&self, s: &str) -> Result<Digest> {
        if s.starts_with("sha256:") {
            let d = Digest::parse(s)?;
            let found: Option<i64> =
                self.conn.query_row("SELECT 1 FROM adapters WHERE digest = ?1", [d.to_string()], |r| r.get(0)).optional()?;
            return found.map(|_| d).ok_or_else(|| Error::NotFound(format!("adapter {d}")));
        }
        let r = Ref::parse(s)?;
        let d: Option<String> = self
            .conn
            .query_row("SELECT digest FROM refs WHERE name = ?1 AND tag = ?2", params![r.name, r.tag], |row| row.get(0))
            .optional()?;
        d.map(|d| Digest::parse(&d)).transpose()?.ok_or_else(|| Error::NotFound(format!("adapter {r}")))
    }

    pub fn manifest(&self, d: &Digest) -> Result<Manifest> {
        let row = self
            .conn
            .query_row(
                "SELECT manifest_digest, config_digest, weights_digest, base_fingerprint, base_arch, task, rank, alpha, use_rslora,
                        target_modules, modules_to_save, labels, metrics, provenance, created_at, last_used_at, size
                 FROM adapters WHERE digest = ?1",
                [d.to_string()],
                |r| {
                    Ok((
                        [r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?],
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        (r.get::<_, i64>(6)?, r.get::<_, f64>(7)?, r.get::<_, bool>(8)?),
                        [r.get::<_, String>(9)?, r.get(10)?, r.get(11)?],
                        (r.get::<_, Option<String>>(12)?, r.get::<_, String>(13)?),
                        (r.get::<_, i64>(14)?, r.get::<_, Option<i64>>(15)?, r.get::<_, i64>(16)?),
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("adapter {d}")))?;
        let (digests, arch, task, (rank, alpha, rs), lists, (metrics, prov), (created, used, size)) = row;
        let list = |s: &str| -> Result<Vec<String>> { serde_json::from_str(s).map_err(|e| Error::json("index list", e)) };
        let mut refs = Vec::new();
        let mut stmt = self.conn.prepare_cached("SELECT name, tag FROM refs WHERE digest = ?1 ORDER BY name, tag")?;
        for r in stmt.query_map([d.to_string()], |r| Ok(format!("{}:{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            refs.push(r?);
        }
        Ok(Manifest {
            digest: *d,
            refs,
            peft_type: "LORA".into(),
            task,
            base_fingerprint: Digest::parse(&digests[3])?,
            base_arch: arch,
            rank: rank as usize,
            alpha,
            use_rslora: rs,
            target_modules: list(&lists[0])?,
            modules_to_save: list(&lists[1])?,
            labels: list(&lists[2])?,
            metrics: metrics.map(|m| serde_json::from_str(&m)).transpose().map_err(|e| Error::json("metrics", e))?,
            provenance: serde_json::from_str(&prov).map_err(|e| Error::json("provenance", e))?,
            config_digest: Digest::parse(&digests[1])?,
            weights_digest: Digest::parse(&digests[2])?,
            manifest_digest: Digest::parse(&digests[0])?,
            size: size as u64,
            created_at: rfc3339(created),
            last_used_at: used.map(rfc3339),
            evaluations: self.evaluations(d)?,
        })
    }

    /// Reads an adapter's config and weights bytes.
    pub fn adapter_files(&self, d: &Digest) -> Result<(Manifest, Vec<u8>, Vec<u8>)> {
        let m = self.manifest(d)?;
        let cfg = self.read_blob(&m.config_digest)?;
        let w = self.read_blob(&m.weights_digest)?;
        Ok((m, cfg, w))
    }

    pub fn touch(&self, d: &Digest) -> Result<()> {
        self.conn.execute("UPDATE adapters SET last_used_at = ?2 WHERE digest = ?1", params![d.to_string(), now_secs()])?;
        Ok(())
    }

    pub fn tag(&mut self, src: &str, dst: &Ref) -> Result<Digest> {
        let d = self.resolve(src)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        upsert_ref(&tx, dst, &d, now_secs())?;
        tx.commit()?;
        Ok(d)
    }

    /// Removes a ref; an adapter left with no refs is deleted from the index (its blobs go at
    /// the next `gc`). A digest removes the adapter and all its refs.
    pub fn rm(&mut self, s: &str) -> Result<Digest> {
        let d = self.resolve(s)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if s.starts_with("sha256:") {
            tx.execute("DELETE FROM refs WHERE digest = ?1", [d.to_string()])?;
        } else {
            let r = Ref::parse(s)?;
            tx.execute("DELETE FROM refs WHERE name = ?1 AND tag = ?2", params![r.name, r.tag])?;
        }
        recount(&tx, &d.to_string())?;
        tx.execute(
            "DELETE FROM adapters WHERE digest = ?1 AND NOT EXISTS (SELECT 1 FROM refs WHERE digest = ?1)",
            [d.to_string()],
        )?;
        tx.commit()?;
        Ok(d)
    }

    /// SQLite's own consistency check (for tests and `verify`).
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// Raw connection, for benchmarks that bulk-load the index.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Whether the process that named a temp file `blob-<pid>-…` still runs. Where that cannot be
/// told (no /proc), the writer is assumed alive until the file is a day old.
fn writer_alive(p: &Path) -> bool {
    let pid = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("blob-")).and_then(|n| n.split('-').next());
    let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { return false };
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if proc.is_dir() {
        return proc.join(pid.to_string()).exists();
    }
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().map(|d| d.as_secs() < 86400).unwrap_or(true))
        .unwrap_or(false)
}

/// Writes `bytes` through a staged temp file (hashed again as written) unless already stored.
fn write_blob(home: &Path, bytes: &[u8]) -> Result<Digest> {
    let expected = Digest::of(bytes);
    let dst = home.join("blobs/sha256").join(expected.hex());
    if std::fs::metadata(&dst).map(|m| m.is_file() && m.len() == bytes.len() as u64).unwrap_or(false) {
        return Ok(expected);
    }
    let mut w = Staging::new(home).create()?;
    w.write_all(bytes).at(w.path())?;
    w.finish(&expected)?.commit()?;
    Ok(expected)
}

/// A TEXT column borrowed from the row (no allocation).
fn text<'r>(r: &'r rusqlite::Row, i: usize) -> Result<&'r str> {
    r.get_ref(i)?
        .as_str()
        .map_err(|e| Error::Sqlite(rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))))
}

fn upsert_ref(tx: &rusqlite::Transaction, r: &Ref, d: &Digest, now: i64) -> Result<()> {
    let old: Option<String> =
        tx.query_row("SELECT digest FROM refs WHERE name = ?1 AND tag = ?2", params![r.name, r.tag], |row| row.get(0)).optional()?;
    let n = tx.execute(
        "INSERT INTO refs(name, tag, digest, updated_at, task, rank, base_fingerprint, size, created_at)
         SELECT ?1, ?2, digest, ?4, task, rank, base_fingerprint, size, created_at FROM adapters WHERE digest = ?3
         ON CONFLICT(name, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at,
           task = excluded.task, rank = excluded.rank, base_fingerprint = excluded.base_fingerprint,
           size = excluded.size, created_at = excluded.created_at",
        params![r.name, r.tag, d.to_string(), now],
    )?;
    if n != 1 {
        return Err(Error::NotFound(format!("adapter {d}")));
    }
    // an adapter the ref pointed at before and that nothing else names is now dangling:
    // it stays until `prune` (so a re-tag can be undone by digest)
    if let Some(o) = old {
        recount(tx, &o)?;
    }
    recount(tx, &d.to_string())
}

/// Keeps `adapters.ref_count` (which finds dangling adapters without a join) exact.
fn recount(tx: &rusqlite::Transaction, digest: &str) -> Result<()> {
    tx.execute("UPDATE adapters SET ref_count = (SELECT COUNT(*) FROM refs WHERE digest = ?1) WHERE digest = ?1", [digest])?;
    Ok(())
}
