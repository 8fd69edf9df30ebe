//! Training data: CSV (RFC 4180 quoting, header row) and JSONL readers, label mapping and a
//! seeded train/validation split.

use crate::error::{Error, Result};
use crate::util::Rng;
use std::path::Path;

/// One example: text (or prompt + completion) and, for classification, a label name.
#[derive(Clone, Debug)]
pub struct Example {
    pub text: String,
    pub completion: Option<String>,
    pub label: Option<String>,
}

fn data_err(path: &Path, line: usize, detail: impl Into<String>) -> Error {
    Error::Data { path: path.into(), line, detail: detail.into() }
}

/// Parses CSV records (quoted fields may contain commas, quotes and newlines).
pub fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, (usize, String)> {
    let mut rows = vec![];
    let mut row = vec![];
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut line = 1;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c)
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => in_quotes = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                line += 1;
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push(std::mem::take(&mut row));
                } else {
                    row.clear();
                }
                any = false;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err((line, "unterminated quoted field".into()));
    }
    if any {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// Reads examples from CSV (by header names) or JSONL (`text`/`label` or `prompt`/`completion`).
pub fn read(path: &Path, text_field: &str, label_field: &str, need_label: bool) -> Result<Vec<Example>> {
    let text = crate::util::read_text_bounded(path, crate::util::MAX_DATA_BYTES)?;
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    parse(&text, path, is_jsonl, text_field, label_field, need_label)
}

/// [`read`] without the file read: examples from `text`, JSONL when `is_jsonl`, else CSV.
/// `path` only names the source in errors. Touches no files (the fuzzer feeds it directly).
pub fn parse(text: &str, path: &Path, is_jsonl: bool, text_field: &str, label_field: &str, need_label: bool) -> Result<Vec<Example>> {
    let mut out = vec![];
    if is_jsonl {
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| data_err(path, i + 1, e.to_string()))?;
            let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let (text, completion) = match (get("prompt"), get("completion")) {
                (Some(p), Some(c)) => (p, Some(c)),
                _ => (get(text_field).ok_or_else(|| data_err(path, i + 1, format!("no {text_field:?} string")))?, None),
            };
            let label = match v.get(label_field) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            if need_label && label.is_none() {
                return Err(data_err(path, i + 1, format!("no {label_field:?}")));
            }
            out.push(Example { text, completion, label });
        }
    } else {
        let rows = parse_csv(text).map_err(|(l, d)| data_err(path, l, d))?;
        let header = rows.first().ok_or_else(|| data_err(path, 1, "empty file"))?;
        let col = |name: &str| header.iter().position(|h| h.trim() == name);
        let ti = col(text_field).ok_or_else(|| data_err(path, 1, format!("no {text_field:?} column in header {header:?}")))?;
        let li = col(label_field);
        if need_label && li.is_none() {
            return Err(data_err(path, 1, format!("no {label_field:?} column in header {header:?}")));
        }
        for (i, r) in rows.iter().enumerate().skip(1) {
            let text = r.get(ti).ok_or_else(|| data_err(path, i + 1, "missing text column"))?.clone();
            let label = li.map(|li| r.get(li).map(|s| s.trim().to_string()).ok_or_else(|| data_err(path, i + 1, "missing label column"))).transpose()?;
            out.push(Example { text, completion: None, label });
        }
    }
    if out.is_empty() {
        return Err(data_err(path, 0, "no examples"));
    }
    Ok(out)
}

/// Label names: given order, else order of first appearance.
pub fn label_set(examples: &[Example], given: Option<&Vec<String>>) -> Result<Vec<String>> {
    if let Some(g) = given {
        for e in examples {
            if let Some(l) = &e.label {
                if !g.contains(l) {
                    return Err(Error::Recipe(format!("label {l:?} is not in data.labels {g:?}")));
                }
            }
        }
        return Ok(g.clone());
    }
    let mut out: Vec<String> = vec![];
    for l in examples.iter().filter_map(|e| e.label.as_ref()) {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    if out.len() < 2 {
        return Err(Error::Recipe(format!("classification needs at least 2 labels, data has {out:?}")));
    }
    Ok(out)
}

/// Seeded shuffle, then the last `frac` of every label's examples go to validation (stratified).
pub fn split(mut all: Vec<Example>, frac: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut rng = Rng::new(seed ^ 0x5EED_DA7A);
    rng.shuffle(&mut all);
    if frac <= 0.0 {
        return (all, vec![]);
    }
    let mut keys: Vec<Option<String>> = vec![];
    for e in &all {
        if !keys.contains(&e.label) {
            keys.push(e.label.clone());
        }
    }
    let (mut train, mut val) = (vec![], vec![]);
    for k in keys {
        let group: Vec<Example> = all.iter().filter(|e| e.label == k).cloned().collect();
        let n_val = ((group.len() as f64) * frac).round() as usize;
        let n_val = n_val.min(group.len().saturating_sub(1));
        let cut = group.len() - n_val;
        train.extend(group[..cut].iter().cloned());
        val.extend(group[cut..].iter().cloned());
    }
    rng.shuffle(&mut train);
    (train, val)
}
