//! Leases: "this adapter is in use, do not prune it". A lease names its holder, a process
//! (pid plus the process start time from `/proc/<pid>/stat`, so a reused pid is not mistaken
//! for the holder), and `prune` keeps a leased adapter for as long as that process lives,
//! whatever the clocks say; a dead holder's leases are ignored and deleted, so a crashed
//! server never blocks prune. Where liveness cannot be told (no `/proc`, another pid namespace
//! or boot, leases from older versions) a lease lasts until its TTL, which holders renew while
//! they use the adapter. Owns the `leases` table and the throttled use times written with it;
//! touches no other table but `adapters.last_used_at`.

use super::Store;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::util::now_secs;
use rusqlite::{params, Connection};
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

/// A holder writes a lease and `last_used_at` for an adapter it keeps using at most this often.
pub const RENEW_EVERY_SECS: i64 = 60;

/// The process (and the instance within it) that holds leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22);
    /// `None` where it cannot be read.
    pub start_ticks: Option<u64>,
    /// The boot and pid namespace the pid belongs to (`boot_id` and `/proc/self/ns/pid`); a pid
    /// is only judged by a process in the same scope. Empty where unknown.
    pub scope: String,
    /// Tells holders in one process apart (a release by one server leaves another's lease).
    pub instance: u64,
}

/// What a lease's holder is known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// No way to tell here: the lease's TTL decides.
    Unknown,
}

impl Holder {
    /// A new holder for this process: each call gets its own instance.
    pub fn current() -> Holder {
        let mut h = Holder::of_pid(std::process::id()).unwrap_or(Holder {
            pid: std::process::id(),
            start_ticks: None,
            scope: String::new(),
            instance: 0,
        });
        h.instance = crate::util::unique_suffix();
        h
    }

    /// The live process `pid` as a holder (instance 0), if its start time can be read.
    pub fn of_pid(pid: u32) -> Option<Holder> {
        let start_ticks = Some(start_ticks(pid)?);
        Some(Holder { pid, start_ticks, scope: local_scope().to_string(), instance: 0 })
    }

    /// The primary-key text of this holder's leases.
    fn key(&self) -> String {
        format!("{}/{}/{}/{:x}", self.scope, self.pid, self.start_ticks.map(|t| t.to_string()).unwrap_or_default(), self.instance)
    }

    /// Whether the holder process still runs, as far as this process can tell.
    pub fn liveness(&self) -> Liveness {
        let Some(start) = self.start_ticks else { return Liveness::Unknown };
        if self.scope.is_empty() || self.scope != local_scope() || self.pid == 0 || self.pid > i32::MAX as u32 {
            return Liveness::Unknown;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match parse_start_ticks(&stat) {
                Some(t) if t == start => Liveness::Alive,
                Some(_) => Liveness::Dead, // the pid was reused by another process
                None => Liveness::Unknown,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => no_such_process(self.pid),
            Err(_) => Liveness::Unknown,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(t) = self.start_ticks {
            write!(f, " (started at tick {t})")?;
        }
        Ok(())
    }
}

/// `/proc/<pid>` is missing: the process is gone, unless /proc hides other users' processes
/// (`hidepid`), which `kill(pid, 0)` tells apart (EPERM: it exists).
fn no_such_process(pid: u32) -> Liveness {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return Liveness::Dead;
        }
    }
    let _ = pid;
    Liveness::Unknown
}

/// Field 22 of `/proc/<pid>/stat`; the command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn start_ticks(pid: u32) -> Option<u64> {
    parse_start_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This process's boot id and pid namespace, or "" where either cannot be read.
fn local_scope() -> &'static str {
    static SCOPE: OnceLock<String> = OnceLock::new();
    SCOPE.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        let ns = std::fs::read_link("/proc/self/ns/pid").ok();
        match (boot, ns) {
            (Some(b), Some(n)) => format!("{}:{}", b.trim(), n.display()),
            _ => String::new(),
        }
    })
}

impl Store {
    /// Leases `d` to `holder` and marks it used now. Prune keeps it while the holder process
    /// lives; where that cannot be told, for `ttl` seconds (renew with `renew`).
    pub fn lease(&mut self, d: &Digest, holder: &Holder, ttl: i64) -> Result<()> {
        self.lease_at(d, holder, ttl, now_secs())
    }

    /// `lease` with the time given (tests and replays).
    pub fn lease_at(&mut self, d: &Digest, holder: &Holder, ttl: i64, now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO leases(digest, holder, expires_at, pid, pid_start, scope) VALUES(?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(digest, holder) DO UPDATE SET expires_at = excluded.expires_at",
            params![
                d.to_string(),
                holder.key(),
                now.saturating_add(ttl),
                holder.pid,
                holder.start_ticks.map(|t| t as i64),
                holder.scope
            ],
        )?;
        tx.execute("UPDATE adapters SET last_used_at = ?2 WHERE digest = ?1", params![d.to_string(), now])?;
        tx.commit()?;
        self.renewed.insert(*d, now);
        Ok(())
    }

    /// For a holder that keeps using `d` (every request): re-leases it and marks it used, but
    /// writes at most once per `RENEW_EVERY_SECS` per adapter, so the hot path rarely touches
    /// SQLite. Returns whether it wrote.
    pub fn renew(&mut self, d: &Digest, holder: &Holder, ttl: i64) -> Result<bool> {
        self.renew_at(d, holder, ttl, now_secs())
    }

    /// `renew` with the time given. A clock that went back counts as due. Never waits for
    /// another writer: while one holds the index, the renewal is left to a later call.
    pub fn renew_at(&mut self, d: &Digest, holder: &Holder, ttl: i64, now: i64) -> Result<bool> {
        if let Some(&last) = self.renewed.get(d) {
            if now >= last && now - last < RENEW_EVERY_SECS {
                return Ok(false);
            }
        }
        self.conn.busy_timeout(std::time::Duration::ZERO)?;
        let res = self.lease_at(d, holder, ttl, now);
        self.conn.busy_timeout(super::BUSY_TIMEOUT)?;
        match res {
            Ok(()) => Ok(true),
            Err(Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends `holder`'s lease on `d`.
    pub fn release(&mut self, d: &Digest, holder: &Holder) -> Result<()> {
        self.conn.execute("DELETE FROM leases WHERE digest = ?1 AND holder = ?2", params![d.to_string(), holder.key()])?;
        self.renewed.remove(d);
        Ok(())
    }
}

/// The digests prune must keep for their leases at `now`. Leases of dead holders and expired
/// leases of holders whose liveness is unknown are deleted unless `dry_run`.
pub(super) fn protected(conn: &Connection, now: i64, dry_run: bool) -> Result<HashSet<String>> {
    let mut keep = HashSet::new();
    let mut stale: Vec<i64> = vec![];
    {
        let mut st = conn.prepare("SELECT rowid, digest, expires_at, pid, pid_start, scope FROM leases")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let holder = Holder {
                pid: r.get::<_, Option<i64>>(3)?.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                start_ticks: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                scope: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                instance: 0,
            };
            let live = match holder.liveness() {
                Liveness::Alive => true,
                Liveness::Dead => false,
                Liveness::Unknown => r.get::<_, i64>(2)? >= now,
            };
            if live {
                keep.insert(r.get::<_, String>(1)?);
            } else {
                stale.push(r.get(0)?);
            }
        }
    }
    if !dry_run {
        let mut del = conn.prepare_cached("DELETE FROM leases WHERE rowid = ?1")?;
        for id in stale {
            del.execute([id])?;
        }
    }
    Ok(keep)
}
