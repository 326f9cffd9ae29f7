//! An account's tree as the shell commands see it: fetched once per command (`f`), addressed by
//! `/`-separated paths from the Cloud Drive root, and kept current with what the command itself
//! changes. The mount's persistent tree is not used: a one-shot command must not contend for
//! its store, and one `f` is cheap next to a transfer.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::mega::client::MegaClient;
use crate::mega::nodes::NodeKey;
use crate::mega::remote::to_tree_node;
use crate::mega::wire;
use crate::tree::{Handle, Node, NodeKind};

/// The nodes of one tree (an account's, or a public folder's), by handle and by parent.
pub struct Index {
    nodes: HashMap<Handle, Node>,
    children: HashMap<Handle, Vec<Handle>>,
    root: Handle,
}

/// An account's tree and the client that changes it.
pub struct Drive {
    pub client: MegaClient,
    pub index: Index,
}

impl std::ops::Deref for Drive {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.index
    }
}

impl std::ops::DerefMut for Drive {
    fn deref_mut(&mut self) -> &mut Index {
        &mut self.index
    }
}

/// `"/a/b/c"` → `("/a/b", "c")`; the root has no name.
pub fn split_parent(path: &str) -> (String, Option<String>) {
    let parts = components(path);
    match parts.split_last() {
        None => ("/".into(), None),
        Some((last, rest)) => (format!("/{}", rest.join("/")), Some(last.clone())),
    }
}

/// The names along a remote path: empty parts and `.` dropped, `..` climbs.
pub fn components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            name => out.push(name.to_string()),
        }
    }
    out
}

impl Drive {
    pub async fn load(client: MegaClient) -> anyhow::Result<Self> {
        let (list, _) = client
            .fetch_tree_map(to_tree_node)
            .await
            .context("fetching the tree")?;
        let root = list
            .iter()
            .find(|n| n.kind == NodeKind::Root)
            .map(|n| n.handle)
            .context("the account has no Cloud Drive root")?;
        Ok(Drive {
            client,
            index: Index::new(list, root),
        })
    }
}

impl Index {
    pub fn new(list: Vec<Node>, root: Handle) -> Self {
        let mut index = Index {
            nodes: HashMap::new(),
            children: HashMap::new(),
            root,
        };
        for node in list {
            index.insert(node);
        }
        index
    }

    pub fn root(&self) -> &Node {
        &self.nodes[&self.root]
    }

    pub fn node(&self, handle: Handle) -> &Node {
        &self.nodes[&handle]
    }

    /// Children sorted by name (then age, for duplicates).
    pub fn children(&self, handle: Handle) -> Vec<&Node> {
        let mut kids: Vec<&Node> = self
            .children
            .get(&handle)
            .map(|k| k.iter().filter_map(|h| self.nodes.get(h)).collect())
            .unwrap_or_default();
        kids.sort_by(|a, b| (&a.name, a.created).cmp(&(&b.name, b.created)));
        kids
    }

    /// The oldest child named `name` (the one the mount shows under its plain name).
    pub fn child(&self, parent: Handle, name: &str) -> Option<&Node> {
        self.children(parent).into_iter().find(|n| n.name == name)
    }

    pub fn resolve(&self, path: &str) -> Option<&Node> {
        let mut node = self.root();
        for name in components(path) {
            node = self.child(node.handle, &name)?;
        }
        Some(node)
    }

    /// The node at `path`, or a clear error.
    pub fn get(&self, path: &str) -> anyhow::Result<&Node> {
        self.resolve(path)
            .with_context(|| format!("{path}: no such file or folder"))
    }

    /// The folder at `path`, or a clear error.
    pub fn folder(&self, path: &str) -> anyhow::Result<&Node> {
        let node = self.get(path)?;
        if node.kind == NodeKind::File {
            bail!("{path}: not a folder");
        }
        Ok(node)
    }

    pub fn path_of(&self, handle: Handle) -> String {
        let mut names = Vec::new();
        let mut at = handle;
        while at != self.root {
            let Some(node) = self.nodes.get(&at) else {
                break;
            };
            names.push(node.name.clone());
            match node.parent {
                Some(p) => at = p,
                None => break,
            }
        }
        names.reverse();
        format!("/{}", names.join("/"))
    }

