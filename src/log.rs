//! Log lines that summarise: a store that is down fails every request the same way, and one
//! line per request would drown the log (FusionCache#584 is that complaint).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one call site logs the same kind of error at most.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The gate of one call site: per error kind, when it last let a line through and how many
/// it held back since.
#[derive(Debug)]
pub(crate) struct Gate {
    kinds: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl Gate {
    /// A gate that lets the first line of every kind through.
    pub(crate) const fn new() -> Self {
        Gate {
            kinds: Mutex::new(Vec::new()),
        }
    }

    /// Whether to log a line of `kind` now; `Some(held back since the last line)` if so.
    pub(crate) fn admit(&self, kind: &'static str) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            None => {
                kinds.push((kind, now, 0));
                Some(0)
            }
            Some((_, last, held)) if now.duration_since(*last) >= SUMMARY_EVERY => {
                let summary = *held;
                *last = now;
                *held = 0;
                Some(summary)
            }
            Some((_, _, held)) => {
                *held += 1;
                None
            }
        }
    }
}

/// `tracing::warn!`, at most once per [`SUMMARY_EVERY`] for this call site and error
/// `kind`, with `suppressed`: how many such lines were held back since the last one.
macro_rules! warn_summarised {
    ($kind:expr, $($arg:tt)+) => {{
        static GATE: $crate::log::Gate = $crate::log::Gate::new();
        if let Some(suppressed) = GATE.admit($kind) {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

pub(crate) use warn_summarised;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_then_a_count() {
        let gate = Gate::new();
        assert_eq!(gate.admit("timeout"), Some(0));
        assert_eq!(gate.admit("timeout"), None);
        assert_eq!(gate.admit("timeout"), None);
        assert_eq!(gate.admit("circuit_open"), Some(0), "kinds are apart");
        // Once the period passed, the next line carries the count.
        gate.kinds.lock().unwrap()[0].1 -= SUMMARY_EVERY;
        assert_eq!(gate.admit("timeout"), Some(2));
    }
}
