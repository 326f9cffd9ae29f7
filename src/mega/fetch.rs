//! Reading `f` as it arrives, and telling when a folder's listing is complete.
//!
//! A big account's `f` answer is tens of megabytes. [`StreamedFetch`] parses it on the
//! blocking thread of [`ApiClient::call_streamed`](super::api::ApiClient::call_streamed) and
//! hands each node over as soon as it is parsed, so it can be decrypted and shown while the
//! rest is still on its way — also over a slow link, where waiting to fill a batch would hold
//! back what already arrived.
//!
//! MEGA lists nodes in no promised order, so in general a folder's children are only known
//! when the whole answer is in. `veilfs serve` promises more (`veilfs_groups`, ahead of `f`):
//! nodes breadth first, each folder's children contiguous, the folders' groups in the order
//! the folders themselves appeared. [`Groups`] turns that promise into "this folder is
//! complete" as soon as the next group starts — and a folder listed before the folder whose
//! group starts now, with no group of its own, is complete and empty.

use std::collections::VecDeque;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokio::sync::mpsc;

use super::wire::{self, ShareKey, WireNode};

/// What the parser hands over, in answer order.
#[derive(Debug)]
pub enum FetchEvent {
    /// The server promises the breadth-first, grouped order (see the module doc).
    Grouped,
    /// `ok`: outgoing share keys.
    ShareKeys(Vec<ShareKey>),
    /// The next node of `f`.
    Node(Box<WireNode>),
}

/// Parses the answer to `f`, sending its parts to `events` as they are read; its value is
/// `sn`. Stops with an error when the receiver is gone.
pub struct StreamedFetch {
    pub events: mpsc::Sender<FetchEvent>,
}

impl StreamedFetch {
    fn send<E: de::Error>(&self, event: FetchEvent) -> Result<(), E> {
        self.events
            .blocking_send(event)
            .map_err(|_| E::custom("the reader of f stopped"))
    }
}

impl<'de> DeserializeSeed<'de> for StreamedFetch {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StreamedFetch {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the answer to f")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut sn = None;
        let mut saw_f = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "veilfs_groups" => {
                    let grouped = map.next_value::<i64>()? == 1;
                    // Too late once nodes have come: they were not read as grouped.
                    if grouped && !saw_f {
                        self.send(FetchEvent::Grouped)?;
                    }
                }
                "ok" => {
                    let keys = map.next_value::<Option<Vec<ShareKey>>>()?;
                    self.send(FetchEvent::ShareKeys(keys.unwrap_or_default()))?;
                }
                "f" => {
                    saw_f = true;
                    map.next_value_seed(Nodes(&self))?;
                }
                "sn" => sn = map.next_value::<Option<String>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !saw_f {
            return Err(de::Error::missing_field("f"));
        }
        Ok(sn)
    }
}

/// The `f` array, sent on node by node.
struct Nodes<'a>(&'a StreamedFetch);

impl<'de> DeserializeSeed<'de> for Nodes<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Nodes<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of nodes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(node) = seq.next_element::<WireNode>()? {
            self.0.send(FetchEvent::Node(Box::new(node)))?;
        }
        Ok(())
    }
}

/// Follows a grouped `f` (see the module doc) and tells which folders are complete.
#[derive(Debug, Default)]
pub struct Groups {
    /// Folders listed whose group has not started, in the order they were listed.
    waiting: VecDeque<String>,
    /// The parent of the group being read (`""` for the top-level nodes).
    current: Option<String>,
    /// The order was broken: nothing more is complete before the end.
    broken: bool,
}

