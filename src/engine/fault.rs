//! Crash points for fault tests: `PROMOTER_FAULT_ABORT_AT` names points (comma-separated) at
//! which the process aborts on the spot, as `kill -9` would, so a test can prove that a job
//! interrupted exactly there resumes to the same end state.
//!
//! Points:
//! - `before:<step key>`: the step is recorded as started, its work not begun;
//! - `after:<step key>`: the step's result is recorded;
//! - `uploaded:<site>`, `copied:<site>`, `source-copied`: an app was created and its id is
//!   not recorded yet;
//! - `published:<site>`, `replaced:<site>`: the target app is in place, the step not recorded;
//! - `source-deleted`: the published source app was deleted, the step not recorded;
//! - `mid-export`, `mid-upload:<site>`: half-way through the transfer.
//!
//! Unset (always, outside tests) it costs one string comparison per point.

use std::sync::LazyLock;

/// Environment variable naming the crash points.
pub const ENV: &str = "PROMOTER_FAULT_ABORT_AT";

static POINTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    std::env::var(ENV)
        .map(|v| {
            v.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
});

/// Whether the point is armed.
pub fn armed(point: &str) -> bool {
    !POINTS.is_empty() && POINTS.iter().any(|p| p.eq_ignore_ascii_case(point))
}

/// Aborts the process if the point is armed.
pub fn point(point: &str) {
    if armed(point) {
        eprintln!("{ENV}: aborting at {point}");
        tracing::error!("{ENV}: aborting at {point}");
        std::process::abort();
    }
}

/// Wraps a transfer's progress so that the process aborts half-way when `point` is armed.
pub fn mid_transfer(
    point: &str,
    progress: Option<crate::qrs::Progress>,
) -> Option<crate::qrs::Progress> {
    if !armed(point) {
        return progress;
    }
    let name = point.to_string();
    Some(std::sync::Arc::new(move |done: u64, total: Option<u64>| {
        if let Some(p) = &progress {
            p(done, total);
        }
        if total.is_some_and(|t| t > 0 && done >= t / 2) {
            self::point(&name);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_armed_without_the_variable() {
        // Tests never set the variable in this process.
        assert!(!armed("after:export:data"));
        point("after:export:data");
        assert!(mid_transfer("mid-export", None).is_none());
    }
}
