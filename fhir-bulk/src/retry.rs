//! Retrying transient failures: the policy, and what counts as transient.
//!
//! A transient failure is one where the same request may succeed later: no connection, a
//! timeout, a broken body, HTTP 408 or 429, a 5xx without a FHIR body (a gateway's answer),
//! and any answer whose `OperationOutcome` carries a transient issue code. Retries use
//! decorrelated exponential backoff with jitter (the `backon` crate), bounded by a count and a
//! total time, and a server's `Retry-After` (capped) lengthens a wait but never shortens it.

use crate::error::Error;
use crate::outcome::OperationOutcome;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

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

    /// The `backon` schedule for this policy. Every knob is set explicitly: `backon`'s own
    /// defaults (3 tries, no jitter) are not ours.
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor.max(1.0))
            .with_max_times(self.max_retries)
            .with_total_delay(self.max_elapsed);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// The wait before the next attempt: the schedule's `scheduled` wait, lengthened to the
    /// server's `Retry-After` (capped at [`RetryPolicy::max_retry_after`]). `None` (the
    /// schedule is exhausted) stays `None`.
    pub(crate) fn adjust(
        &self,
        scheduled: Option<Duration>,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let scheduled = scheduled?;
        Some(match retry_after {
            Some(server) => scheduled.max(server.min(self.max_retry_after)),
            None => scheduled,
        })
    }
}

/// The retry bookkeeping of a loop written by hand (a stream that yields between attempts, a
/// poll that retries on what `X-Export-Status` says): the schedule, the attempts made and the
/// time since the first one.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    policy: RetryPolicy,
    schedule: ExponentialBackoff,
    attempts: usize,
    started: tokio::time::Instant,
}

impl RetryBudget {
    /// The budget of a request whose first attempt is being made.
    pub(crate) fn new(policy: &RetryPolicy) -> RetryBudget {
        RetryBudget {
            policy: policy.clone(),
            schedule: policy.backoff().build(),
            attempts: 1,
            started: tokio::time::Instant::now(),
        }
    }

    /// The wait before the next attempt (the schedule lengthened to `retry_after`), or, when
    /// the policy allows no more, the error that ends the retries with `last` inside.
    pub(crate) fn next_wait(
        &mut self,
        retry_after: Option<Duration>,
        last: Error,
    ) -> Result<Duration, Error> {
        match self.policy.adjust(self.schedule.next(), retry_after) {
            Some(wait) => {
                self.attempts += 1;
                Ok(wait)
            }
            None => Err(Error::RetriesExhausted {
                attempts: self.attempts,
                elapsed: self.started.elapsed(),
                last: Box::new(last),
            }),
        }
    }

    /// Progress since the last failure: the schedule and the count start again (the time
    /// keeps running).
    pub(crate) fn renew(&mut self) {
        self.schedule = self.policy.backoff().build();
        self.attempts = 1;
    }
}

/// Whether an HTTP answer is worth retrying.
///
/// `has_other_body`: the answer had a non-empty body that is not an `OperationOutcome`.
pub(crate) fn is_transient_status(
    status: u16,
    outcome: Option<&OperationOutcome>,
    has_other_body: bool,
) -> bool {
    if let Some(oo) = outcome
        && oo.is_transient()
    {
        return true;
    }
    match status {
        408 | 429 => true,
        // Gateways and load balancers answer these with HTML or nothing.
        502..=504 => outcome.is_none(),
        // A bare 5xx (no body at all) says nothing about the request: retry it.
        500..=599 => outcome.is_none() && !has_other_body,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oo(code: &str) -> OperationOutcome {
        OperationOutcome::parse(
            format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}"}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn transient_classification() {
        assert!(is_transient_status(429, None, false));
        assert!(is_transient_status(408, None, true));
        assert!(is_transient_status(503, None, false));
        assert!(is_transient_status(502, None, true), "gateway HTML");
        assert!(is_transient_status(500, None, false), "bare 500");
        assert!(
            !is_transient_status(500, None, true),
            "500 with a non-FHIR body"
        );
        assert!(!is_transient_status(500, Some(&oo("processing")), false));
        for code in [
            "transient",
            "lock-error",
            "no-store",
            "exception",
            "timeout",
            "incomplete",
            "throttled",
        ] {
            assert!(is_transient_status(500, Some(&oo(code)), false), "{code}");
            assert!(is_transient_status(400, Some(&oo(code)), false), "{code}");
        }
        assert!(!is_transient_status(400, Some(&oo("invalid")), false));
        assert!(!is_transient_status(404, None, false));
        assert!(!is_transient_status(401, None, false));
    }

    #[test]
    fn schedule_is_bounded_by_count() {
        let policy = RetryPolicy::default()
            .with_jitter(false)
            .with_max_retries(4)
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(5));
        let waits: Vec<Duration> = policy.backoff().build().collect();
        assert_eq!(
            waits,
            [1, 2, 4, 5].map(Duration::from_secs).to_vec(),
            "1, 2, 4 then capped at 5"
        );
        assert_eq!(RetryPolicy::none().backoff().build().count(), 0);
    }

    #[test]
    fn schedule_is_bounded_by_total_time() {
        let policy = RetryPolicy::default()
            .with_jitter(false)
            .with_max_retries(100)
            .with_min_delay(Duration::from_secs(10))
            .with_max_delay(Duration::from_secs(10))
            .with_max_elapsed(Some(Duration::from_secs(35)));
        let total: Duration = policy.backoff().build().sum();
        assert!(total <= Duration::from_secs(35), "{total:?}");
        assert_eq!(policy.backoff().build().count(), 3);
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        let policy = RetryPolicy::default().with_max_retry_after(Duration::from_secs(60));
        let s = Duration::from_secs;
        assert_eq!(policy.adjust(Some(s(2)), Some(s(30))), Some(s(30)));
        assert_eq!(policy.adjust(Some(s(2)), Some(s(7200))), Some(s(60)));
        assert_eq!(policy.adjust(Some(s(40)), Some(s(1))), Some(s(40)));
        assert_eq!(policy.adjust(None, Some(s(1))), None);
    }

    #[test]
    fn budget_counts_attempts_and_ends_with_the_last_error() {
        let policy = RetryPolicy::default()
            .with_jitter(false)
            .with_max_retries(2)
            .with_min_delay(Duration::from_secs(1));
        let last = || Error::InvalidConfig {
            setting: "x",
            message: "last".into(),
        };
        let mut budget = RetryBudget::new(&policy);
        assert_eq!(
            budget.next_wait(None, last()).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            budget
                .next_wait(Some(Duration::from_secs(9)), last())
                .unwrap(),
            Duration::from_secs(9)
        );
        match budget.next_wait(None, last()) {
            Err(Error::RetriesExhausted { attempts, last, .. }) => {
                assert_eq!(attempts, 3);
                assert!(last.to_string().contains("last"));
            }
            other => panic!("{other:?}"),
        }
        budget.renew();
        assert_eq!(
            budget.next_wait(None, last()).unwrap(),
            Duration::from_secs(1)
        );
    }
}
