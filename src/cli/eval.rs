//! `loradex eval`: its arguments, and printing the library's `eval::Report` (a side-by-side
//! table, per-class rows and confusion matrices, or `--json`). The evaluation itself is
//! `loradex::eval`'s.

use loradex::error::Result;
use loradex::eval::{self, Report, Request};
use loradex::store::Store;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Adapters to compare, one column each: store refs, digests or PEFT directories
    #[arg(value_name = "REF", required_unless_present = "base_head")]
    refs: Vec<String>,
    /// Labelled examples: CSV with a header row, or JSONL
    #[arg(long, value_name = "FILE.csv|FILE.jsonl")]
    data: PathBuf,
    /// Base model directory (or hub repo id); default: where this store saw the adapters' base
    #[arg(long)]
    base: Option<String>,
    /// Add a column for the base model's own classification head
    #[arg(long)]
    base_head: bool,
    /// Store the results on each stored adapter (shown by `show`)
    #[arg(long)]
    record: bool,
    #[arg(long, default_value = "text")]
    text_field: String,
    #[arg(long, default_value = "label")]
    label_field: String,
    /// Examples per forward (each runs once per column, in one mixed batch)
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

impl EvalArgs {
    /// The validated request (nothing opened yet).
    pub fn request(self) -> Result<Request> {
        Request::new(self.refs, self.base_head, self.data, self.base, self.text_field, self.label_field, self.batch_size, self.record)
    }
}

pub fn run(req: Request, open: impl FnOnce() -> Result<Store>, js: bool) -> Result<()> {
    let mut s = open()?;
    let bar = (!js).then(|| super::progress::counter("examples"));
    let t = std::time::Instant::now();
    let rep = eval::evaluate_with(&s, &req, &mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
        if b.is_hidden() {
            // not a terminal: one plain line for the evaluation
            if let Ok(r) = &rep {
                eprintln!("scored {} examples with {} column(s) in {:.1} s", r.examples, r.results.len(), t.elapsed().as_secs_f64());
            }
        }
    }
    let rep = rep?;
    let recorded = if req.record { eval::record(&mut s, &rep)? } else { 0 };
    if js {
        super::print_json(&rep);
    } else {
        print(&rep);
        if req.record {
            println!("\nrecorded on {recorded} adapter(s)");
        }
    }
    Ok(())
}

fn print(rep: &Report) {
    println!("data: {} ({} examples, {})", rep.data, rep.examples, rep.data_digest.short());
    let w = rep.results.iter().map(|c| c.r#ref.len()).max().unwrap_or(0).max(8);
    let mut head = format!("{:<16}", "");
    for c in &rep.results {
        head.push_str(&format!("  {:>w$}", c.r#ref));
    }
    println!("{head}");
    type Get = fn(&loradex::train::Metrics) -> f64;
    let rows: [(&str, Get); 8] = [
        ("accuracy", |m| m.accuracy),
        ("macro precision", |m| m.macro_precision),
        ("macro recall", |m| m.macro_recall),
        ("macro F1", |m| m.macro_f1),
        ("micro precision", |m| m.micro_precision),
        ("micro recall", |m| m.micro_recall),
        ("micro F1", |m| m.micro_f1),
        ("loss", |m| m.loss),
    ];
    for (name, get) in rows {
        let mut line = format!("{name:<16}");
        for c in &rep.results {
            line.push_str(&format!("  {:>w$.4}", get(&c.metrics)));
        }
        println!("{line}");
    }
    if rep.results.iter().any(|c| c.auc.is_some()) {
        let mut line = format!("{:<16}", "ROC AUC");
        for c in &rep.results {
            line.push_str(&c.auc.map_or_else(|| format!("  {:>w$}", "-"), |a| format!("  {a:>w$.4}")));
        }
        println!("{line}");
    }
    for c in &rep.results {
        let m = &c.metrics;
        println!("\n{}{}", c.r#ref, c.digest.map(|d| format!(" ({})", d.short())).unwrap_or_default());
        let lw = m.labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(5);
        println!("  {:<lw$}  {:>9}  {:>9}  {:>9}  {:>7}", "label", "precision", "recall", "F1", "support");
        for r in &m.per_class {
            println!("  {:<lw$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7}", r.label, r.precision, r.recall, r.f1, r.support);
        }
        // confusion[true][predicted]
        let lw = lw.max("true\\pred".len());
        let cw = m.confusion.iter().flatten().map(|v| v.to_string().len()).max().unwrap_or(1).max(m.labels.iter().map(|l| l.chars().count()).max().unwrap_or(1));
        let mut line = format!("  {:<lw$}", "true\\pred");
        for l in &m.labels {
            line.push_str(&format!("  {l:>cw$}"));
        }
        println!("{line}");
        for (l, row) in m.labels.iter().zip(&m.confusion) {
            let mut line = format!("  {l:<lw$}");
            for v in row {
                line.push_str(&format!("  {v:>cw$}"));
            }
            println!("{line}");
        }
    }
}