impl Groups {
    /// Takes the next node in answer order; pushes to `complete` the folders whose listing
    /// it shows complete.
    pub fn next(&mut self, node: &WireNode, complete: &mut Vec<String>) {
        if self.broken {
            return;
        }
        if self.current.as_deref() != Some(node.p.as_str()) {
            // Where the new group's folder was listed; top-level nodes come first, together.
            let listed = if node.p.is_empty() {
                self.current.is_none().then_some(0)
            } else {
                self.waiting.iter().position(|f| *f == node.p)
            };
            let Some(at) = listed else {
                // A group for a folder not listed, or out of turn: the promise does not hold.
                // What was declared complete stays true; the rest waits for the end.
                tracing::debug!(parent = %node.p, "f is not grouped as promised");
                self.broken = true;
                return;
            };
            if let Some(done) = self.current.take()
                && !done.is_empty()
            {
                complete.push(done);
            }
            // Folders listed before this one have no group of their own: they are empty.
            complete.extend(self.waiting.drain(..at));
            if !node.p.is_empty() {
                self.waiting.pop_front();
            }
            self.current = Some(node.p.clone());
        }
        if node.t != wire::NODE_FILE {
            self.waiting.push_back(node.h.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(h: &str, p: &str, t: i64) -> WireNode {
        WireNode {
            h: h.into(),
            p: p.into(),
            u: String::new(),
            t,
            a: String::new(),
            k: String::new(),
            s: None,
            ts: 0,
            fa: None,
            su: None,
            sk: None,
            r: None,
        }
    }

    /// Feeds `nodes` and returns, after each, the folders it showed complete.
    fn run(nodes: &[WireNode]) -> Vec<Vec<String>> {
        let mut groups = Groups::default();
        nodes
            .iter()
            .map(|n| {
                let mut done = Vec::new();
                groups.next(n, &mut done);
                done
            })
            .collect()
    }

    #[test]
    fn a_folder_is_complete_when_the_next_group_starts_and_unlisted_ones_are_empty() {
        let nodes = [
            node("ROOT", "", wire::NODE_ROOT),
            node("BIN", "", wire::NODE_RUBBISH),
            node("A", "ROOT", wire::NODE_FOLDER),
            node("B", "ROOT", wire::NODE_FOLDER),
            node("f1", "ROOT", wire::NODE_FILE),
            // BIN has no group: complete (empty) when A's group starts.
            node("A1", "A", wire::NODE_FOLDER),
            node("f2", "A", wire::NODE_FILE),
            node("f3", "B", wire::NODE_FILE),
            node("f4", "A1", wire::NODE_FILE),
        ];
        let done = run(&nodes);
        let none: Vec<String> = Vec::new();
        assert_eq!(done[0], none);
        assert_eq!(done[1], none);
        assert_eq!(
            done[2], none,
            "the top-level group says nothing of ROOT yet"
        );
        assert_eq!(done[4], none);
        assert_eq!(done[5], vec!["ROOT", "BIN"]);
        assert_eq!(done[7], vec!["A"]);
        assert_eq!(done[8], vec!["B"]);
    }

    #[test]
    fn a_group_out_of_order_stops_every_claim_until_the_end() {
        let nodes = [
            node("ROOT", "", wire::NODE_ROOT),
            node("A", "ROOT", wire::NODE_FOLDER),
            node("B", "ROOT", wire::NODE_FOLDER),
            node("b1", "B", wire::NODE_FILE),
            // A's group after B's: A was declared empty when B's group started, so this
            // node breaks the promise and nothing more is claimed.
            node("a1", "A", wire::NODE_FILE),
            node("b2", "B", wire::NODE_FILE),
            node("c", "ROOT", wire::NODE_FILE),
        ];
        let done = run(&nodes);
        assert_eq!(done[3], vec!["ROOT", "A"]);
        assert!(done[4..].iter().all(Vec::is_empty), "{done:?}");
    }

    #[test]
    fn top_level_nodes_after_a_group_break_the_promise() {
        let nodes = [
            node("ROOT", "", wire::NODE_ROOT),
            node("a", "ROOT", wire::NODE_FILE),
            node("BIN", "", wire::NODE_RUBBISH),
            node("x", "BIN", wire::NODE_FILE),
            node("y", "ROOT", wire::NODE_FILE),
        ];
        let done = run(&nodes);
        assert!(done.iter().all(Vec::is_empty), "{done:?}");
    }

    #[test]
    fn streamed_fetch_sends_parts_in_order_and_returns_sn() {
        let (tx, mut rx) = mpsc::channel(1024);
        let mut body = String::from(r#"{"veilfs_groups":1,"ok":[],"f":["#);
        for i in 0..300 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(r#"{{"h":"h{i:07}","p":"","t":1,"zz":[1]}}"#));
        }
        body.push_str(r#"],"sn":"SEQ","u":[]}"#);
        let seed = StreamedFetch { events: tx };
        let parser = std::thread::spawn(move || {
            let mut de = serde_json::Deserializer::from_str(&body);
            seed.deserialize(&mut de).map_err(|e| e.to_string())
        });
        assert_eq!(parser.join().unwrap(), Ok(Some("SEQ".to_string())));
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert!(matches!(events[0], FetchEvent::Grouped));
        assert!(matches!(&events[1], FetchEvent::ShareKeys(k) if k.is_empty()));
        assert_eq!(events.len(), 302);
        for (i, event) in events[2..].iter().enumerate() {
            assert!(matches!(event, FetchEvent::Node(n) if n.h == format!("h{i:07}")));
        }
    }

    #[test]
    fn a_promise_after_the_nodes_is_not_taken() {
        let (tx, mut rx) = mpsc::channel(8);
        let body = r#"{"f":[{"h":"AAAAAAAA","t":2}],"veilfs_groups":1}"#;
        let mut de = serde_json::Deserializer::from_str(body);
        let sn = StreamedFetch { events: tx }.deserialize(&mut de).unwrap();
        assert_eq!(sn, None);
        assert!(matches!(rx.try_recv(), Ok(FetchEvent::Node(_))));
        assert!(rx.try_recv().is_err(), "no Grouped event after the nodes");
    }
}
