//! Transfer progress: the executor asks for a progress callback per transfer; `promoter
//! promote` and `promoter restore` draw them as indicatif bars, the workers draw nothing.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::qrs::Progress;

/// Makes a progress callback for a transfer named `label` (e.g. `export dev`, `upload test`).
pub type ProgressFactory = Arc<dyn Fn(&str) -> Progress + Send + Sync>;

/// Progress bars on the terminal (stderr), one per transfer, stacked.
pub fn bars() -> ProgressFactory {
    let multi = MultiProgress::new();
    Arc::new(move |label: &str| {
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{bar:32}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = multi.add(ProgressBar::new(0).with_style(style));
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        let progress: Progress = Arc::new(move |done: u64, total: Option<u64>| {
            if let Some(t) = total
                && bar.length() != Some(t)
            {
                bar.set_length(t);
            }
            bar.set_position(done);
            if total.is_some_and(|t| done >= t) && !bar.is_finished() {
                bar.finish();
            }
        });
        progress
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_accept_updates_with_and_without_totals() {
        let f = bars();
        let p = f("upload test");
        p(0, None);
        p(10, Some(100));
        p(100, Some(100));
        p(100, Some(100));
    }
}
