//! Building the library's `BulkClient` from the command-line options.

use crate::args::{PollArgs, RetryAfterUnitArg, ServerArgs};
use crate::auth;
use crate::error::{CliError, from_lib};
use fhir_bulk::{BulkClient, PollPolicy, RetryAfterUnit};
use std::time::Duration;

/// A client for the FHIR server at `base`, with the auth, headers, trusted origins and poll
/// policy the flags give.
pub(crate) fn build(
    base: &str,
    server: &ServerArgs,
    poll: &PollArgs,
) -> Result<BulkClient, CliError> {
    let mut builder = BulkClient::builder(base).poll_policy(poll_policy(poll));
    if let Some(provider) = crate::cloud::google_auth(base, server)? {
        builder = builder
            .auth_arc(provider)
            .google_storage(fhir_bulk::GoogleStorage::new());
    } else if let Some(provider) = auth::provider(server)? {
        builder = builder.auth_arc(provider);
    }
    for (name, value) in &server.headers {
        builder = builder.header(name, value);
    }
    for origin in &server.trusted_origins {
        builder = builder.trusted_origin(origin);
    }
    builder.build().map_err(from_lib)
}

/// The poll policy: the library's defaults, with `--max-poll-interval` and
/// `--retry-after-unit` applied.
pub(crate) fn poll_policy(poll: &PollArgs) -> PollPolicy {
    let mut policy = PollPolicy::default();
    if let Some(secs) = poll.max_poll_interval {
        let max = Duration::from_secs_f64(secs);
        policy = policy.with_max_interval(max);
        if policy.initial_delay > max {
            policy = policy.with_initial_delay(max);
        }
    }
    if poll.retry_after_unit == RetryAfterUnitArg::Millis {
        policy = policy.with_retry_after_unit(RetryAfterUnit::Milliseconds);
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_flags_shape_the_policy() {
        let policy = poll_policy(&PollArgs {
            retry_after_unit: RetryAfterUnitArg::Millis,
            max_poll_interval: Some(0.5),
        });
        assert_eq!(policy.max_interval, Duration::from_millis(500));
        assert_eq!(policy.initial_delay, Duration::from_millis(500));
        assert_eq!(policy.retry_after_unit, RetryAfterUnit::Milliseconds);
        assert_eq!(poll_policy(&PollArgs::default()), PollPolicy::default());
    }
}
