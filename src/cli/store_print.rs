//! The store commands' output: `ls` and `prune` rows written as they are read (memory does not
//! grow with the store, and row formatting is hand-rolled: at 100k rows `format!` padding was
//! most of the time), and `show`'s manifest view. Prints only; the selection is the store's.

use loradex::error::{Error, Result};
use loradex::store::{self, PrunePolicy, Store};
use loradex::util::civil;

/// Prints what a prune selects as it is selected (memory does not grow with the store): one
/// line per adapter and a summary, or the JSON of `store::PruneReport`, written piecewise.
pub(super) fn prune_print(s: &mut Store, policy: &PrunePolicy, dry_run: bool, js: bool) -> Result<()> {
    use std::io::Write;
    let out = std::io::stdout();
    let w = std::cell::RefCell::new(std::io::BufWriter::with_capacity(1 << 20, out.lock()));
    let io = |e: std::io::Error| Error::io("stdout", e);
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut first = true;
    if js {
        write!(w.borrow_mut(), "{{\"dry_run\":{dry_run},\"adapters\":[").map_err(io)?;
    }
    let mut on_adapter = |d: &str| -> Result<()> {
        let mut w = w.borrow_mut();
        if js {
            // digests are validated hex: no escaping needed
            write!(w, "{}\"{d}\"", if first { "" } else { "," }).map_err(io)?;
        } else {
            writeln!(w, "{verb} {d}").map_err(io)?;
        }
        first = false;
        Ok(())
    };
    let mut first_ref = true;
    let mut on_ref = |r: &str| -> Result<()> {
        let mut w = w.borrow_mut();
        if first_ref {
            w.write_all(b"],\"refs\":[").map_err(io)?;
        } else {
            w.write_all(b",").map_err(io)?;
        }
        first_ref = false;
        serde_json::to_writer(&mut *w, r).map_err(|e| Error::json("prune", e))?;
        Ok(())
    };
    // the refs are listed only in JSON (the text form counts them)
    let refs = js.then_some(&mut on_ref as &mut dyn FnMut(&str) -> Result<()>);
    let sum = s.prune_each(policy, dry_run, loradex::util::now_secs(), &mut on_adapter, refs)?;
    let mut w = w.into_inner();
    if js {
        if first_ref {
            w.write_all(b"],\"refs\":[").map_err(io)?;
        }
        w.write_all(b"],\"gc\":").map_err(io)?;
        serde_json::to_writer(&mut w, &sum.gc).map_err(|e| Error::json("prune", e))?;
        w.write_all(b"}\n").map_err(io)?;
    } else {
        writeln!(w, "{verb} {} adapter(s), {} ref(s)", sum.adapters, sum.refs).map_err(io)?;
        if let Some(g) = &sum.gc {
            writeln!(w, "swept {} blob(s), {} bytes", g.removed.len(), g.removed_bytes).map_err(io)?;
        }
    }
    w.flush().map_err(io)
}

