//! A list-then-watch of one resource as kube-rs watcher events, with the LIST decoded item by
//! item as it arrives ([`crate::list_split`]): kube-rs's own watcher reads a whole LIST body
//! into memory and copies it twice, which at 5,000 cloud Nodes made a 150 MiB peak in an
//! agent whose steady state is 12 MiB. The LIST asks for `resourceVersion=0` (the API
//! server answers from its watch cache, cheap at scale); the WATCH starts at the list's
//! version with bookmarks, and is re-opened when the API server ends it. Any failure ends the
//! stream with an error; [`crate::watch::drive`] lists afresh after its backoff.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::pin::Pin;

use futures::io::AsyncBufReadExt;
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::list_split::ListSplitter;

/// Seconds the API server keeps a watch open before ending it (kube-rs's default, under the
/// API server's own limit); the stream re-opens it from the last version seen.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// What to select: the same selectors for the LIST and the WATCH.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// A label selector (`app=kubenurse`), or none.
    pub labels: Option<String>,
    /// A field selector (`metadata.name=node-1`), or none.
    pub fields: Option<String>,
}

impl Selectors {
    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default().match_any();
        if let Some(l) = &self.labels {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.fields {
            lp = lp.fields(f);
        }
        lp
    }

    fn watch_params(&self) -> WatchParams {
        let mut wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(l) = &self.labels {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.fields {
            wp = wp.fields(f);
        }
        wp
    }
}

type Events<K> = Pin<Box<dyn Stream<Item = kube::Result<WatchEvent<K>>> + Send>>;

enum Phase<K> {
    List,
    Listed(VecDeque<Event<K>>, String),
    OpenWatch(String),
    Watching(String, Events<K>),
    Ended,
}

/// LISTs `api`'s objects, decoding each as it arrives; returns them and the list's version.
pub async fn list_streaming<K>(api: &Api<K>, selectors: &Selectors) -> kube::Result<(Vec<K>, String)>
where
    K: Resource + Clone + DeserializeOwned,
{
    let client = api.clone().into_client();
    let request = kube::core::Request::new(api.resource_url())
        .list(&selectors.list_params())
        .map_err(kube::Error::BuildRequest)?;
    let mut body = client.request_stream(request).await?;
    let mut splitter = ListSplitter::default();
    let mut objects = Vec::new();
    let mut bad_item = None;
    loop {
        let chunk = body.fill_buf().await.map_err(kube::Error::ReadEvents)?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        splitter
            .feed(chunk, |item| match serde_json::from_slice::<K>(item) {
                Ok(object) => objects.push(object),
                Err(e) => {
                    bad_item.get_or_insert(e);
                }
            })
            .map_err(|e| kube::Error::Service(Box::new(e)))?;
        body.consume_unpin(n);
        if let Some(e) = bad_item.take() {
            return Err(kube::Error::SerdeError(e));
        }
    }
    let metadata = splitter.finish().map_err(|e| kube::Error::Service(Box::new(e)))?;
    let meta: ListMeta = match metadata {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?,
        None => ListMeta::default(),
    };
    let version = meta.resource_version.filter(|v| !v.is_empty()).unwrap_or_default();
    Ok((objects, version))
}

/// The objects of `api` as watcher events (`Init`, `InitApply` each, `InitDone`, then `Apply`
/// and `Delete`), ending after the first error.
pub fn list_watch<K>(api: Api<K>, selectors: Selectors) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    futures::stream::unfold(Phase::List, move |mut phase| {
        let (api, selectors) = (api.clone(), selectors.clone());
        async move {
            loop {
                phase = match phase {
                    Phase::Ended => return None,
                    Phase::List => match list_streaming(&api, &selectors).await {
                        Ok((_, version)) if version.is_empty() => {
                            return Some((Err(watcher::Error::NoResourceVersion), Phase::Ended));
                        }
                        Ok((objects, version)) => {
                            let mut events: VecDeque<Event<K>> = objects.into_iter().map(Event::InitApply).collect();
                            events.push_front(Event::Init);
                            events.push_back(Event::InitDone);
                            Phase::Listed(events, version)
                        }
                        Err(e) => return Some((Err(watcher::Error::InitialListFailed(e)), Phase::Ended)),
                    },
                    Phase::Listed(mut events, version) => match events.pop_front() {
                        Some(event) => return Some((Ok(event), Phase::Listed(events, version))),
                        None => Phase::OpenWatch(version),
                    },
                    Phase::OpenWatch(version) => match api.watch(&selectors.watch_params(), &version).await {
                        Ok(events) => Phase::Watching(version, events.boxed()),
                        Err(e) => return Some((Err(watcher::Error::WatchStartFailed(e)), Phase::Ended)),
                    },
                    Phase::Watching(mut version, mut events) => match events.next().await {
                        None => Phase::OpenWatch(version),
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            version = b.metadata.resource_version;
                            Phase::Watching(version, events)
                        }
                        Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                            if let Some(v) = o.meta().resource_version.clone() {
                                version = v;
                            }
                            return Some((Ok(Event::Apply(o)), Phase::Watching(version, events)));
                        }
                        Some(Ok(WatchEvent::Deleted(o))) => {
                            if let Some(v) = o.meta().resource_version.clone() {
                                version = v;
                            }
                            return Some((Ok(Event::Delete(o)), Phase::Watching(version, events)));
                        }
                        // 410 Gone among them: the next stream lists afresh.
                        Some(Ok(WatchEvent::Error(status))) => {
                            return Some((Err(watcher::Error::WatchError(status)), Phase::Ended));
                        }
                        Some(Err(e)) => return Some((Err(watcher::Error::WatchFailed(e)), Phase::Ended)),
                    },
                }
            }
        }
    })
}
