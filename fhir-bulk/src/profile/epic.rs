//! Epic (spec digest §6 and prior-art.md): Group exports; `_typeFilter` values comma-joined
//! with the commas inside a query backslash-escaped (`\,`); no `_lastUpdated` (use `_since`);
//! the `Epic-Client-ID` header on every request; one export per client and Group, so DELETE
//! when done; jobs run for hours to weeks, and Epic asks to poll about every 10 to 30 minutes.

use super::Encodings;
use crate::error::Result;
use crate::poll::PollPolicy;
use crate::request::{AssociatedDataEncoding, ExportRequest, ListEncoding};
use crate::validate::invalid;
use std::time::Duration;

/// Comma-joined lists; `_typeFilter` comma-joined with inner commas escaped.
pub(super) const ENCODINGS: Encodings = Encodings {
    method: None,
    list: ListEncoding::CommaJoined,
    type_filter: ListEncoding::CommaJoinedEscaped,
    associated_data: AssociatedDataEncoding::Code,
    until_parameter: "_until",
};

/// First poll after a minute, growing to the documented 30 minutes.
pub(super) fn poll_policy() -> PollPolicy {
    PollPolicy::default()
        .with_initial_delay(Duration::from_secs(60))
        .with_max_interval(Duration::from_secs(30 * 60))
}

pub(super) fn check(r: &ExportRequest) -> Result<()> {
    for filter in &r.type_filters {
        let query = filter.split_once('?').map_or("", |(_, q)| q);
        if query.split('&').any(|term| {
            term.split('=')
                .next()
                .is_some_and(|n| n.starts_with("_lastUpdated"))
        }) {
            return Err(invalid(
                "_typeFilter",
                format!(
                    "Epic does not support `_lastUpdated` (in `{filter}`); use `_since` for the \
                     changed-since date"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Error, ExportRequest, ServerProfile};

    #[test]
    fn type_filter_commas_are_escaped() {
        let sent = ServerProfile::Epic
            .prepare(
                &ExportRequest::group("g")
                    .types(["Observation", "Patient"])
                    .type_filter("Observation?category=laboratory,vital-signs")
                    .type_filter("Patient?active=true"),
            )
            .unwrap();
        assert_eq!(
            sent.query_pairs(),
            [
                ("_type", "Observation,Patient"),
                (
                    "_typeFilter",
                    "Observation?category=laboratory\\,vital-signs,Patient?active=true"
                ),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // Already escaped commas are not escaped twice.
        let sent = ServerProfile::Epic
            .prepare(&ExportRequest::group("g").type_filter("Observation?code=a\\,b"))
            .unwrap();
        assert_eq!(sent.query_pairs()[0].1, "Observation?code=a\\,b");
    }

    #[test]
    fn last_updated_is_refused() {
        let err = ServerProfile::Epic
            .prepare(
                &ExportRequest::group("g").type_filter("Observation?_lastUpdated=gt2024-01-01"),
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest { parameter, message }
                if parameter == "_typeFilter" && message.contains("_since")),
            "{err}"
        );
    }
}
