//! The token cache of the OAuth providers: reuse a token until a margin before it expires,
//! refresh it once however many requests ask at the same time, forget it when the server
//! rejects it.

use crate::error::{Error, Result};
use crate::secret::AccessToken;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The lifetime assumed when the token response has no `expires_in`.
pub(super) const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The default refresh margin.
pub(super) const DEFAULT_MARGIN: Duration = Duration::from_secs(60);

/// A token just obtained.
#[derive(Debug)]
pub(super) struct FreshToken {
    pub(super) token: AccessToken,
    /// `expires_in`, if the server gave it.
    pub(super) lifetime: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Cached {
    token: AccessToken,
    /// From here on, refresh.
    refresh_at: Instant,
    /// From here on, the token must not be used.
    expires_at: Instant,
}

/// One cached token and the lock that makes refreshes single-flight.
#[derive(Debug)]
pub(super) struct TokenCache {
    current: Mutex<Option<Cached>>,
    /// Held while a token is fetched; holds the message of the last failed fetch.
    refresh: tokio::sync::Mutex<Option<String>>,
    /// How many fetches have failed.
    failures: AtomicU64,
    margin: Duration,
}

impl TokenCache {
    pub(super) fn new(margin: Duration) -> TokenCache {
        TokenCache {
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(None),
            failures: AtomicU64::new(0),
            margin,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // A panic while holding this lock cannot leave the `Option` half-written.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token if it is not due for refresh.
    fn fresh(&self) -> Option<AccessToken> {
        let now = Instant::now();
        self.lock()
            .as_ref()
            .filter(|c| now < c.refresh_at)
            .map(|c| c.token.clone())
    }

    /// A valid token: the cached one, or one from `fetch`. Concurrent callers wait for one
    /// `fetch`, and share its failure rather than repeating it. If a refresh fails while the
    /// old token has not yet expired, the old token is returned (the next call tries again).
    pub(super) async fn get<F, Fut>(&self, fetch: F) -> Result<AccessToken>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FreshToken>>,
    {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let failures_before = self.failures.load(Ordering::Acquire);
        let mut last_failure = self.refresh.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        if self.failures.load(Ordering::Acquire) != failures_before
            && let Some(message) = last_failure.as_deref()
        {
            return Err(Error::Auth {
                message: format!(
                    "{message} (the token request made at the same time for another \
                         request; not repeated)"
                ),
                response: None,
            });
        }
        let asked_at = Instant::now();
        match fetch().await {
            Ok(fresh) => {
                let lifetime = fresh
                    .lifetime
                    .filter(|l| !l.is_zero())
                    .unwrap_or(DEFAULT_LIFETIME);
                let margin = self.margin.min(lifetime / 2);
                tracing::info!(
                    target: "fhir_bulk::auth",
                    lifetime_s = lifetime.as_secs(),
                    "token refreshed"
                );
                *self.lock() = Some(Cached {
                    token: fresh.token.clone(),
                    refresh_at: asked_at + (lifetime - margin),
                    expires_at: asked_at + lifetime,
                });
                Ok(fresh.token)
            }
            Err(error) => {
                let now = Instant::now();
                let still_valid = self
                    .lock()
                    .as_ref()
                    .filter(|c| now < c.expires_at)
                    .map(|c| c.token.clone());
                if still_valid.is_none() {
                    *last_failure = Some(match &error {
                        Error::Auth { message, .. } => message.clone(),
                        other => other.to_string(),
                    });
                    self.failures.fetch_add(1, Ordering::Release);
                }
                still_valid.ok_or(error)
            }
        }
    }

    /// Forgets the cached token if it is `token` (a later token from a concurrent refresh
    /// stays).
    pub(super) fn reject(&self, token: &AccessToken) {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|c| &c.token == token) {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn counter_fetch(
        count: &Arc<AtomicUsize>,
        lifetime: Option<u64>,
    ) -> impl Future<Output = Result<FreshToken>> + use<> {
        let count = count.clone();
        async move {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(FreshToken {
                token: AccessToken::new(format!("t{n}")),
                lifetime: lifetime.map(Duration::from_secs),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reuses_then_refreshes_before_expiry() {
        let cache = TokenCache::new(DEFAULT_MARGIN);
        let count = Arc::new(AtomicUsize::new(0));
        let t1 = cache
            .get(|| counter_fetch(&count, Some(300)))
            .await
            .unwrap();
        assert_eq!(t1.secret(), "t1");
        tokio::time::advance(Duration::from_secs(200)).await;
        let again = cache
            .get(|| counter_fetch(&count, Some(300)))
            .await
            .unwrap();
        assert_eq!(again.secret(), "t1");
        // 60 s margin: at 240 s after the request a new token is fetched.
        tokio::time::advance(Duration::from_secs(45)).await;
        let t2 = cache
            .get(|| counter_fetch(&count, Some(300)))
            .await
            .unwrap();
        assert_eq!(t2.secret(), "t2");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn margin_is_at_most_half_the_lifetime() {
        let cache = TokenCache::new(Duration::from_secs(600));
        let count = Arc::new(AtomicUsize::new(0));
        cache.get(|| counter_fetch(&count, Some(60))).await.unwrap();
        tokio::time::advance(Duration::from_secs(25)).await;
        cache.get(|| counter_fetch(&count, Some(60))).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        cache.get(|| counter_fetch(&count, Some(60))).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn default_lifetime_without_expires_in() {
        let cache = TokenCache::new(DEFAULT_MARGIN);
        let count = Arc::new(AtomicUsize::new(0));
        cache.get(|| counter_fetch(&count, None)).await.unwrap();
        tokio::time::advance(Duration::from_secs(230)).await;
        cache.get(|| counter_fetch(&count, None)).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(20)).await;
        cache.get(|| counter_fetch(&count, None)).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn single_flight_and_reject_only_the_cached_token() {
        let cache = Arc::new(TokenCache::new(DEFAULT_MARGIN));
        let count = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let cache = cache.clone();
                let count = count.clone();
                tokio::spawn(async move { cache.get(|| counter_fetch(&count, Some(300))).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().secret(), "t1");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let t1 = AccessToken::new("t1");
        // Ten rejections of the same token: one refresh.
        cache.reject(&t1);
        let t2 = cache
            .get(|| counter_fetch(&count, Some(300)))
            .await
            .unwrap();
        for _ in 0..9 {
            cache.reject(&t1);
        }
        assert_eq!(
            cache
                .get(|| counter_fetch(&count, Some(300)))
                .await
                .unwrap(),
            t2
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_a_failed_fetch() {
        let cache = Arc::new(TokenCache::new(DEFAULT_MARGIN));
        let count = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let cache = cache.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    cache
                        .get(|| async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            Err::<FreshToken, _>(Error::Auth {
                                message: "endpoint down".into(),
                                response: None,
                            })
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let err = task.await.unwrap().unwrap_err();
            assert!(err.to_string().contains("endpoint down"), "{err}");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // A later call tries again.
        let again = cache
            .get(|| counter_fetch(&count, Some(300)))
            .await
            .unwrap();
        assert_eq!(again.secret(), "t2");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_a_still_valid_token() {
        let cache = TokenCache::new(DEFAULT_MARGIN);
        let count = Arc::new(AtomicUsize::new(0));
        cache
            .get(|| counter_fetch(&count, Some(300)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(250)).await;
        let failing = || async {
            Err(Error::Auth {
                message: "down".into(),
                response: None,
            })
        };
        assert_eq!(cache.get(failing).await.unwrap().secret(), "t1");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(cache.get(failing).await.is_err());
    }
}