    pub fn insert(&mut self, node: Node) {
        if let Some(old) = self.nodes.get(&node.handle)
            && let Some(p) = old.parent
            && let Some(kids) = self.children.get_mut(&p)
        {
            kids.retain(|h| *h != node.handle);
        }
        if let Some(p) = node.parent {
            self.children.entry(p).or_default().push(node.handle);
        }
        self.nodes.insert(node.handle, node);
    }

    pub fn remove(&mut self, handle: Handle) {
        if let Some(node) = self.nodes.remove(&handle)
            && let Some(p) = node.parent
            && let Some(kids) = self.children.get_mut(&p)
        {
            kids.retain(|h| *h != handle);
        }
        for kid in self.children.remove(&handle).unwrap_or_default() {
            self.remove(kid);
        }
    }
}

impl Drive {
    /// Creates folder `name` under `parent`.
    pub async fn mkdir(&mut self, parent: Handle, name: &str) -> anyhow::Result<Node> {
        let mut attrs = Map::new();
        attrs.insert("n".into(), json!(name));
        let node = self
            .client
            .mkdir(&mega(parent)?, &attrs)
            .await
            .with_context(|| format!("creating folder {name}"))?;
        let node = to_tree_node(node).context("the new folder has no handle")?;
        self.insert(node.clone());
        Ok(node)
    }

    /// The folder at `path`, created with its missing parents.
    pub async fn mkdir_p(&mut self, path: &str) -> anyhow::Result<Node> {
        let mut at = self.root().clone();
        for name in components(path) {
            at = match self.child(at.handle, &name) {
                Some(n) if n.kind == NodeKind::File => {
                    bail!("{}: a file is in the way", self.path_of(n.handle))
                }
                Some(n) => n.clone(),
                None => self.mkdir(at.handle, &name).await?,
            };
        }
        Ok(at)
    }

    /// Renames a node within its folder, keeping its other attributes.
    pub async fn rename(&mut self, handle: Handle, name: &str) -> anyhow::Result<()> {
        let mut node = self.node(handle).clone();
        let key = node_key(&node)?;
        let mut attrs: Map<String, Value> = node.attrs.clone();
        attrs.insert("n".into(), json!(name));
        self.client
            .set_attributes(&mega(handle)?, &key, &attrs)
            .await
            .context("renaming")?;
        node.name = name.to_string();
        node.attrs = attrs;
        self.insert(node);
        Ok(())
    }

    pub async fn move_to(&mut self, handle: Handle, parent: Handle) -> anyhow::Result<()> {
        self.client
            .move_node(&mega(handle)?, &mega(parent)?)
            .await
            .context("moving")?;
        let mut node = self.node(handle).clone();
        node.parent = Some(parent);
        self.insert(node);
        Ok(())
    }

    pub async fn delete(&mut self, handle: Handle) -> anyhow::Result<()> {
        self.client
            .delete(&mega(handle)?)
            .await
            .context("deleting")?;
        self.remove(handle);
        Ok(())
    }
}

pub fn mega(handle: Handle) -> anyhow::Result<String> {
    handle
        .to_mega()
        .with_context(|| format!("{handle:?} is not a MEGA handle"))
}

/// The node's key, or a clear error for a node whose key the account does not hold.
pub fn node_key(node: &Node) -> anyhow::Result<NodeKey> {
    if node.key.is_empty() {
        bail!("{}: the account holds no key for this node", node.name);
    }
    let t = if node.kind == NodeKind::File {
        wire::NODE_FILE
    } else {
        wire::NODE_FOLDER
    };
    Ok(NodeKey::from_bytes(t, &node.key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_names() {
        assert_eq!(components("/a//b/./c/"), vec!["a", "b", "c"]);
        assert_eq!(components("a/../b"), vec!["b"]);
        assert!(components("/").is_empty());
        assert_eq!(split_parent("/a/b"), ("/a".into(), Some("b".into())));
        assert_eq!(split_parent("b"), ("/".into(), Some("b".into())));
        assert_eq!(split_parent("/"), ("/".into(), None));
    }
}
