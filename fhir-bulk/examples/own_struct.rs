//! Stream an export's Observations into a narrow struct of your own: typed fields in one parse
//! (serde skips every field the struct does not name), for an analytics pipeline.
//!
//! Runs against the crate's in-process bulk data server, no network needed:
//! `cargo run -p fhir-bulk --example own_struct`.
#![allow(clippy::unwrap_used, reason = "tests and benches fail loudly")]

use fhir_bulk::{BulkClient, DownloadOptions, ExportRequest};
use fhir_bulk_test_server::TestServer;
use futures::TryStreamExt;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Only what the analysis needs.
#[derive(Debug, Deserialize)]
struct Observation {
    status: String,
    code: CodeableConcept,
    #[serde(rename = "valueQuantity")]
    value: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
struct CodeableConcept {
    #[serde(default)]
    coding: Vec<Coding>,
}

#[derive(Debug, Deserialize)]
struct Coding {
    code: Option<String>,
    display: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Quantity {
    value: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer::builder().patients(50).start().await?;
    let client = BulkClient::builder(server.base_url().as_str()).build()?;
    let export = client
        .export(&ExportRequest::system().types(["Observation"]))
        .await?;

    // code -> (display, count, sum of values)
    let mut stats: BTreeMap<String, (String, u64, f64)> = BTreeMap::new();
    let mut records =
        client.download_resources::<Observation>(&export, &DownloadOptions::default());
    while let Some(record) = records.try_next().await? {
        let Some(coding) = record.code.coding.first() else {
            continue;
        };
        let entry = stats
            .entry(coding.code.clone().unwrap_or_default())
            .or_insert_with(|| (coding.display.clone().unwrap_or_default(), 0, 0.0));
        entry.1 += 1;
        entry.2 += record.value.as_ref().and_then(|q| q.value).unwrap_or(0.0);
        if record.status != "final" && record.line == 1 {
            println!("first line of {} is {}", record.file.url, record.status);
        }
    }
    println!(
        "{:<10} {:<40} {:>6} {:>10}",
        "LOINC", "display", "count", "mean"
    );
    for (code, (display, n, sum)) in stats {
        println!("{code:<10} {display:<40} {n:>6} {:>10.2}", sum / n as f64);
    }
    Ok(())
}
