//! `loradex bench store`: `ls` and `prune --dry-run` over N synthetic adapters indexed in a
//! real store, each beside a bare index scan of the same rows in the same run, and the whole
//! CLI process as an operator runs it, with its peak memory. Builds its own store in a temp
//! directory (or `--keep DIR`); touches no other store.

use super::bench::{time, tmpdir};
use loradex::error::{Error, Result};
use loradex::store::Store;
use std::path::Path;
use std::time::Instant;

pub fn run(n: usize, keep: Option<&Path>) -> Result<()> {
    let tmp = match keep {
        Some(k) => {
            let _ = std::fs::remove_dir_all(k);
            k.to_path_buf()
        }
        None => tmpdir("store")?,
    };
    // the goals: 100k adapters ls < 100 ms, prune < 1 s; 1M ls < 1 s, prune < 5 s
    let (ls_goal, prune_goal) = if n <= 100_000 { (100.0, 1000.0) } else { (1000.0, 5000.0) };
    let mut s = Store::open(&tmp)?;
    let t = Instant::now();
    {
        let conn = s.connection();
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO adapters(digest, manifest_digest, config_digest, weights_digest, base_fingerprint, base_arch, task, rank, alpha,
                   use_rslora, target_modules, modules_to_save, labels, provenance, created_at, last_used_at, size, ref_count)
                 VALUES(?1, ?1, ?2, ?3, ?4, 'bert', 'SEQ_CLS', 8, 16, 0, '[\"query\",\"value\"]', '[\"classifier\"]', '[]', '{}', ?5, ?6, 1200000, 1)",
            )?;
            let mut r = tx.prepare(
                "INSERT INTO refs(name, tag, digest, updated_at, task, rank, base_fingerprint, size, created_at)
                 VALUES(?1, ?2, ?3, ?4, 'SEQ_CLS', 8, ?5, 1200000, ?4)",
            )?;
            let base = loradex::digest::Digest::of(b"base").to_string();
            let now = loradex::util::now_secs();
            for i in 0..n {
                let d = loradex::digest::Digest::of(format!("a{i}").as_bytes()).to_string();
                let c = loradex::digest::Digest::of(format!("c{i}").as_bytes()).to_string();
                let w = loradex::digest::Digest::of(format!("w{i}").as_bytes()).to_string();
                let created = now - (n - i) as i64 * 60;
                ins.execute(rusqlite::params![d, c, w, base, created, created + 30])?;
                r.execute(rusqlite::params![format!("team{}/domain{}", i % 100, i / 100 % 50), format!("v{}", i / 5000), d, created, base])?;
            }
        }
        tx.commit()?;
    }
    println!("bench store: {n} adapters indexed in {:.2} s", t.elapsed().as_secs_f64());
    // baseline: a bare scan of the same rows
    let scan = time(3, || {
        let c = s.connection();
        let mut st = c.prepare("SELECT digest, size FROM adapters")?;
        let n: usize = st.query_map([], |r| r.get::<_, String>(0))?.count();
        Ok(n)
    })?;
    let ls = time(3, || {
        let rows = s.list(None)?;
        let mut out = std::io::sink();
        use std::io::Write;
        for r in &rows {
            writeln!(out, "{} {} {:?} {} {}", r.r#ref, r.digest, r.task, r.rank, r.size).map_err(|e| Error::io("sink", e))?;
        }
        Ok(rows.len())
    })?;
    let ls_json = time(3, || Ok(serde_json::to_vec(&s.list(None)?).map_err(|e| Error::json("ls", e))?.len()))?;
    let prune_keep = time(3, || s.prune(&loradex::store::PrunePolicy { keep_last: Some(3), ..Default::default() }, true).map(|r| r.adapters.len()))?;
    let prune_age = time(3, || {
        s.prune(&loradex::store::PrunePolicy { older_than: Some(86400), unused_for: Some(3600), ..Default::default() }, true).map(|r| r.adapters.len())
    })?;
    println!("  baseline: bare index scan      {:>8.1} ms", scan * 1e3);
    println!("  ls (table)                     {:>8.1} ms  ({:.1}x scan; goal < {ls_goal} ms)", ls * 1e3, ls / scan);
    println!("  ls --json                      {:>8.1} ms  ({:.1}x scan; goal < {ls_goal} ms)", ls_json * 1e3, ls_json / scan);
    println!("  prune --dry-run --keep-last 3  {:>8.1} ms  ({:.1}x scan; goal < {prune_goal} ms)", prune_keep * 1e3, prune_keep / scan);
    println!("  prune --dry-run --older-than 1d --unused-for 1h {:>6.1} ms  ({:.1}x scan; goal < {prune_goal} ms)", prune_age * 1e3, prune_age / scan);
    // the whole CLI process, as an operator runs it (stdout to /dev/null)
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    for args in [&["ls"][..], &["--json", "ls"], &["ls", "--limit", "50"], &["prune", "--keep-last", "3", "--dry-run"]] {
        let (mut hwm, mut anon) = (0, 0);
        let t = time(3, || {
            let mut child = std::process::Command::new(&exe)
                .arg("--home")
                .arg(&tmp)
                .args(args)
                .stdout(std::process::Stdio::null())
                .spawn()
                .map_err(|e| Error::io("loradex", e))?;
            let (h, a) = watch_memory(&mut child)?;
            (hwm, anon) = (hwm.max(h), anon.max(a));
            Ok(())
        })?;
        println!(
            "  process: loradex {:<34} {:>8.1} ms  own memory {:>5.1} MB (peak RSS {:>6.1} MB with the mapped index)",
            args.join(" "),
            t * 1e3,
            anon as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Waits for `child`, sampling /proc every 2 ms; returns its peak resident set (`VmHWM`, KiB:
/// it includes the pages of the index file that SQLite maps, which the kernel can drop) and
/// the largest anonymous resident set seen (`RssAnon`: the process's own memory). Fails if the
/// child does.
fn watch_memory(child: &mut std::process::Child) -> Result<(u64, u64)> {
    let status_path = format!("/proc/{}/status", child.id());
    let (mut hwm, mut anon) = (0u64, 0u64);
    let field = |s: &str, name: &str| s.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            hwm = hwm.max(field(&s, "VmHWM:").unwrap_or(0));
            anon = anon.max(field(&s, "RssAnon:").unwrap_or(0));
        }
        if let Some(st) = child.try_wait().map_err(|e| Error::io("loradex", e))? {
            if !st.success() {
                return Err(Error::Model(format!("loradex exited with {st}")));
            }
            return Ok((hwm, anon));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
