//! What a watch has seen, as both tiers keep it: slim objects by key ([`Watched::key`]),
//! shared with readers. kube-rs's reflector store needs `ObjectMeta` in every object and keys
//! each by a second copy of its name, namespace and version (about 110 bytes a key before
//! the strings): at 5,000 Nodes and Pods the two caches were 6 MiB of an agent's 20. A relist
//! fills a new map and swaps it in at `InitDone`, as the reflector does, so readers never see
//! a half-listed cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::runtime::watcher::Event;

use crate::slim::Watched;

type Objects<K> = HashMap<Box<str>, Arc<K>>;

/// The readers' side: cheap to clone, every clone sees the same objects.
#[derive(Debug)]
pub struct Cache<K> {
    objects: Arc<RwLock<Objects<K>>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { objects: self.objects.clone() }
    }
}

impl<K: Watched> Cache<K> {
    /// A cache and the one writer that fills it.
    pub fn new() -> (Self, CacheWriter<K>) {
        let cache = Self { objects: Arc::default() };
        (cache.clone(), CacheWriter { cache, relisting: None })
    }

    /// Every object now (in no particular order).
    pub fn state(&self) -> Vec<Arc<K>> {
        self.read(|objects| objects.values().cloned().collect())
    }

    /// The object under `key` ([`Watched::key`]).
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.read(|objects| objects.get(key).cloned())
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.read(HashMap::len)
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T>(&self, f: impl FnOnce(&Objects<K>) -> T) -> T {
        // A writer that panicked left a map that is still whole (inserts and removes are
        // single steps), so reading on is right.
        f(&self.objects.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The writer's side, owned by the task that drives the watch.
#[derive(Debug)]
pub struct CacheWriter<K> {
    cache: Cache<K>,
    /// The objects of a LIST in progress, swapped in when it is done.
    relisting: Option<Objects<K>>,
}

impl<K: Watched> CacheWriter<K> {
    /// Applies one watch event.
    pub fn apply(&mut self, event: &Event<K>) {
        match event {
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let Some(objects) = self.relisting.as_mut() {
                    objects.insert(object.key().into_boxed_str(), Arc::new(object.clone()));
                }
            }
            Event::InitDone => {
                if let Some(mut objects) = self.relisting.take() {
                    objects.shrink_to_fit();
                    *self.write() = objects;
                }
            }
            Event::Apply(object) => {
                self.write().insert(object.key().into_boxed_str(), Arc::new(object.clone()));
            }
            Event::Delete(object) => {
                self.write().remove(object.key().as_str());
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects<K>> {
        self.cache.objects.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slim::SlimNode;

    fn node(name: &str, cordoned: bool) -> SlimNode {
        let mut json = serde_json::json!({"metadata": {"name": name}});
        if cordoned {
            json["spec"] = serde_json::json!({"unschedulable": true});
        }
        serde_json::from_value(json).expect("a node")
    }

    fn names(cache: &Cache<SlimNode>) -> Vec<String> {
        let mut names: Vec<String> = cache.state().iter().map(|n| n.name().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_relist_is_swapped_in_whole_when_done() {
        let (cache, mut writer) = Cache::new();
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(node("a", false)));
        writer.apply(&Event::InitApply(node("b", false)));
        assert!(cache.is_empty(), "nothing before InitDone");
        writer.apply(&Event::InitDone);
        assert_eq!(names(&cache), ["a", "b"]);
        // A second LIST without `b`: the old objects stay until it is done, then `b` is gone.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(node("c", false)));
        assert_eq!(names(&cache), ["a", "b"]);
        writer.apply(&Event::InitDone);
        assert_eq!(names(&cache), ["c"]);
    }

    #[test]
    fn applies_replace_and_deletes_remove() {
        let (cache, mut writer) = Cache::new();
        writer.apply(&Event::Apply(node("a", false)));
        writer.apply(&Event::Apply(node("a", true)));
        assert_eq!(cache.len(), 1);
        assert!(cache.get("a").expect("a").unschedulable(), "the newer object");
        writer.apply(&Event::Delete(node("a", true)));
        writer.apply(&Event::Delete(node("never-seen", false)));
        assert!(cache.get("a").is_none() && cache.is_empty());
        // An InitApply outside a LIST is not a LIST's: ignored, never half-applied.
        writer.apply(&Event::InitApply(node("stray", false)));
        writer.apply(&Event::InitDone);
        assert!(cache.is_empty());
    }
}
