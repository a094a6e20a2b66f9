//! A per-call retry budget (`BulkClient::capability_statement_within`): transient failures
//! are retried, each retry a `fhir_bulk::retry` event, until the next wait would pass the
//! budget; the sleeps are injected (recorded, never slept). One test in this file: the events
//! are caught with a thread-local subscriber, which other tests' threads must not race.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::Sleeps;
use fhir_bulk::{Error, RetryPolicy};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An event's target and its `attempt` field.
type Seen = (String, Option<u64>);

/// Records the target and the `attempt` field of every event.
#[derive(Clone, Default)]
struct Events {
    seen: Arc<Mutex<Vec<Seen>>>,
    ids: Arc<AtomicU64>,
}

struct Attempt(Option<u64>);

impl tracing::field::Visit for Attempt {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "attempt" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl Subscriber for Events {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.ids.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut attempt = Attempt(None);
        event.record(&mut attempt);
        self.seen
            .lock()
            .unwrap()
            .push((event.metadata().target().to_owned(), attempt.0));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn the_capability_statement_budget_ends_the_retries_each_one_traced() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/fhir/metadata"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let sleeps = Sleeps::default();
    let client = common::builder(&server, &sleeps)
        .retry_policy(
            RetryPolicy::default()
                .with_jitter(false)
                .with_max_retries(10)
                .with_min_delay(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let events = Events::default();
    let guard = tracing::subscriber::set_default(events.clone());
    // Waits of 1 s and 2 s fit in 3.5 s; the next one (4 s) would not.
    let error = client
        .capability_statement_within(Duration::from_millis(3500))
        .await
        .unwrap_err();
    drop(guard);
    assert_eq!(
        sleeps.taken(),
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
    match &error {
        Error::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert_eq!(last.status(), Some(503));
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    let retries: Vec<Option<u64>> = events
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(target, _)| target == "fhir_bulk::retry")
        .map(|(_, attempt)| *attempt)
        .collect();
    assert_eq!(retries, [Some(2), Some(3)], "one event per retry");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);

    // Without a budget the same client goes on to its policy's ten retries.
    let sleeps = Sleeps::default();
    let client = common::builder(&server, &sleeps)
        .retry_policy(
            RetryPolicy::default()
                .with_jitter(false)
                .with_max_retries(10)
                .with_min_delay(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    let _ = client.capability_statement().await.unwrap_err();
    assert_eq!(sleeps.taken().len(), 10);
}
