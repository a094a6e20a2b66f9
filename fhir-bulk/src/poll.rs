//! How long to wait between status polls: the poll policy, `Retry-After` parsing, and the
//! injectable sleep and clock. Everything here is pure and tested without sleeping.

use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The unit of a numeric `Retry-After` value.
///
/// RFC 9110 says seconds. One vendor documents milliseconds in the standard header (its
/// status answer's `Retry-After` is "the number of milliseconds to wait"); choose
/// [`RetryAfterUnit::Milliseconds`] for such a server.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryAfterUnit {
    /// Delta-seconds, as RFC 9110 defines `Retry-After`.
    #[default]
    Seconds,
    /// Milliseconds.
    Milliseconds,
}

/// How status polling waits: the server's `Retry-After` when it sends one, else an
/// exponential schedule with jitter.
///
/// When the server sends `Retry-After`, the wait is exactly that, clamped to
/// `[min_interval, max_interval]`. When it does not, the wait before poll number `n`
/// (0-based, counting the answers without `Retry-After` since the last progress) is
/// `min(initial_delay * factor^n * jitter, max_interval)`, where `jitter` is a random factor in
/// `[1 - jitter, 1 + jitter]`. [`PollSchedule`] keeps `n` and starts it again when
/// `X-Progress` advances.
///
/// ```
/// use fhir_bulk::PollPolicy;
/// use std::time::Duration;
/// let policy = PollPolicy::default().with_max_interval(Duration::from_secs(60));
/// // Oracle Health asks for 600 s; the policy caps it at 60 s.
/// assert_eq!(policy.delay(3, Some(Duration::from_secs(600)), 0.5), Duration::from_secs(60));
/// // The SMART reference server asks for 1 s, however long the job has run.
/// assert_eq!(policy.delay(9, Some(Duration::from_secs(1)), 0.5), Duration::from_secs(1));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct PollPolicy {
    /// The wait before the second poll when the server sends no `Retry-After`. Default 2 s.
    pub initial_delay: Duration,
    /// Growth of the wait from one poll to the next. Default 1.5.
    pub factor: f64,
    /// The longest wait between two polls, whatever the server asks. Default 5 min (servers
    /// send 600 s, 7200 s, even hours).
    pub max_interval: Duration,
    /// The shortest wait between two polls, whatever the server asks (a `Retry-After: 0` or a
    /// date in the past). Default 1 s.
    pub min_interval: Duration,
    /// Random spread of the schedule, as a fraction (0.2 = ±20%). Default 0.2.
    pub jitter: f64,
    /// Give up polling after this long. Default `None`: exports can take days.
    pub deadline: Option<Duration>,
    /// The unit of numeric `Retry-After` values. Default seconds.
    pub retry_after_unit: RetryAfterUnit,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            initial_delay: Duration::from_secs(2),
            factor: 1.5,
            max_interval: Duration::from_secs(300),
            min_interval: Duration::from_secs(1),
            jitter: 0.2,
            deadline: None,
            retry_after_unit: RetryAfterUnit::Seconds,
        }
    }
}

impl PollPolicy {
    /// Sets [`PollPolicy::initial_delay`].
    #[must_use]
    pub fn with_initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Sets [`PollPolicy::factor`].
    #[must_use]
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Sets [`PollPolicy::max_interval`].
    #[must_use]
    pub fn with_max_interval(mut self, d: Duration) -> Self {
        self.max_interval = d;
        self
    }

    /// Sets [`PollPolicy::min_interval`].
    #[must_use]
    pub fn with_min_interval(mut self, d: Duration) -> Self {
        self.min_interval = d;
        self
    }

    /// Sets [`PollPolicy::jitter`].
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`PollPolicy::deadline`].
    #[must_use]
    pub fn with_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`PollPolicy::retry_after_unit`].
    #[must_use]
    pub fn with_retry_after_unit(mut self, unit: RetryAfterUnit) -> Self {
        self.retry_after_unit = unit;
        self
    }

    /// The wait before the next poll: the server's `Retry-After` clamped to
    /// `[min_interval, max_interval]` when it sent one, else step `attempt` of the schedule
    /// (with `random`, a number in `[0, 1)`, for the jitter).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        let max = self.max_interval;
        let min = self.min_interval.min(max);
        if let Some(server) = retry_after {
            return server.clamp(min, max);
        }
        let growth = self.factor.max(1.0).powi(attempt.min(64) as i32);
        let spread = self.jitter.clamp(0.0, 1.0);
        let jitter = 1.0 - spread + 2.0 * spread * random.clamp(0.0, 1.0);
        let scheduled =
            (self.initial_delay.as_secs_f64() * growth * jitter).clamp(0.0, max.as_secs_f64());
        Duration::from_secs_f64(scheduled)
    }
}

