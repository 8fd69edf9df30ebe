//! Progress bars on stderr for long CLI jobs (training steps, evaluation rows), with
//! indicatif. The library reports progress through callbacks and never prints; this module
//! turns those callbacks into bars. indicatif draws only on a terminal, so redirected output
//! and CI logs stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over training steps, its message the epoch, loss, speed and last validation.
pub struct TrainBar {
    bar: ProgressBar,
}

impl TrainBar {
    pub fn new() -> TrainBar {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("[{bar:24}] {pos}/{len} {elapsed}/{duration} {wide_msg}").expect("a valid template").progress_chars("#>-"));
        TrainBar { bar }
    }

    pub fn update(&self, p: &loradex::train::Progress) {
        self.bar.set_length(p.total_steps as u64);
        self.bar.set_position(p.step as u64);
        let mut msg = format!("epoch {}/{} loss {:.4} {:.0} samples/s", p.epoch, p.epochs, p.loss, p.samples_per_sec);
        if let Some(m) = &p.eval {
            msg.push_str(&format!(" | val acc {:.3} f1 {:.3}", m.accuracy, m.macro_f1));
        }
        self.bar.set_message(msg);
    }

    /// Leaves the last state on screen, on its own line.
    pub fn finish(&self) {
        self.bar.abandon();
        if !self.bar.is_hidden() {
            eprintln!();
        }
    }
}

/// A bar over `total` items of `what` (examples scored, …).
pub fn counter(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(&format!("[{{bar:24}}] {{pos}}/{{len}} {what} {{elapsed}}/{{duration}}")).expect("a valid template").progress_chars("#>-"));
    bar
}
