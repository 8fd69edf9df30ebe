//! The local adapter store: content-addressed blobs under `blobs/sha256/` and a SQLite index
//! (WAL) of manifests, refs, bases and leases. Owns every file under the store home and
//! nothing outside it. Crash safety: blobs are written to `tmp/` while hashed, fsynced and
//! renamed into place before any index row names them; index changes are single transactions.
//! Concurrency: writers take SQLite's write lock (`BEGIN IMMEDIATE`); `gc` sweeps only while
//! holding it and only blobs older than a grace period, and importers re-check their blobs
//! under the same lock, so an import racing a prune never loses a blob.

pub mod refs;

use crate::base::BaseDir;
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::util::{now_secs, rfc3339, unique_suffix};
pub use refs::Ref;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Default grace period before an unreferenced blob may be swept.
pub const DEFAULT_GRACE_SECS: i64 = 3600;

const SCHEMA: &str = r#"
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
CREATE INDEX IF NOT EXISTS adapters_created ON adapters(created_at);
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
CREATE INDEX IF NOT EXISTS refs_digest ON refs(digest);
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
}

/// A new adapter to add (from `import` or `train`).
pub struct NewAdapter<'a> {
    pub config_bytes: &'a [u8],
    pub weights_bytes: &'a [u8],
    pub config: &'a crate::peft::LoraConfig,
    pub base_fingerprint: Digest,
    pub base_arch: &'a str,
    pub labels: Vec<String>,
    pub metrics: Option<serde_json::Value>,
    pub provenance: serde_json::Value,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct ListRow {
    pub r#ref: String,
    pub digest: String,
    pub task: Option<String>,
    pub rank: i64,
    pub base: String,
    pub size: i64,
    pub created_at: i64,
}

#[derive(Default, Debug, Clone)]
pub struct PrunePolicy {
    pub keep_last: Option<usize>,
    pub older_than: Option<i64>,
    pub unused_for: Option<i64>,
    pub grace: i64,
}

