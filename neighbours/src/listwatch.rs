//! A list-then-watch of one resource as kube-rs watcher events, with the LIST decoded item by
//! item as it arrives ([`crate::list_split`]): kube-rs's own watcher reads a whole LIST body
//! into memory and copies it twice, which at 5,000 cloud Nodes made a 140 MiB peak in an
//! agent whose steady state is 12 MiB. The LIST asks for `resourceVersion=0` (the API
//! server answers from its watch cache, cheap at scale); the WATCH starts at the list's
//! version with bookmarks, is decoded line by line with each object built straight as `K`
//! ([`WireEvent`]), and is re-opened when the API server ends it. Any failure ends the
//! stream with an error; [`crate::watch::drive`] lists afresh after its backoff.

use std::collections::VecDeque;
use std::fmt::{self, Debug};
use std::marker::PhantomData;
use std::pin::Pin;

use futures::io::{AsyncBufRead, AsyncBufReadExt};
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{ListParams, WatchParams};
use kube::core::Status;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::list_split::{ListSplitError, ListSplitter, MAX_ITEM_BYTES};
use crate::selector::LabelSelector;
use crate::slim::{SlimPod, Versioned, Watched};

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
    /// The agents' Pods: those `filter` selects (all when it is empty).
    pub fn pods(filter: &LabelSelector) -> Self {
        Self { labels: (!filter.is_empty()).then(|| filter.to_string()), fields: None }
    }

    /// One object by name (`metadata.name=…`).
    pub fn named(name: &str) -> Self {
        Self { labels: None, fields: Some(format!("metadata.name={name}")) }
    }

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

/// A watch response body: one JSON event per line.
type Body = Pin<Box<dyn AsyncBufRead + Send>>;

enum Phase<K> {
    List,
    Listing(Listing<K>),
    OpenWatch(String),
    Watching(String, Body, Vec<u8>),
    Ended,
}

/// One watch event as the API server writes it, `{"type": .., "object": ..}`, decoded with
/// the object built straight as `K` when `type` comes first (the API server writes it first).
/// kube-rs's `WatchEvent` is an adjacently tagged enum, which serde decodes by first copying
/// the whole object into a buffered tree: 8 KiB Node updates 50 times a second.
#[derive(Debug)]
enum WireEvent<K> {
    Apply(Versioned<K>),
    Delete(Versioned<K>),
    Bookmark(String),
    Error(Box<Status>),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum WireType {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BookmarkMeta {
    resource_version: String,
}

#[derive(Deserialize)]
struct BookmarkWire {
    metadata: BookmarkMeta,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum WireKey {
    Type,
    Object,
    #[serde(other)]
    Other,
}

/// Decodes an event's object as its type says, from the event's map or from a buffered tree.
struct ObjectOf<K>(WireType, PhantomData<K>);

impl<'de, K: Watched> DeserializeSeed<'de> for ObjectOf<K> {
    type Value = WireEvent<K>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireEvent<K>, D::Error> {
        Ok(match self.0 {
            WireType::Added | WireType::Modified => WireEvent::Apply(K::decode(d)?),
            WireType::Deleted => WireEvent::Delete(K::decode(d)?),
            WireType::Bookmark => WireEvent::Bookmark(BookmarkWire::deserialize(d)?.metadata.resource_version),
            WireType::Error => WireEvent::Error(Box::new(Status::deserialize(d)?)),
        })
    }
}

impl<'de, K: Watched> Deserialize<'de> for WireEvent<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventVisitor<K>(PhantomData<K>);
        impl<'de, K: Watched> Visitor<'de> for EventVisitor<K> {
            type Value = WireEvent<K>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a watch event")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut kind, mut event, mut early) = (None, None, None);
                while let Some(key) = map.next_key::<WireKey>()? {
                    match (key, kind) {
                        (WireKey::Type, _) => kind = Some(map.next_value::<WireType>()?),
                        (WireKey::Object, Some(k)) => event = Some(map.next_value_seed(ObjectOf(k, PhantomData))?),
                        // The object before its type (never seen from an API server): kept as
                        // a tree until the type arrives.
                        (WireKey::Object, None) => early = Some(map.next_value::<serde_json::Value>()?),
                        (WireKey::Other, _) => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| A::Error::missing_field("type"))?;
                match (event, early) {
                    (Some(event), _) => Ok(event),
                    (None, Some(object)) => ObjectOf(kind, PhantomData).deserialize(object).map_err(A::Error::custom),
                    (None, None) => Err(A::Error::missing_field("object")),
                }
            }
        }
        d.deserialize_map(EventVisitor(PhantomData))
    }
}

/// Reads the body's next non-empty line into `line` (without its newline); false at its end.
async fn next_line(body: &mut Body, line: &mut Vec<u8>) -> kube::Result<bool> {
    line.clear();
    loop {
        let chunk = body.fill_buf().await.map_err(kube::Error::ReadEvents)?;
        if chunk.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        body.consume_unpin(if complete { take + 1 } else { take });
        if line.len() > MAX_ITEM_BYTES {
            return Err(kube::Error::Service(Box::new(ListSplitError::ItemTooLarge)));
        }
        if complete && !line.is_empty() {
            return Ok(true);
        }
    }
}

/// Opens a watch of `api` from `version`.
async fn open_watch<R: kube::Resource + Clone>(
    api: &Api<R>,
    selectors: &Selectors,
    version: &str,
) -> kube::Result<Body> {
    let mut request = kube::core::Request::new(api.resource_url())
        .watch(&selectors.watch_params(), version)
        .map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("watch");
    let body = api.clone().into_client().request_stream(request).await?;
    Ok(Box::pin(body))
}

/// A LIST response being read: objects come out one by one as their bytes arrive, so a
/// relist never holds the whole list decoded beside the cache it replaces.
struct Listing<K> {
    body: Body,
    splitter: ListSplitter,
    /// Decoded from the last chunk, not yet handed out (a chunk holds a few objects).
    pending: VecDeque<K>,
}

impl<K: Watched> Listing<K> {
    /// Sends the LIST of `api`.
    async fn start(api: &Api<K::Full>, selectors: &Selectors) -> kube::Result<Self> {
        let request = kube::core::Request::new(api.resource_url())
            .list(&selectors.list_params())
            .map_err(kube::Error::BuildRequest)?;
        let body = api.clone().into_client().request_stream(request).await?;
        Ok(Self { body: Box::pin(body), splitter: ListSplitter::default(), pending: VecDeque::new() })
    }

