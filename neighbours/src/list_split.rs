//! Splits a Kubernetes List response (`{"kind": .., "metadata": {..}, "items": [..]}`) into
//! its items' bytes while the body arrives, so a LIST of 5,000 cloud Nodes (50 MiB of JSON)
//! never sits in memory whole: kube-rs buffers the body and copies it twice before decoding
//! it, and that was an agent's whole peak. Pure: bytes in, item slices out; the I/O is in
//! [`crate::listwatch`].

/// Largest item accepted, bytes: etcd refuses objects over 1.5 MiB, so a bigger item is a
/// broken or hostile response, not a Node or a Pod.
pub const MAX_ITEM_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of a top-level key kept: enough to tell `items` and `metadata` from any other key,
/// so a hostile key of any length costs nothing.
const KEY_BYTES_KEPT: usize = 16;

/// Why a body is not a List this splitter can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListSplitError {
    /// An item (or a watch event) over [`MAX_ITEM_BYTES`].
    #[error("an object in the response is over {MAX_ITEM_BYTES} bytes")]
    ItemTooLarge,
    /// The body ended inside the top-level object, or had no object at all.
    #[error("the list response ended early (truncated or not a JSON object)")]
    Truncated,
    /// An element of `items` that is not an object, or bytes after the top-level object.
    #[error("the list response is not a Kubernetes List: {0}")]
    NotAList(&'static str),
}

/// Where the top-level value being read is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// A value of no interest (skipped).
    Skip,
    /// The `items` array: its object elements are items.
    Items,
    /// The `metadata` object (kept for its `resourceVersion`).
    Metadata,
}

/// The splitter's state between chunks.
#[derive(Debug)]
pub struct ListSplitter {
    /// Nesting depth of objects and arrays outside strings (1 = inside the top-level object).
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1: the next string is a key.
    expect_key: bool,
    /// The key being read, or the last one read, at depth 1.
    key: Vec<u8>,
    reading_key: bool,
    capture: Capture,
    /// The item being read (inside `items`), or the metadata object.
    buf: Vec<u8>,
    in_item: bool,
    metadata: Option<Vec<u8>>,
    /// The top-level object closed.
    done: bool,
    items: usize,
}

impl Default for ListSplitter {
    fn default() -> Self {
        Self {
            depth: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key: Vec::new(),
            reading_key: false,
            capture: Capture::Skip,
            buf: Vec::new(),
            in_item: false,
            metadata: None,
            done: false,
            items: 0,
        }
    }
}

impl ListSplitter {
    /// Feeds the next bytes of the body; calls `on_item` with each complete item's bytes.
    pub fn feed(&mut self, chunk: &[u8], mut on_item: impl FnMut(&[u8])) -> Result<(), ListSplitError> {
        for &b in chunk {
            self.step(b, &mut on_item)?;
        }
        Ok(())
    }

    /// Items seen so far.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Ends the body: the top-level `metadata` object's bytes (`None` when the list had none).
    pub fn finish(self) -> Result<Option<Vec<u8>>, ListSplitError> {
        if !self.done {
            return Err(ListSplitError::Truncated);
        }
        Ok(self.metadata)
    }

    fn keep(&mut self, b: u8) -> Result<(), ListSplitError> {
        if self.in_item || (self.capture == Capture::Metadata && self.depth >= 2) {
            if self.buf.len() >= MAX_ITEM_BYTES {
                return Err(ListSplitError::ItemTooLarge);
            }
            self.buf.push(b);
        }
        Ok(())
    }

    fn step(&mut self, b: u8, on_item: &mut impl FnMut(&[u8])) -> Result<(), ListSplitError> {
        if self.done {
            return if b.is_ascii_whitespace() {
                Ok(())
            } else {
                Err(ListSplitError::NotAList("bytes after the list"))
            };
        }
        if self.in_string {
            let closing = if self.escaped {
                self.escaped = false;
                false
            } else {
                self.escaped = b == b'\\';
                b == b'"'
            };
            if closing {
                self.in_string = false;
            }
            if self.reading_key {
                // A key's closing quote is not part of it.
                if closing {
                    self.reading_key = false;
                } else if self.key.len() < KEY_BYTES_KEPT {
                    self.key.push(b);
                }
                return Ok(());
            }
            return self.keep(b);
        }
        if self.depth == 0 {
            return match b {
                b'{' => {
                    self.depth = 1;
                    self.expect_key = true;
                    Ok(())
                }
                _ if b.is_ascii_whitespace() => Ok(()),
                _ => Err(ListSplitError::NotAList("the body is not an object")),
            };
        }
        let between_items = self.depth == 2 && self.capture == Capture::Items && !self.in_item;
        if between_items && !matches!(b, b'{' | b']' | b',') && !b.is_ascii_whitespace() {
            return Err(ListSplitError::NotAList("an item that is not an object"));
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.reading_key = true;
                    self.key.clear();
                    return Ok(());
                }
                self.keep(b)
            }
            b'{' | b'[' => {
                if self.depth == 1 {
                    self.capture = match (self.key.as_slice(), b) {
                        (b"items", b'[') => Capture::Items,
                        (b"metadata", b'{') => Capture::Metadata,
                        _ => Capture::Skip,
                    };
                    if self.capture == Capture::Metadata {
                        self.buf.clear();
                    }
                }
                if between_items {
                    if b != b'{' {
                        return Err(ListSplitError::NotAList("an item that is not an object"));
                    }
                    self.in_item = true;
                    self.buf.clear();
                }
                self.depth += 1;
                self.keep(b)
            }
            b'}' | b']' => {
                self.keep(b)?;
                self.depth -= 1;
                match self.depth {
                    0 => self.done = true,
                    1 => {
                        if self.capture == Capture::Metadata {
                            self.metadata = Some(std::mem::take(&mut self.buf));
                        }
                        self.capture = Capture::Skip;
                    }
                    2 if self.in_item => {
                        self.in_item = false;
                        self.items += 1;
                        on_item(&self.buf);
                    }
                    _ => {}
                }
                Ok(())
            }
            b',' if self.depth == 1 => {
                self.expect_key = true;
                Ok(())
            }
            b':' if self.depth == 1 => {
                self.expect_key = false;
                Ok(())
            }
            _ => self.keep(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn split(body: &[u8], chunk: usize) -> Result<(Vec<Value>, Option<Value>), ListSplitError> {
        let mut s = ListSplitter::default();
        let mut items = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            s.feed(c, |b| items.push(serde_json::from_slice(b).expect("an item is valid JSON")))?;
        }
        let meta = s.finish()?.map(|m| serde_json::from_slice(&m).expect("metadata is valid JSON"));
        Ok((items, meta))
    }