pub(super) fn ls_print(s: &Store, q: &store::ListQuery, js: bool) -> Result<()> {
    use std::io::Write;
    let out = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out.lock());
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut first = true;
    if !js {
        let _ = writeln!(w, "{:<40} {:<14} {:<10} {:>4} {:>10}  {:<20}", "REF", "DIGEST", "TASK", "RANK", "SIZE", "CREATED");
    }
    let res = s.list_query(q, |r| {
        line.clear();
        if js {
            // refs are validated to [A-Za-z0-9._/:-] (or "<none>"), digests are hex: only the
            // task (from a PEFT config) can need escaping, so only it goes through serde_json
            line.push(if first { b'[' } else { b',' });
            line.extend_from_slice(b"{\"ref\":\"");
            line.extend_from_slice(r.r#ref.as_bytes());
            line.extend_from_slice(b"\",\"digest\":\"");
            line.extend_from_slice(r.digest.as_bytes());
            line.extend_from_slice(b"\",\"task\":");
            serde_json::to_writer(&mut line, &r.task).map_err(|e| Error::json("ls", e))?;
            line.extend_from_slice(b",\"rank\":");
            line.extend_from_slice(int(r.rank).as_bytes());
            line.extend_from_slice(b",\"base\":\"");
            line.extend_from_slice(r.base.as_bytes());
            line.extend_from_slice(b"\",\"size\":");
            line.extend_from_slice(int(r.size).as_bytes());
            line.extend_from_slice(b",\"created_at\":");
            line.extend_from_slice(int(r.created_at).as_bytes());
            line.push(b'}');
        } else {
            // hand-rolled row formatting: with 100k rows, `format!` padding was most of the time
            pad(&mut line, r.r#ref.as_bytes(), 40, false);
            line.push(b' ');
            pad(&mut line, r.digest.as_bytes().get(7..19).unwrap_or(r.digest.as_bytes()), 14, false);
            line.push(b' ');
            pad(&mut line, r.task.as_deref().unwrap_or("-").as_bytes(), 10, false);
            line.push(b' ');
            pad(&mut line, int(r.rank).as_bytes(), 4, true);
            line.push(b' ');
            pad(&mut line, int(r.size).as_bytes(), 10, true);
            line.extend_from_slice(b"  ");
            let (y, mo, d, hh, mi, ss) = civil(r.created_at);
            for (v, width, sep) in [(y, 4usize, b'-'), (mo, 2, b'-'), (d, 2, b'T'), (hh, 2, b':'), (mi, 2, b':'), (ss, 2, b'Z')] {
                let s = int(v);
                line.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
                line.extend_from_slice(s.as_bytes());
                line.push(sep);
            }
            line.push(b'\n');
        }
        first = false;
        w.write_all(&line).map_err(|e| Error::io("stdout", e))
    });
    match res {
        // stdout closed (piped into `head`): stop quietly
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    if js {
        let _ = w.write_all(if first { b"[]\n" } else { b"]\n" });
    }
    Ok(())
}

fn pad(out: &mut Vec<u8>, s: &[u8], width: usize, right: bool) {
    let fill = width.saturating_sub(s.len());
    if right {
        out.extend(std::iter::repeat_n(b' ', fill));
    }
    out.extend_from_slice(s);
    if !right {
        out.extend(std::iter::repeat_n(b' ', fill));
    }
}

/// Decimal digits of an integer without the formatting machinery (stack buffer).
fn int(n: i64) -> IntBuf {
    let mut b = IntBuf { buf: [0; 20], start: 20 };
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        b.start -= 1;
        b.buf[b.start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg && b.start > 0 {
        b.start -= 1;
        b.buf[b.start] = b'-';
    }
    b
}

struct IntBuf {
    buf: [u8; 20],
    start: usize,
}

impl IntBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    fn len(&self) -> usize {
        20 - self.start
    }
}

pub(super) fn show_print(m: &store::Manifest) {
    println!("digest:          {}", m.digest);
    println!("refs:            {}", m.refs.join(", "));
    println!("task:            {}", m.task.as_deref().unwrap_or("-"));
    println!("base:            {} ({})", m.base_fingerprint, m.base_arch);
    println!("rank / alpha:    {} / {}{}", m.rank, m.alpha, if m.use_rslora { " (rslora)" } else { "" });
    println!("target modules:  {}", m.target_modules.join(", "));
    println!("modules to save: {}", if m.modules_to_save.is_empty() { "-".into() } else { m.modules_to_save.join(", ") });
    println!("labels:          {}", m.labels.join(", "));
    println!("size:            {} bytes", m.size);
    println!("created:         {}", m.created_at);
    println!("last used:       {}", m.last_used_at.as_deref().unwrap_or("never"));
    if let Some(metrics) = &m.metrics {
        println!("metrics:         {}", serde_json::to_string(metrics).unwrap_or_default());
    }
    println!("provenance:      {}", serde_json::to_string(&m.provenance).unwrap_or_default());
    for e in &m.evaluations {
        let get = |k: &str| e.metrics.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let n = e.metrics.get("examples").and_then(|v| v.as_u64()).unwrap_or(0);
        println!("eval:            {} ({n} examples, {}) accuracy {:.4} macro-F1 {:.4} ({})", e.data, e.data_digest.short(), get("accuracy"), get("macro_f1"), e.recorded_at);
    }
}

