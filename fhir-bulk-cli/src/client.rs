//! Building the library's `BulkClient` from the command-line options.

use crate::args::{PollArgs, RetryAfterUnitArg, ServerArgs};
use crate::auth;
use crate::error::{CliError, from_lib};
use fhir_bulk::{
    BulkClient, CapabilityStatement, Error, PollPolicy, RetryAfterUnit, RetryPolicy, ServerProfile,
};
use std::time::Duration;

/// The longest the CLI spends on the CapabilityStatement (read for `log.ndjson` only) before
/// the kick-off: a server that is down is reported by the kick-off's own retries, not after a
/// whole retry budget spent on `/metadata`.
pub(crate) const CAPABILITY_BUDGET: Duration = Duration::from_secs(4);

/// `[base]/metadata`, given at most [`CAPABILITY_BUDGET`] (the library's per-call budget:
/// each retry is shown, and a server that refuses connections is reported within it).
pub(crate) async fn capability_statement(
    client: &BulkClient,
) -> Result<CapabilityStatement, Error> {
    client.capability_statement_within(CAPABILITY_BUDGET).await
}

/// A client for the FHIR server at `base`, with the auth, headers, trusted origins and poll
/// policy the flags give.
pub(crate) fn build(
    base: &str,
    server: &ServerArgs,
    poll: &PollArgs,
) -> Result<BulkClient, CliError> {
    let profile = profile(base, server);
    let mut builder = BulkClient::builder(base)
        .server_profile(profile)
        .poll_policy(poll_policy(poll, profile))
        .retry_policy(retry_policy(poll));
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

/// `--server-profile`, else the profile the base URL's host names (a vendor's cloud), else
/// the generic one.
pub(crate) fn profile(base: &str, server: &ServerArgs) -> ServerProfile {
    server
        .server_profile
        .or_else(|| {
            url::Url::parse(base)
                .ok()
                .and_then(|u| ServerProfile::suggest_for_url(&u))
        })
        .unwrap_or_default()
}

/// The poll policy: the server profile's defaults, with `--max-poll-interval` and
/// `--retry-after-unit` applied.
pub(crate) fn poll_policy(poll: &PollArgs, profile: ServerProfile) -> PollPolicy {
    let mut policy = profile.poll_policy();
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

/// The retry policy: the library's defaults, with the longest Retry-After honoured (a 429's or
/// a 503's, on any request) capped at `--max-poll-interval`.
pub(crate) fn retry_policy(poll: &PollArgs) -> RetryPolicy {
    let policy = RetryPolicy::default();
    match poll.max_poll_interval {
        Some(secs) => {
            let max = Duration::from_secs_f64(secs).min(policy.max_retry_after);
            policy.with_max_retry_after(max)
        }
        None => policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_flags_shape_the_policy() {
        let policy = poll_policy(
            &PollArgs {
                retry_after_unit: RetryAfterUnitArg::Millis,
                max_poll_interval: Some(0.5),
            },
            ServerProfile::Generic,
        );
        assert_eq!(policy.max_interval, Duration::from_millis(500));
        assert_eq!(policy.initial_delay, Duration::from_millis(500));
        assert_eq!(policy.retry_after_unit, RetryAfterUnit::Milliseconds);
        assert_eq!(
            poll_policy(&PollArgs::default(), ServerProfile::Generic),
            PollPolicy::default()
        );
        assert_eq!(
            poll_policy(&PollArgs::default(), ServerProfile::Epic),
            ServerProfile::Epic.poll_policy()
        );
        let capped = retry_policy(&PollArgs {
            retry_after_unit: RetryAfterUnitArg::Seconds,
            max_poll_interval: Some(0.5),
        });
        assert_eq!(capped.max_retry_after, Duration::from_millis(500));
        assert_eq!(retry_policy(&PollArgs::default()), RetryPolicy::default());
    }

    #[test]
    fn profile_from_the_flag_or_the_host() {
        let none = ServerArgs::default();
        assert_eq!(
            profile("https://ehr.example/fhir", &none),
            ServerProfile::Generic
        );
        assert_eq!(
            profile(
                "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/fhirStores/s/fhir",
                &none
            ),
            ServerProfile::GoogleCloudHealthcare
        );
        let flag = ServerArgs {
            server_profile: Some(ServerProfile::SmartReference),
            ..ServerArgs::default()
        };
        assert_eq!(
            profile("https://healthcare.googleapis.com/v1/x", &flag),
            ServerProfile::SmartReference
        );
    }
}