/// Where a poll loop is in its schedule: how many answers without `Retry-After` it has seen
/// since `X-Progress` last advanced. Pure: the loop feeds it each in-progress answer and
/// sleeps for what it returns.
///
/// ```
/// use fhir_bulk::{PollPolicy, PollSchedule};
/// use std::time::Duration;
/// let policy = PollPolicy::default().with_jitter(0.0).with_factor(2.0);
/// let mut schedule = PollSchedule::default();
/// let s = Duration::from_secs;
/// assert_eq!(schedule.next_wait(&policy, Some("10%"), None, 0.5), s(2));
/// assert_eq!(schedule.next_wait(&policy, Some("10%"), None, 0.5), s(4));
/// // Progress: the schedule starts again.
/// assert_eq!(schedule.next_wait(&policy, Some("20%"), None, 0.5), s(2));
/// // The server's Retry-After is followed as it is.
/// assert_eq!(schedule.next_wait(&policy, Some("20%"), Some(s(1)), 0.5), s(1));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollSchedule {
    attempt: u32,
    last_progress: Option<String>,
}

impl PollSchedule {
    /// The wait after an in-progress answer with this `X-Progress` text and `Retry-After`.
    pub fn next_wait(
        &mut self,
        policy: &PollPolicy,
        progress: Option<&str>,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        if let Some(text) = progress {
            let advanced = self
                .last_progress
                .as_deref()
                .is_some_and(|last| progress_advanced(last, text));
            if advanced {
                self.attempt = 0;
            }
            if self.last_progress.as_deref() != Some(text) {
                self.last_progress = Some(text.to_owned());
            }
        }
        let wait = policy.delay(self.attempt, retry_after, random);
        if retry_after.is_none() {
            self.attempt = self.attempt.saturating_add(1);
        }
        wait
    }
}

/// Whether `X-Progress` moved from `last` to `now`: a higher percentage when both hold one,
/// else any change of text.
fn progress_advanced(last: &str, now: &str) -> bool {
    match (
        crate::status::parse_progress_percent(last),
        crate::status::parse_progress_percent(now),
    ) {
        (Some(a), Some(b)) => b > a,
        _ => last != now,
    }
}

