//! Runs a watch ([`crate::listwatch`]) into a [`crate::cache::Cache`] forever, the same way in both tiers: on an
//! error the watch is restarted (a fresh LIST, then WATCH) after a jittered, capped backoff,
//! and the watch's health is kept for `neighbourhood_state`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kubenurse_common::backoff::Backoff;

use crate::cache::CacheWriter;
use crate::slim::Watched;
use tracing::{info, warn};

/// First delay before re-establishing a failed watch; doubles up to `MAX_RETRY_DELAY`.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between attempts while the API server is unreachable: with ±25 % jitter and
/// the LIST itself, discovery is `ok` again within 10 s of the API server's recovery.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(6);

/// One watch's health.
#[derive(Debug, Default, Clone)]
pub struct WatchHealth {
    /// The first LIST completed: the cache is the truth (possibly stale), not unknown.
    pub synced: bool,
    /// The last failure, cleared when a LIST completes again.
    pub last_error: Option<String>,
}

/// Shared handle to a watch's health.
pub type Health = Arc<Mutex<WatchHealth>>;

/// Reads a health handle (a poisoned lock still holds a usable value).
pub fn health_of(h: &Health) -> WatchHealth {
    h.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Drives `make_stream` into `writer` forever, calling `changed` after every event applied
/// (and with `None` when the watch fails).
/// The LIST's completion is what proves recovery, so the error clears as soon as the API
/// server is back, and the cache stays valid meanwhile (a LIST is swapped in whole at its end).
pub async fn drive<K, S>(
    make_stream: impl Fn() -> S,
    mut writer: CacheWriter<K>,
    health: Health,
    what: &'static str,
    changed: impl Fn(Option<&Event<K>>),
) where
    K: Watched,
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    loop {
        let stream = make_stream();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    writer.apply(&event);
                    if matches!(event, Event::InitDone) {
                        let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
                        if !h.synced || h.last_error.is_some() {
                            info!(resource = what, "watch synced");
                        }
                        h.synced = true;
                        h.last_error = None;
                        backoff.reset();
                    }
                    changed(Some(&event));
                    // A LIST's objects come out of already-read bytes without waiting: this
                    // gives the runtime back now and then, or 5,000 of them would keep a
                    // worker (and the agent's HTTP server with it) busy for seconds.
                    tokio::task::consume_budget().await;
                }
                Err(e) => {
                    warn!(resource = what, error = %e, retry_in = ?backoff.current(), "watch failed");
                    health.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(format!("{what} watch: {e}"));
                    changed(None);
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