    fn list(items: Vec<Value>) -> Value {
        json!({
            "kind": "NodeList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "123", "continue": ""},
            "items": items,
        })
    }

    #[test]
    fn items_and_metadata_come_out_whole_at_any_chunking() {
        let items = vec![
            json!({"metadata": {"name": "a", "labels": {"k": "v}]{["}}, "spec": {"taints": [{"key": "x"}]}}),
            json!({"metadata": {"name": "b\"quoted\\", "annotations": {"items": "[{"}}}),
            json!({}),
        ];
        let body = serde_json::to_vec_pretty(&list(items.clone())).unwrap();
        for chunk in [1, 2, 3, 7, 64, body.len()] {
            let (got, meta) = split(&body, chunk).unwrap();
            assert_eq!(got, items, "chunk {chunk}");
            assert_eq!(meta.unwrap()["resourceVersion"], "123");
        }
    }

    #[test]
    fn metadata_after_items_and_nested_items_keys_are_read_right() {
        let body = br#"{"items":[{"items":[1,2],"metadata":{"resourceVersion":"9"}}],"kind":"List","metadata":{"resourceVersion":"5"}}"#;
        let (got, meta) = split(body, 5).unwrap();
        assert_eq!(got, [json!({"items": [1, 2], "metadata": {"resourceVersion": "9"}})]);
        assert_eq!(meta.unwrap()["resourceVersion"], "5");
    }

    #[test]
    fn an_empty_list_has_no_items() {
        let (got, meta) = split(br#"{"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[]}"#, 4).unwrap();
        assert!(got.is_empty());
        assert!(meta.is_some());
        let (got, meta) = split(br#"{"kind":"PodList","items":null}"#, 4).unwrap();
        assert!(got.is_empty() && meta.is_none());
    }

    #[test]
    fn broken_bodies_are_errors() {
        let truncated = br#"{"kind":"NodeList","items":[{"metadata":{"name":"a"}"#;
        assert_eq!(split(truncated, 3), Err(ListSplitError::Truncated));
        assert_eq!(split(b"", 3), Err(ListSplitError::Truncated));
        assert!(matches!(split(b"[1,2]", 3), Err(ListSplitError::NotAList(_))));
        assert!(matches!(split(br#"{"items":[1]}"#, 3), Err(ListSplitError::NotAList(_))));
        assert!(matches!(split(br#"{"items":[]} {}"#, 3), Err(ListSplitError::NotAList(_))));
        assert!(matches!(split(br#"{"items":[]}}"#, 3), Err(ListSplitError::NotAList(_))));
    }

    #[test]
    fn long_keys_are_not_kept_and_not_mistaken() {
        let long = "metadata".repeat(1000);
        let body = format!(r#"{{"{long}":{{"resourceVersion":"1"}},"items{long}":[{{"a":1}}],"items":[{{"b":2}}]}}"#);
        let (got, meta) = split(body.as_bytes(), 7).unwrap();
        assert_eq!(got, [json!({"b": 2})]);
        assert!(meta.is_none());
    }

    #[test]
    fn an_oversized_item_is_refused() {
        let big = "x".repeat(MAX_ITEM_BYTES);
        let body = serde_json::to_vec(&list(vec![json!({ "big": big })])).unwrap();
        assert_eq!(split(&body, 1 << 16), Err(ListSplitError::ItemTooLarge));
    }

    proptest! {
        #[test]
        fn any_list_of_objects_splits_into_its_items(
            names in proptest::collection::vec("[a-z\"\\\\{}\\[\\],:]{0,12}", 0..8),
            chunk in 1usize..40,
        ) {
            let items: Vec<Value> = names.iter().map(|n| json!({"metadata": {"name": n}, "v": [n, {"k": n}]})).collect();
            let body = serde_json::to_vec(&list(items.clone())).unwrap();
            let (got, meta) = split(&body, chunk).unwrap();
            prop_assert_eq!(got, items);
            prop_assert_eq!(meta.unwrap()["resourceVersion"].clone(), json!("123"));
        }
    }
}
