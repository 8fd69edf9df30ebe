//! Evaluation results recorded on adapters (`loradex eval --record`): one row per adapter and
//! data set in the `evaluations` side table. Owns that table's rows only; the metrics are
//! opaque JSON here (`train::Metrics` written by the eval module), and nothing here touches an
//! adapter's blobs, manifest or digest.

use super::Store;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::util::{now_secs, rfc3339};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// One recorded evaluation, as `show` prints it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The data file as it was named when recorded.
    pub data: String,
    /// sha256 of the data file's bytes: the key (recording on the same data replaces).
    pub data_digest: Digest,
    pub recorded_at: String,
    pub metrics: serde_json::Value,
}

impl Store {
    /// Records `metrics` of adapter `d` on the data file `data` (digest `data_digest`),
    /// replacing an earlier record on the same data.
    pub fn record_evaluation(&mut self, d: &Digest, data: &str, data_digest: &Digest, metrics: &serde_json::Value) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<i64> = tx.query_row("SELECT 1 FROM adapters WHERE digest = ?1", [d.to_string()], |r| r.get(0)).optional()?;
        if found.is_none() {
            return Err(Error::NotFound(format!("adapter {d}")));
        }
        let m = serde_json::to_string(metrics).map_err(|e| Error::json("evaluation", e))?;
        tx.execute(
            "INSERT INTO evaluations(digest, data_digest, data_path, recorded_at, metrics) VALUES(?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(digest, data_digest) DO UPDATE SET data_path = excluded.data_path,
               recorded_at = excluded.recorded_at, metrics = excluded.metrics",
            params![d.to_string(), data_digest.to_string(), data, now_secs(), m],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The evaluations recorded on `d`, oldest first.
    pub fn evaluations(&self, d: &Digest) -> Result<Vec<Evaluation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT data_path, data_digest, recorded_at, metrics FROM evaluations WHERE digest = ?1 ORDER BY recorded_at, data_digest",
        )?;
        let rows = stmt.query_map([d.to_string()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?)))?;
        let mut out = vec![];
        for row in rows {
            let (data, dd, at, m) = row?;
            out.push(Evaluation {
                data,
                data_digest: Digest::parse(&dd)?,
                recorded_at: rfc3339(at),
                metrics: serde_json::from_str(&m).map_err(|e| Error::json("evaluation", e))?,
            });
        }
        Ok(out)
    }
}
