//! The one retry context: a budget of attempts and of time, the backoff schedule (exponential,
//! with jitter from an injected random source), the server's `Retry-After`, and the one
//! classification of what is worth retrying.
//!
//! Everything here is pure (no I/O, no sleeping): the send path asks [`RetryContext::next_wait`]
//! after a failure and sleeps with the client's injected sleep.

use crate::error::{Error, TransportErrorKind};
use crate::outcome::OperationOutcome;
use crate::retry::RetryPolicy;
use std::sync::Arc;
use std::time::Duration;

/// An injectable random source in `[0, 1)`, for the jitter of retry waits.
pub type RandomFn = Arc<dyn Fn() -> f64 + Send + Sync>;

pub(crate) fn fastrand_source() -> RandomFn {
    Arc::new(fastrand::f64)
}

/// A wait the server asked for, and which header said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerWait {
    pub(crate) delay: Duration,
    /// `"Retry-After"`, `"x-ms-retry-after-ms"`.
    pub(crate) source: &'static str,
}

/// The wait of backoff step `step` (0 for the first retry): `min_delay * factor^step`, capped
/// at `max_delay`, plus up to as much again of jitter (`random` in `[0, 1)`), still capped.
pub(crate) fn backoff_delay(policy: &RetryPolicy, step: u32, random: f64) -> Duration {
    let factor = f64::from(policy.factor.max(1.0));
    let exp = factor.powi(i32::try_from(step.min(64)).unwrap_or(64));
    let max = policy.max_delay.as_secs_f64();
    let base = (policy.min_delay.as_secs_f64() * exp).min(max);
    let wait = if policy.jitter {
        (base + base * random.clamp(0.0, 1.0)).min(max.max(base))
    } else {
        base
    };
    Duration::from_secs_f64(wait.max(0.0))
}

/// The bookkeeping of one request's retries (or one file's transfers).
#[derive(Clone)]
pub(crate) struct RetryContext {
    policy: RetryPolicy,
    random: RandomFn,
    /// Attempts made so far (1 while the first is in flight).
    attempts: u32,
    /// Attempts allowed now.
    max_attempts: u32,
    /// Attempts that may ever be allowed, progress included.
    ceiling: u32,
    /// Backoff step of the next retry.
    step: u32,
    /// Time waited between attempts so far.
    waited: Duration,
    started: tokio::time::Instant,
}

impl std::fmt::Debug for RetryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryContext")
            .field("attempts", &self.attempts)
            .field("max_attempts", &self.max_attempts)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

/// How many attempts progress may earn a file, as a multiple of the policy's attempts.
pub(crate) const PROGRESS_ATTEMPTS_FACTOR: u32 = 4;

impl RetryContext {
    /// The context of a request whose first attempt is about to be made.
    pub(crate) fn new(policy: &RetryPolicy, random: RandomFn) -> RetryContext {
        let max = u32::try_from(policy.max_retries)
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1);
        RetryContext {
            policy: policy.clone(),
            random,
            attempts: 1,
            max_attempts: max,
            ceiling: max,
            step: 0,
            waited: Duration::ZERO,
            started: tokio::time::Instant::now(),
        }
    }

    /// Lets progress (bytes received) earn more attempts, up to
    /// [`PROGRESS_ATTEMPTS_FACTOR`] times the policy's.
    pub(crate) fn with_progress_allowance(mut self) -> RetryContext {
        self.ceiling = self.max_attempts.saturating_mul(PROGRESS_ATTEMPTS_FACTOR);
        self
    }

    /// A per-call budget: no retry is scheduled whose wait would take the call past `budget`
    /// (the policy's own `max_elapsed` still applies when it is shorter).
    pub(crate) fn within(mut self, budget: Duration) -> RetryContext {
        self.policy.max_elapsed = Some(self.policy.max_elapsed.map_or(budget, |m| m.min(budget)));
        self
    }

    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Attempts allowed now.
    pub(crate) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The failed attempt made progress: the backoff starts again from its first step and one
    /// more attempt is allowed (never past the ceiling). The time budget keeps running.
    pub(crate) fn progressed(&mut self) {
        self.step = 0;
        self.max_attempts = (self.max_attempts + 1).min(self.ceiling.max(self.max_attempts));
    }

    /// The wait before the next attempt, or `None` when the budget (attempts or time) is
    /// spent. A server wait lengthens the scheduled one (capped by
    /// [`RetryPolicy::max_retry_after`]) but never shortens it.
    pub(crate) fn next_wait(&mut self, server: Option<ServerWait>) -> Option<Duration> {
        if self.attempts >= self.max_attempts {
            return None;
        }
        let scheduled = backoff_delay(&self.policy, self.step, (self.random)());
        let wait = match server {
            Some(s) => scheduled.max(s.delay.min(self.policy.max_retry_after)),
            None => scheduled,
        };
        if let Some(limit) = self.policy.max_elapsed {
            let spent = self.waited.max(self.started.elapsed());
            if spent + wait > limit {
                return None;
            }
        }
        self.attempts += 1;
        self.step = self.step.saturating_add(1);
        self.waited += wait;
        Some(wait)
    }

    /// The error that ends the retries: `last` itself after a single attempt, else
    /// [`Error::RetriesExhausted`] around it.
    pub(crate) fn give_up(&self, last: Error) -> Error {
        if self.attempts > 1 {
            Error::RetriesExhausted {
                attempts: self.attempts as usize,
                elapsed: self.waited.max(self.started.elapsed()),
                last: Box::new(last),
            }
        } else {
            last
        }
    }
}