#[derive(Serialize, Debug, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    pub adapters: Vec<String>,
    pub refs: Vec<String>,
    pub gc: Option<GcReport>,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct GcReport {
    pub dry_run: bool,
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

pub struct Store {
    home: PathBuf,
    conn: Connection,
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
        let conn = Connection::open(home.join("index.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // read pages straight from the mapped file: listing 100k refs was 10% pread copies
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { home: home.to_path_buf(), conn })
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

    /// Adds an adapter and points `name` at it. Returns its digest.
    pub fn add(&mut self, a: NewAdapter, name: &Ref) -> Result<Digest> {
        let config_digest = self.put_blob(a.config_bytes)?;
        let weights_digest = self.put_blob(a.weights_bytes)?;
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
        let size = (a.config_bytes.len() + a.weights_bytes.len() + mb_bytes.len()) as i64;
        let now = now_secs();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Under the write lock gc cannot run: make sure a concurrent sweep did not take our blobs.
        for (d, bytes) in [(&config_digest, a.config_bytes), (&weights_digest, a.weights_bytes), (&digest, &mb_bytes[..])] {
            if !self.home.join("blobs/sha256").join(d.hex()).is_file() {
                write_blob(&self.home, bytes)?;
            }
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

    /// Every ref (and dangling adapter), newest first; optionally only those for one base.
    pub fn list(&self, base: Option<&Digest>) -> Result<Vec<ListRow>> {
        let mut out = Vec::new();
        self.list_each(base, |r| {
            out.push(r.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams `list`'s rows to `f` (newest first, then by name and tag; dangling adapters,
    /// shown as `<none>`, first among equals) without materializing them: refs come in order
    /// from a covering index, the few dangling adapters from a partial index, merged. `f`
    /// gets one reused row, so 100k rows cost no per-row allocation.
    pub fn list_each(&self, base: Option<&Digest>, mut f: impl FnMut(&ListRow) -> Result<()>) -> Result<()> {
        let base = base.map(|b| b.to_string());
        let mut dangling: Vec<ListRow> = {
            let mut st = self.conn.prepare_cached(
                "SELECT digest, task, rank, base_fingerprint, size, created_at FROM adapters
                 WHERE ref_count = 0 AND (?1 IS NULL OR base_fingerprint = ?1) ORDER BY created_at ASC",
            )?;
            let rows = st.query_map([&base], |r| {
                Ok(ListRow {
                    r#ref: "<none>".into(),
                    digest: r.get(0)?,
                    task: r.get(1)?,
                    rank: r.get(2)?,
                    base: r.get(3)?,
                    size: r.get(4)?,
                    created_at: r.get(5)?,
                })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // `dangling` is oldest-first so the newest pops off the end
        let mut st = self.conn.prepare_cached(
            "SELECT name, tag, digest, task, rank, base_fingerprint, size, created_at FROM refs INDEXED BY refs_list
             WHERE ?1 IS NULL OR base_fingerprint = ?1 ORDER BY created_at DESC, name, tag",
        )?;
        let mut rows = st.query([&base])?;
        let mut row = ListRow::default();
        while let Some(r) = rows.next()? {
            let created: i64 = r.get(7)?;
            while dangling.last().is_some_and(|d| d.created_at >= created) {
                f(&dangling.pop().expect("checked"))?;
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
        }
        while let Some(d) = dangling.pop() {
            f(&d)?;
        }
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

    /// Marks an adapter in use by `holder` until `ttl` seconds from now; prune skips it.
    pub fn lease(&self, d: &Digest, holder: &str, ttl: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO leases(digest, holder, expires_at) VALUES(?1, ?2, ?3)
             ON CONFLICT(digest, holder) DO UPDATE SET expires_at = excluded.expires_at",
            params![d.to_string(), holder, now_secs() + ttl],
        )?;
        Ok(())
    }

    pub fn release(&self, d: &Digest, holder: &str) -> Result<()> {
        self.conn.execute("DELETE FROM leases WHERE digest = ?1 AND holder = ?2", params![d.to_string(), holder])?;
        Ok(())
    }

    /// Deletes adapters by policy, then (unless dry-run) sweeps their blobs with `gc`.
    ///
    /// Selection: adapters matching every age filter given (`older_than` on creation,
    /// `unused_for` on last use); with no age filter, only adapters no ref points at. With
    /// `keep_last N` the N newest adapters of each name are always kept, and without age
    /// filters everything older than them is selected. Leased adapters are never selected.
    pub fn prune(&mut self, p: &PrunePolicy, dry_run: bool) -> Result<PruneReport> {
        let now = now_secs();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM leases WHERE expires_at < ?1", [now])?;
        let age_filter = p.older_than.is_some() || p.unused_for.is_some();
        // Selection in memory over sequential scans (see `list` for why).
        let refs = refs_by_digest(&tx)?;
        let leased: HashSet<String> = {
            let mut st = tx.prepare("SELECT digest FROM leases")?;
            let v = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            v
        };
        let mut adapters: Vec<(String, i64, i64)> = vec![];
        {
            let mut st = tx.prepare("SELECT digest, created_at, COALESCE(last_used_at, created_at) FROM adapters")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                adapters.push((r.get(0)?, r.get(1)?, r.get(2)?));
            }
        }
        let mut kept: HashSet<&str> = HashSet::new();
        if let Some(k) = p.keep_last {
            let created: std::collections::HashMap<&str, i64> = adapters.iter().map(|(d, c, _)| (d.as_str(), *c)).collect();
            let mut by_name: std::collections::HashMap<&str, Vec<(i64, &str)>> = std::collections::HashMap::new();
            for (d, names) in &refs {
                let Some(&c) = created.get(d.as_str()) else { continue };
                for n in names {
                    let name = n.rsplit_once(':').map(|(n, _)| n).unwrap_or(n);
                    by_name.entry(name).or_default().push((c, d.as_str()));
                }
            }
            for v in by_name.values_mut() {
                v.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
                v.dedup_by(|a, b| a.1 == b.1);
                kept.extend(v.iter().take(k).map(|(_, d)| *d));
            }
        }
        let mut selected: Vec<(i64, &str)> = adapters
            .iter()
            .filter(|(d, created, used)| {
                !kept.contains(d.as_str())
                    && !leased.contains(d)
                    && p.older_than.is_none_or(|a| *created < now - a)
                    && p.unused_for.is_none_or(|a| *used < now - a)
                    && (age_filter || p.keep_last.is_some() || !refs.contains_key(d))
            })
            .map(|(d, c, _)| (*c, d.as_str()))
            .collect();
        selected.sort_unstable();
        let victims: Vec<String> = selected.into_iter().map(|(_, d)| d.to_string()).collect();
        let refs: Vec<String> = victims.iter().flat_map(|v| refs.get(v).cloned().unwrap_or_default()).collect();
        if !dry_run {
            let mut del_refs = tx.prepare_cached("DELETE FROM refs WHERE digest = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM adapters WHERE digest = ?1")?;
            for v in &victims {
                del_refs.execute([v])?;
                del.execute([v])?;
            }
        }
        tx.commit()?;
        let gc = if dry_run { None } else { Some(self.gc(p.grace, false)?) };
        Ok(PruneReport { dry_run, adapters: victims, refs, gc })
    }

    /// Mark-and-sweep: deletes blobs no adapter references, if older than `grace` seconds,
    /// and temp files of crashed writers older than `grace`. Runs under the write lock.
    pub fn gc(&mut self, grace: i64, dry_run: bool) -> Result<GcReport> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut marked = HashSet::new();
        {
            let mut stmt = tx.prepare("SELECT manifest_digest, config_digest, weights_digest FROM adapters")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                for i in 0..3 {
                    let s: String = r.get(i)?;
                    marked.insert(Digest::parse(&s)?.hex());
                }
            }
        }
        let mut report = GcReport { dry_run, referenced: marked.len(), ..Default::default() };
        let now = std::time::SystemTime::now();
        let old_enough = |p: &Path| -> bool {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).map(|d| d.as_secs() as i64 >= grace).unwrap_or(false))
                .unwrap_or(false)
        };
        let blob_dir = self.home.join("blobs/sha256");
        for e in std::fs::read_dir(&blob_dir).at(&blob_dir)? {
            let e = e.at(&blob_dir)?;
            let name = e.file_name().to_string_lossy().to_string();
            if marked.contains(&name) {
                continue;
            }
            let p = e.path();
            if !old_enough(&p) {
                report.kept_in_grace += 1;
                continue;
            }
            report.removed_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            report.removed.push(format!("sha256:{name}"));
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
        let mut present = HashSet::new();
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
            } else {
                present.insert(want);
            }
        }
        let mut stmt = self.conn.prepare("SELECT manifest_digest, config_digest, weights_digest FROM adapters")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..3 {
                let d = Digest::parse(&r.get::<_, String>(i)?)?;
                if !present.contains(&d) && !rep.corrupt.contains(&d.to_string()) && !rep.missing.contains(&d.to_string()) {
                    rep.missing.push(d.to_string());
                }
            }
        }
        Ok(rep)
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

fn write_blob(home: &Path, bytes: &[u8]) -> Result<Digest> {
    let expected = Digest::of(bytes);
    let dst = home.join("blobs/sha256").join(expected.hex());
    if std::fs::metadata(&dst).map(|m| m.is_file() && m.len() == bytes.len() as u64).unwrap_or(false) {
        return Ok(expected);
    }
    let tmp = home.join("tmp").join(format!("blob-{}-{:x}", std::process::id(), unique_suffix()));
    let res = (|| {
        let f = std::fs::File::create(&tmp).at(&tmp)?;
        let mut w = HashingWriter::new(f);
        w.write_all(bytes).at(&tmp)?;
        let (f, d, _) = w.finish();
        f.sync_all().at(&tmp)?;
        if d != expected {
            return Err(Error::Corrupt { digest: expected.to_string(), actual: d.to_string() });
        }
        std::fs::rename(&tmp, &dst).at(&dst)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| expected)
}

/// `digest -> ["name:tag", …]` (sorted), from one sequential scan of the refs table.
/// A TEXT column borrowed from the row (no allocation).
fn text<'r>(r: &'r rusqlite::Row, i: usize) -> Result<&'r str> {
    r.get_ref(i)?
        .as_str()
        .map_err(|e| Error::Sqlite(rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))))
}

fn refs_by_digest(conn: &Connection) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut m: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    let mut st = conn.prepare_cached("SELECT digest, name, tag FROM refs")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (d, n, t): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        m.entry(d).or_default().push(format!("{n}:{t}"));
    }
    for v in m.values_mut() {
        v.sort_unstable();
    }
    Ok(m)
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
