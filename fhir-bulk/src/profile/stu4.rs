//! A server of the Bulk Data IG's STU4 ballot (spec digest §2): the kick-off is a POST with a
//! `Parameters` body, a client SHALL NOT comma-join list parameters (one `parameter` entry per
//! value, `_typeFilter` included) and `includeAssociatedData` is a `valueCoding` of the IG's
//! code system.

use super::Encodings;
use crate::request::{AssociatedDataEncoding, KickoffMethod, ListEncoding};

/// POST, every list repeated, `valueCoding`.
pub(super) const ENCODINGS: Encodings = Encodings {
    method: Some(KickoffMethod::Post),
    list: ListEncoding::Repeated,
    type_filter: ListEncoding::Repeated,
    associated_data: AssociatedDataEncoding::Coding,
    until_parameter: "_until",
};

#[cfg(test)]
mod tests {
    use crate::request::INCLUDE_ASSOCIATED_DATA_SYSTEM;
    use crate::{ExportRequest, ServerProfile};
    use serde_json::json;

    #[test]
    fn posts_repeated_lists_and_codings() {
        let sent = ServerProfile::Stu4
            .prepare(
                &ExportRequest::system()
                    .types(["Patient", "Observation"])
                    .include_associated_data("LatestProvenanceResources"),
            )
            .unwrap();
        assert_eq!(sent.kickoff_method(), crate::KickoffMethod::Post);
        assert_eq!(
            sent.parameters(),
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Patient"},
                {"name": "_type", "valueString": "Observation"},
                {"name": "includeAssociatedData", "valueCoding": {
                    "system": INCLUDE_ASSOCIATED_DATA_SYSTEM,
                    "code": "LatestProvenanceResources"}}
            ]})
        );
    }
}