/// Whether an HTTP answer is worth retrying: 408, 429, a gateway's 502-504 without a FHIR
/// body, a bare 5xx without any body, or an `OperationOutcome` with a transient issue code.
///
/// `has_other_body`: the answer had a non-empty body that is not an `OperationOutcome`.
pub(crate) fn is_transient_answer(
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

/// Whether a failure without a usable answer is worth retrying. `idempotent`: the request may
/// be repeated even if the server may have received it (a kick-off may not).
pub(crate) fn is_transient_transport(kind: TransportErrorKind, idempotent: bool) -> bool {
    match kind {
        TransportErrorKind::Connect => true,
        TransportErrorKind::Redirect | TransportErrorKind::TooLarge => false,
        TransportErrorKind::Timeout | TransportErrorKind::Body | TransportErrorKind::Other => {
            idempotent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .with_jitter(false)
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(5))
    }

    fn ctx(p: &RetryPolicy) -> RetryContext {
        RetryContext::new(p, Arc::new(|| 0.5))
    }

    #[test]
    fn schedule_doubles_and_is_capped() {
        let p = policy().with_max_retries(4);
        let mut c = ctx(&p);
        let waits: Vec<u64> = std::iter::from_fn(|| c.next_wait(None))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5]);
        assert_eq!(c.attempts(), 5);
        assert!(ctx(&RetryPolicy::none()).next_wait(None).is_none());
    }

    #[test]
    fn jitter_comes_from_the_injected_source() {
        let p = policy()
            .with_jitter(true)
            .with_max_delay(Duration::from_secs(60));
        assert_eq!(backoff_delay(&p, 0, 0.5), Duration::from_millis(1500));
        assert_eq!(backoff_delay(&p, 2, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(&p, 10, 0.9), Duration::from_secs(60));
    }

    #[test]
    fn total_time_bounds_the_retries() {
        let p = policy()
            .with_max_retries(100)
            .with_min_delay(Duration::from_secs(10))
            .with_max_delay(Duration::from_secs(10))
            .with_max_elapsed(Some(Duration::from_secs(35)));
        let mut c = ctx(&p);
        let n = std::iter::from_fn(|| c.next_wait(None)).count();
        assert_eq!(n, 3);
    }

    #[test]
    fn server_wait_lengthens_but_is_capped() {
        let p = policy()
            .with_max_retries(5)
            .with_max_retry_after(Duration::from_secs(60));
        let mut c = ctx(&p);
        let wait = |d| {
            Some(ServerWait {
                delay: Duration::from_secs(d),
                source: "Retry-After",
            })
        };
        assert_eq!(c.next_wait(wait(30)), Some(Duration::from_secs(30)));
        assert_eq!(c.next_wait(wait(7200)), Some(Duration::from_secs(60)));
        assert_eq!(c.next_wait(wait(0)), Some(Duration::from_secs(4)));
    }

    #[test]
    fn progress_earns_attempts_up_to_a_ceiling() {
        let p = policy().with_max_retries(1);
        let mut c = ctx(&p).with_progress_allowance();
        let mut made = 1;
        loop {
            c.progressed();
            if c.next_wait(None).is_none() {
                break;
            }
            made += 1;
            assert!(made < 100, "unbounded");
        }
        assert_eq!(made, 2 * PROGRESS_ATTEMPTS_FACTOR);
        assert_eq!(c.attempts(), made);
        // Without progress: the policy's attempts only.
        let mut plain = ctx(&p).with_progress_allowance();
        assert!(plain.next_wait(None).is_some());
        assert!(plain.next_wait(None).is_none());
    }

    #[test]
    fn give_up_wraps_only_after_retries() {
        let last = || Error::InvalidConfig {
            setting: "x",
            message: "last".into(),
        };
        let p = policy().with_max_retries(1);
        let mut c = ctx(&p);
        assert!(matches!(c.give_up(last()), Error::InvalidConfig { .. }));
        c.next_wait(None);
        match c.give_up(last()) {
            Error::RetriesExhausted { attempts, .. } => assert_eq!(attempts, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_classification() {
        let oo = |code: &str| {
            OperationOutcome::parse(
                format!(
                    r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}"}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        assert!(is_transient_answer(429, None, false));
        assert!(is_transient_answer(408, None, true));
        assert!(is_transient_answer(503, None, false));
        assert!(is_transient_answer(502, None, true), "gateway HTML");
        assert!(is_transient_answer(500, None, false), "bare 500");
        assert!(!is_transient_answer(500, None, true));
        assert!(!is_transient_answer(500, Some(&oo("processing")), false));
        for code in ["transient", "lock-error", "throttled", "timeout"] {
            assert!(is_transient_answer(400, Some(&oo(code)), false), "{code}");
        }
        assert!(!is_transient_answer(404, None, false));
        assert!(is_transient_transport(TransportErrorKind::Connect, false));
        assert!(!is_transient_transport(TransportErrorKind::Body, false));
        assert!(is_transient_transport(TransportErrorKind::Body, true));
        assert!(!is_transient_transport(TransportErrorKind::TooLarge, true));
        assert!(!is_transient_transport(TransportErrorKind::Redirect, true));
    }
}