    /// The next object (its version taken out: [`list_watch`] resumes from the list's), or
    /// `None` at the end of the body.
    async fn next(&mut self) -> kube::Result<Option<K>> {
        loop {
            if let Some(object) = self.pending.pop_front() {
                return Ok(Some(object));
            }
            let chunk = self.body.fill_buf().await.map_err(kube::Error::ReadEvents)?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let n = chunk.len();
            let (pending, mut bad_item) = (&mut self.pending, None);
            self.splitter
                .feed(chunk, |item| match serde_json::from_slice::<Versioned<K>>(item) {
                    Ok(Versioned { object, .. }) => pending.push_back(object),
                    Err(e) => {
                        bad_item.get_or_insert(e);
                    }
                })
                .map_err(|e| kube::Error::Service(Box::new(e)))?;
            self.body.consume_unpin(n);
            if let Some(e) = bad_item {
                return Err(kube::Error::SerdeError(e));
            }
        }
    }

    /// The list's version, once [`Listing::next`] has returned `None`.
    fn version(self) -> kube::Result<String> {
        let metadata = self.splitter.finish().map_err(|e| kube::Error::Service(Box::new(e)))?;
        let meta: ListMeta = match metadata {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?,
            None => ListMeta::default(),
        };
        Ok(meta.resource_version.filter(|v| !v.is_empty()).unwrap_or_default())
    }
}

/// LISTs `api`'s objects, decoding each as it arrives; returns them and the list's version.
pub async fn list_streaming<K: Watched>(api: &Api<K::Full>, selectors: &Selectors) -> kube::Result<(Vec<K>, String)> {
    let mut listing = Listing::start(api, selectors).await?;
    let mut objects = Vec::new();
    while let Some(object) = listing.next().await? {
        objects.push(object);
    }
    Ok((objects, listing.version()?))
}

/// The objects of `api` as watcher events (`Init`, `InitApply` each, `InitDone`, then `Apply`
/// and `Delete`), ending after the first error.
pub fn list_watch<K: Watched>(
    api: Api<K::Full>,
    selectors: Selectors,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send {
    // The api and selectors travel with the phase: one stream step per LIST object must not
    // clone them each time.
    futures::stream::unfold((Phase::List, api, selectors), |(phase, api, selectors)| async move {
        let (item, phase) = step(phase, &api, &selectors).await?;
        Some((item, (phase, api, selectors)))
    })
}

/// One item of [`list_watch`] and the phase after it; `None` once the stream has ended.
async fn step<K: Watched>(
    mut phase: Phase<K>,
    api: &Api<K::Full>,
    selectors: &Selectors,
) -> Option<(Result<Event<K>, watcher::Error>, Phase<K>)> {
    loop {
        phase = match phase {
            Phase::Ended => return None,
            Phase::List => match Listing::start(api, selectors).await {
                Ok(listing) => return Some((Ok(Event::Init), Phase::Listing(listing))),
                Err(e) => return Some((Err(watcher::Error::InitialListFailed(e)), Phase::Ended)),
            },
            // Each object goes to the cache as it is decoded.
            Phase::Listing(mut listing) => match listing.next().await {
                Ok(Some(object)) => return Some((Ok(Event::InitApply(object)), Phase::Listing(listing))),
                Ok(None) => match listing.version() {
                    Ok(version) if version.is_empty() => {
                        return Some((Err(watcher::Error::NoResourceVersion), Phase::Ended));
                    }
                    Ok(version) => return Some((Ok(Event::InitDone), Phase::OpenWatch(version))),
                    Err(e) => return Some((Err(watcher::Error::InitialListFailed(e)), Phase::Ended)),
                },
                Err(e) => return Some((Err(watcher::Error::InitialListFailed(e)), Phase::Ended)),
            },
            Phase::OpenWatch(version) => match open_watch(api, selectors, &version).await {
                Ok(body) => Phase::Watching(version, body, Vec::new()),
                Err(e) => return Some((Err(watcher::Error::WatchStartFailed(e)), Phase::Ended)),
            },
            Phase::Watching(mut version, mut body, mut line) => match next_line(&mut body, &mut line).await {
                Ok(false) => Phase::OpenWatch(version),
                Err(e) => return Some((Err(watcher::Error::WatchFailed(e)), Phase::Ended)),
                Ok(true) => match serde_json::from_slice::<WireEvent<K>>(&line) {
                    Err(e) => {
                        return Some((Err(watcher::Error::WatchFailed(kube::Error::SerdeError(e))), Phase::Ended));
                    }
                    Ok(WireEvent::Bookmark(v)) => {
                        version = v;
                        Phase::Watching(version, body, line)
                    }
                    Ok(WireEvent::Apply(Versioned { object, version: v })) => {
                        version = v.unwrap_or(version);
                        return Some((Ok(Event::Apply(object)), Phase::Watching(version, body, line)));
                    }
                    Ok(WireEvent::Delete(Versioned { object, version: v })) => {
                        version = v.unwrap_or(version);
                        return Some((Ok(Event::Delete(object)), Phase::Watching(version, body, line)));
                    }
                    // 410 Gone among them: the next stream lists afresh.
                    Ok(WireEvent::Error(status)) => {
                        return Some((Err(watcher::Error::WatchError(status)), Phase::Ended));
                    }
                },
            },
        }
    }
}

/// The agents' Pods that `filter` selects, as [`list_watch`] events, each keeping the
/// filter's verdict instead of its labels ([`SlimPod::judge_labels`]): what both tiers' Pod
/// caches hold.
pub fn pod_events(
    api: Api<k8s_openapi::api::core::v1::Pod>,
    filter: &LabelSelector,
) -> impl Stream<Item = Result<Event<SlimPod>, watcher::Error>> + Send {
    let filter = filter.clone();
    list_watch::<SlimPod>(api, Selectors::pods(&filter))
        .map(move |event| event.map(|e| e.modify(|p: &mut SlimPod| p.judge_labels(&filter))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slim::SlimNode;

    fn decode(line: &str) -> serde_json::Result<WireEvent<SlimNode>> {
        serde_json::from_str(line)
    }

    #[test]
    fn events_decode_by_their_type() {
        let node = r#"{"metadata":{"name":"n1","resourceVersion":"7"},"spec":{"unschedulable":true}}"#;
        for (kind, want_apply) in [("ADDED", true), ("MODIFIED", true), ("DELETED", false)] {
            match decode(&format!(r#"{{"type":"{kind}","object":{node}}}"#)).unwrap() {
                WireEvent::Apply(Versioned { object: n, version }) if want_apply => {
                    assert!(n.name() == "n1" && n.unschedulable() && version.as_deref() == Some("7"));
                }
                WireEvent::Delete(Versioned { object: n, .. }) if !want_apply => assert_eq!(n.name(), "n1"),
                other => panic!("{kind}: {other:?}"),
            }
        }
        // The object before its type decodes the same.
        let late = decode(&format!(r#"{{"object":{node},"type":"MODIFIED"}}"#)).unwrap();
        assert!(matches!(late, WireEvent::Apply(v) if v.object.name() == "n1"));
        let bookmark =
            r#"{"type":"BOOKMARK","object":{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"12"}}}"#;
        assert!(matches!(decode(bookmark).unwrap(), WireEvent::Bookmark(v) if v == "12"));
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}}"#;
        assert!(matches!(decode(gone).unwrap(), WireEvent::Error(s) if s.code == 410));
    }

    #[test]
    fn malformed_events_are_errors() {
        for bad in [
            r#"{"type":"ADDED"}"#,
            r#"{"object":{}}"#,
            r#"{"type":"RENAMED","object":{}}"#,
            r#"{"type":"ADDED","object":{"metadata":{"name":3}}}"#,
            r#"["ADDED"]"#,
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