/// Parses a `Retry-After` value: delta-seconds (or milliseconds, per `unit`) or an HTTP-date
/// (IMF-fixdate, RFC 850 or asctime), relative to `now`. A date in the past means no wait.
/// Returns `None` for a value that is neither.
///
/// ```
/// use fhir_bulk::{parse_retry_after, RetryAfterUnit};
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
/// assert_eq!(parse_retry_after("120", RetryAfterUnit::Seconds, now), Some(Duration::from_secs(120)));
/// assert_eq!(
///     parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", RetryAfterUnit::Seconds, now),
///     Some(Duration::from_secs(60))
/// );
/// ```
pub fn parse_retry_after(value: &str, unit: RetryAfterUnit, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail.
        let n: u64 = value.parse().unwrap_or(u64::MAX);
        return Some(match unit {
            RetryAfterUnit::Seconds => Duration::from_secs(n),
            RetryAfterUnit::Milliseconds => Duration::from_millis(n),
        });
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An injectable sleep: the client awaits it between polls and retries. Tests replace it to
/// record the waits instead of sleeping.
pub type SleepFn = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// An injectable wall clock, for `Retry-After` dates and `Expires`.
pub type ClockFn = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub(crate) fn tokio_sleep() -> SleepFn {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

pub(crate) fn system_clock() -> ClockFn {
    Arc::new(SystemTime::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn no_jitter() -> PollPolicy {
        PollPolicy::default().with_jitter(0.0)
    }

    #[test]
    fn schedule_grows_and_is_capped() {
        let p = no_jitter()
            .with_initial_delay(s(2))
            .with_factor(2.0)
            .with_max_interval(s(60));
        let waits: Vec<u64> = (0..8).map(|n| p.delay(n, None, 0.5).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        // Huge attempt counts do not overflow.
        assert_eq!(p.delay(u32::MAX, None, 0.5), s(60));
    }

    #[test]
    fn retry_after_lengthens_the_wait_but_never_past_the_cap() {
        let p = no_jitter()
            .with_initial_delay(s(2))
            .with_max_interval(s(300));
        assert_eq!(p.delay(0, Some(s(120)), 0.5), s(120));
        assert_eq!(
            p.delay(0, Some(s(600)), 0.5),
            s(300),
            "Oracle's 600 s clamped"
        );
        assert_eq!(p.delay(0, Some(s(7200)), 0.5), s(300));
        assert_eq!(
            p.delay(0, Some(Duration::ZERO), 0.5),
            s(1),
            "clamped to the minimum"
        );
        assert_eq!(
            p.delay(5, Some(s(1)), 0.5),
            s(1),
            "Retry-After is followed, not the longer schedule"
        );
        let p = p.with_min_interval(s(10));
        assert_eq!(p.delay(0, Some(s(1)), 0.5), s(10));
        // A minimum above the maximum yields to the maximum.
        let p = p.with_min_interval(s(900));
        assert_eq!(p.delay(0, Some(s(1)), 0.5), s(300));
    }

    #[test]
    fn schedule_restarts_when_progress_advances() {
        let p = no_jitter().with_initial_delay(s(2)).with_factor(2.0);
        let mut sched = PollSchedule::default();
        let waits: Vec<u64> = [
            (Some("scheduled"), None),
            (Some("scheduled"), None),
            (Some("scheduled"), None),
            (Some("started"), None),
            (Some("started"), None),
            (None, None),
        ]
        .iter()
        .map(|(text, ra)| sched.next_wait(&p, *text, *ra, 0.5).as_secs())
        .collect();
        assert_eq!(waits, [2, 4, 8, 2, 4, 8]);
        let mut sched = PollSchedule::default();
        let waits: Vec<u64> = [
            Some("10% complete"),
            Some("10% complete"),
            Some("25% complete"),
            Some("25.0% complete"),
            Some("20% complete"),
        ]
        .iter()
        .map(|text| sched.next_wait(&p, *text, None, 0.5).as_secs())
        .collect();
        assert_eq!(waits, [2, 4, 2, 4, 8], "only a higher percentage restarts");
    }

    #[test]
    fn retry_after_does_not_advance_the_schedule() {
        let p = no_jitter().with_initial_delay(s(2)).with_factor(2.0);
        let mut sched = PollSchedule::default();
        assert_eq!(sched.next_wait(&p, None, Some(s(1)), 0.5), s(1));
        assert_eq!(sched.next_wait(&p, None, Some(s(1)), 0.5), s(1));
        assert_eq!(sched.next_wait(&p, None, None, 0.5), s(2));
        assert_eq!(sched.next_wait(&p, None, Some(s(30)), 0.5), s(30));
        assert_eq!(sched.next_wait(&p, None, None, 0.5), s(4));
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let p = PollPolicy::default()
            .with_initial_delay(s(10))
            .with_jitter(0.2)
            .with_factor(1.0);
        assert_eq!(p.delay(0, None, 0.0), s(8));
        assert_eq!(p.delay(0, None, 1.0), s(12));
        assert_eq!(p.delay(0, None, 0.5), s(10));
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + s(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let secs = RetryAfterUnit::Seconds;
        assert_eq!(parse_retry_after("600", secs, now), Some(s(600)));
        assert_eq!(parse_retry_after(" 7200 ", secs, now), Some(s(7200)));
        assert_eq!(
            parse_retry_after("1500", RetryAfterUnit::Milliseconds, now),
            Some(Duration::from_millis(1500))
        );
        // IMF-fixdate, RFC 850 and asctime.
        for date in [
            "Sun, 06 Nov 1994 08:51:37 GMT",
            "Sunday, 06-Nov-94 08:51:37 GMT",
            "Sun Nov  6 08:51:37 1994",
        ] {
            assert_eq!(parse_retry_after(date, secs, now), Some(s(120)), "{date}");
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", secs, now),
            Some(Duration::ZERO),
            "a date in the past"
        );
        assert_eq!(parse_retry_after("soon", secs, now), None);
        assert_eq!(parse_retry_after("", secs, now), None);
        assert_eq!(parse_retry_after("-5", secs, now), None);
        assert_eq!(parse_retry_after("1.5", secs, now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", secs, now),
            Some(Duration::from_secs(u64::MAX))
        );
    }
}
