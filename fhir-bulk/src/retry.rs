//! Retrying transient failures: the policy. The mechanics (the retry context, the backoff
//! schedule, what counts as transient) live in the transport layer.
//!
//! A transient failure is one where the same request may succeed later: no connection, a
//! timeout, a broken body, HTTP 408 or 429, a 5xx without a FHIR body (a gateway's answer),
//! and any answer whose `OperationOutcome` carries a transient issue code. Retries use
//! exponential backoff with jitter, bounded by a count and a total time, and a server's
//! `Retry-After` (capped) lengthens a wait but never shortens it. A file download that makes
//! progress earns more attempts, up to four times the policy's count, never more time.

use std::time::Duration;

/// The one classification of transient answers lives in the transport layer; this name is
/// kept for the status decision.
pub(crate) use crate::transport::retry::is_transient_answer as is_transient_status;

/// How transient failures are retried.
///
/// ```
/// use fhir_bulk::RetryPolicy;
/// use std::time::Duration;
/// let policy = RetryPolicy::default()
///     .with_max_retries(3)
///     .with_max_delay(Duration::from_secs(30));
/// assert_eq!(policy.max_retries, 3);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Default 5.
    pub max_retries: usize,
    /// The first wait. Default 1 s.
    pub min_delay: Duration,
    /// The longest wait between two attempts. Default 2 min.
    pub max_delay: Duration,
    /// Growth of the wait from one retry to the next. Default 2.
    pub factor: f32,
    /// Whether waits are randomised (up to twice the exponential wait), so many clients do
    /// not retry in step. Default true.
    pub jitter: bool,
    /// The most time the schedule waits between attempts of one request, all retries
    /// together. Default 15 min; `None` for no bound besides `max_retries`.
    pub max_elapsed: Option<Duration>,
    /// The longest server `Retry-After` honoured for a retry. Default 5 min.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(120),
            factor: 2.0,
            jitter: true,
            max_elapsed: Some(Duration::from_secs(15 * 60)),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// Sets [`RetryPolicy::max_retries`].
    #[must_use]
    pub fn with_max_retries(mut self, n: usize) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets [`RetryPolicy::min_delay`].
    #[must_use]
    pub fn with_min_delay(mut self, d: Duration) -> Self {
        self.min_delay = d;
        self
    }

    /// Sets [`RetryPolicy::max_delay`].
    #[must_use]
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets [`RetryPolicy::factor`].
    #[must_use]
    pub fn with_factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Sets [`RetryPolicy::jitter`].
    #[must_use]
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`RetryPolicy::max_elapsed`].
    #[must_use]
    pub fn with_max_elapsed(mut self, d: Option<Duration>) -> Self {
        self.max_elapsed = d;
        self
    }

    /// Sets [`RetryPolicy::max_retry_after`].
    #[must_use]
    pub fn with_max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_setters() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_retries, 5);
        assert_eq!(p.max_elapsed, Some(Duration::from_secs(900)));
        assert_eq!(RetryPolicy::none().max_retries, 0);
        let q = p.with_max_retries(2).with_jitter(false);
        assert_eq!((q.max_retries, q.jitter), (2, false));
    }
}
