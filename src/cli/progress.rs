//! Progress bars on stderr for long CLI jobs (training steps, evaluation rows, downloads, the
//! benchmarks' measurements), with indicatif. The library reports progress through callbacks
//! and never prints; this module turns those callbacks into bars on a terminal, and into a few
//! plain lines elsewhere (no `\r` frames in pipes and CI logs).

use indicatif::{ProgressBar, ProgressStyle};

/// Training progress: on a terminal, a bar over steps, its message the epoch, loss, speed and
/// last validation; elsewhere (a pipe, a CI log) one plain line per epoch and per evaluation.
pub struct TrainBar {
    bar: ProgressBar,
    /// Not a terminal: the last report not yet written as a line.
    plain: Option<std::cell::RefCell<Option<loradex::train::Progress>>>,
}

fn train_line(p: &loradex::train::Progress) -> String {
    let mut msg = format!("epoch {}/{} step {}/{} loss {:.4} {:.0} samples/s", p.epoch, p.epochs, p.step, p.total_steps, p.loss, p.samples_per_sec);
    if let Some(m) = &p.eval {
        msg.push_str(&format!(" | val acc {:.3} f1 {:.3}", m.accuracy, m.macro_f1));
    }
    msg
}

impl TrainBar {
    pub fn new() -> TrainBar {
        use std::io::IsTerminal;
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("[{bar:24}] {elapsed}/{duration} {wide_msg}").expect("a valid template").progress_chars("#>-"));
        let plain = (!std::io::stderr().is_terminal()).then(|| std::cell::RefCell::new(None));
        TrainBar { bar, plain }
    }

    pub fn update(&self, p: &loradex::train::Progress) {
        let Some(plain) = &self.plain else {
            self.bar.set_length(p.total_steps as u64);
            self.bar.set_position(p.step as u64);
            self.bar.set_message(train_line(p));
            return;
        };
        let mut last = plain.borrow_mut();
        // an epoch's last step is written when the next epoch starts; an evaluation at once
        if let Some(prev) = last.take().filter(|prev| prev.epoch != p.epoch) {
            eprintln!("{}", train_line(&prev));
        }
        if p.eval.is_some() {
            eprintln!("{}", train_line(p));
        } else {
            *last = Some(p.clone());
        }
    }

    /// Leaves the last state on screen, on its own line (or writes the last line).
    pub fn finish(&self) {
        if let Some(plain) = &self.plain {
            if let Some(p) = plain.borrow_mut().take() {
                eprintln!("{}", train_line(&p));
            }
            return;
        }
        self.bar.abandon();
        eprintln!();
    }
}

/// A bar drawn by `template`, its message `what` (never part of the template: a ref could
/// hold braces).
fn styled(template: &str, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("#>-"));
    bar.set_message(what.to_string());
    bar
}

/// A bar over items of `what` (examples scored, …); its length is set as progress comes.
pub fn counter(what: &str) -> ProgressBar {
    styled("[{bar:24}] {pos}/{len} {msg} {elapsed}/{duration}", what)
}

/// A bar over the bytes of a download of `what`.
pub fn bytes(what: &str) -> ProgressBar {
    styled("[{bar:24}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}", what)
}

/// A bar over the tokens one benchmark measurement generates (`what` names it), with the
/// throughput and ETA. indicatif draws nothing off a terminal, where the benchmark's own result
/// lines on stdout are the record.
pub fn tokens(what: &str, total: u64) -> ProgressBar {
    let bar = styled("[{bar:24}] {pos}/{len} tokens {per_sec} ETA {eta} {wide_msg}", what);
    bar.set_length(total);
    bar
}

/// A spinner with the elapsed time, for a step whose length is unknown (a peer's run in a
/// subprocess).
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {wide_msg}").expect("a valid template"));
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
