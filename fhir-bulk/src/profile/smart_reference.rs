//! The SMART reference bulk-data-server (smart-on-fhir/bulk-data-server; spec digest §3 and
//! prior-art.md): STU2/STU3 encodings, every 202 with `Retry-After: 1` (followed, so a finished
//! export is noticed within a second), and a 400 answer to a DELETE of a job that is finished
//! or already gone (bulk-data-server #64), which means the job is gone, not that the DELETE
//! failed.

use super::Encodings;
use crate::job::DeleteOutcome;
use crate::poll::PollPolicy;
use std::time::Duration;

/// The IG's STU2/STU3 encodings.
pub(super) const ENCODINGS: Encodings = Encodings::STANDARD;

/// Short waits: the server says when to come back (`Retry-After: 1`).
pub(super) fn poll_policy() -> PollPolicy {
    PollPolicy::default().with_initial_delay(Duration::from_secs(1))
}

/// A 400 to DELETE: the job is finished or gone.
pub(super) fn delete_400() -> Option<DeleteOutcome> {
    Some(DeleteOutcome::AlreadyGone)
}
