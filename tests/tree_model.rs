//! The tree against a plain reference model: random batches of changes, full snapshots,
//! lookups and forgets, and (with a store) remounts. After every step the tree must agree with
//! the model on every node, name, parent and listing, keep inode numbers stable, and report
//! every kernel-visible name whose meaning changed.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use serde_json::{Map, Value};
use veilfs::tree::names::{assign_local_names, local_base};
use veilfs::tree::{
    Change, FileType, Handle, Invalidation, Node, NodeKind, ROOT_INO, Tree, TreeStore,
};

const ROOT: u64 = 1000;
const MISSING: u64 = 77;
const N: u64 = 12;
const NAMES: &[&str] = &[
    "a",
    "a.txt",
    "a (2).txt",
    "a (3).txt",
    "b",
    "x/y",
    "x∕y",
    ".",
    "",
    "‛",
];
const STORE_KEY: [u8; 32] = [7; 32];

fn kind_of(h: u64) -> NodeKind {
    match h {
        ROOT => NodeKind::Root,
        h if h % 2 == 1 => NodeKind::Folder,
        _ => NodeKind::File,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        h: u64,
        parent: u64,
        name: usize,
        created: i64,
        size: u64,
    },
    Move {
        h: u64,
        parent: u64,
    },
    Delete {
        h: u64,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<Op>),
    Snapshot(Vec<Op>, u64),
    Lookup(u64),
    Forget(usize, u64),
    Reopen,
}

fn parent_choice() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(ROOT),
        4 => (0..N / 2).prop_map(|i| 2 * i + 1),
        1 => Just(MISSING),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=N, parent_choice(), 0..NAMES.len(), 0..3i64, 0..4u64).prop_map(
            |(h, parent, name, created, size)| Op::Upsert { h, parent, name, created, size }
        ),
        2 => (1..=N, parent_choice()).prop_map(|(h, parent)| Op::Move { h, parent }),
        2 => (1..=N).prop_map(|h| Op::Delete { h }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(op(), 1..5).prop_map(Step::Batch),
        1 => (prop::collection::vec(op(), 0..6), any::<u64>()).prop_map(|(o, s)| Step::Snapshot(o, s)),
        3 => (1..=N).prop_map(Step::Lookup),
        2 => (0..8usize, 1..3u64).prop_map(|(i, n)| Step::Forget(i, n)),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct MNode {
    parent: Option<u64>,
    name: String,
    created: i64,
    size: u64,
}

#[derive(Default)]
struct Model {
    nodes: BTreeMap<u64, MNode>,
}

impl Model {
    fn is_descendant_or_self(&self, x: u64, of: u64) -> bool {
        let mut p = Some(x);
        for _ in 0..=self.nodes.len() + 1 {
            match p {
                Some(q) if q == of => return true,
                Some(q) => p = self.nodes.get(&q).and_then(|n| n.parent),
                None => return false,
            }
        }
        true
    }

    /// Applies `op` if it is something a sane server can send (no cycles); returns the change.
    fn apply(&mut self, op: &Op) -> Option<Change> {
        match *op {
            Op::Upsert {
                h,
                parent,
                name,
                created,
                size,
            } => {
                if kind_of(h).is_dir() && self.is_descendant_or_self(parent, h) {
                    return None;
                }
                let n = MNode {
                    parent: Some(parent),
                    name: NAMES[name].to_owned(),
                    created,
                    size,
                };
                let node = to_node(h, &n);
                self.nodes.insert(h, n);
                Some(Change::Upsert(node))
            }
            Op::Move { h, parent } => {
                if kind_of(h).is_dir() && self.is_descendant_or_self(parent, h) {
                    return None;
                }
                if let Some(n) = self.nodes.get_mut(&h) {
                    n.parent = Some(parent);
                }
                Some(Change::Move {
                    handle: Handle::from_u64(h),
                    parent: Handle::from_u64(parent),
                })
            }
            Op::Delete { h } => {
                if self.nodes.contains_key(&h) {
                    let doomed: Vec<u64> = self
                        .nodes
                        .keys()
                        .copied()
                        .filter(|&x| self.is_descendant_or_self(x, h))
                        .collect();
                    for x in doomed {
                        self.nodes.remove(&x);
                    }
                }
                Some(Change::Delete(Handle::from_u64(h)))
            }
        }
    }

    fn reachable(&self, h: u64) -> bool {
        self.is_descendant_or_self(h, ROOT) && self.nodes.contains_key(&h)
    }

    fn children(&self, folder: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.parent == Some(folder))
            .map(|(h, _)| *h)
            .collect()
    }
}

fn to_node(h: u64, n: &MNode) -> Node {
    let mut attrs = Map::new();
    attrs.insert("n".into(), Value::String(n.name.clone()));
    Node {
        handle: Handle::from_u64(h),
        parent: n.parent.map(Handle::from_u64),
        kind: kind_of(h),
        name: n.name.clone(),
        size: n.size,
        mtime_ns: n.size as i64 * 1_000_000_007,
        created: n.created,
        mode: h.is_multiple_of(3).then_some(0o640),
        symlink: (h == 4).then(|| "../target".to_owned()),
        key: vec![h as u8; 16],
        attrs,
    }
}

fn root_node() -> MNode {
    MNode {
        parent: None,
        name: "Cloud Drive".into(),
        created: 0,
        size: 0,
    }
}

/// Every name in the given folders: (folder inode, local name) → child inode.
fn visible(tree: &Tree, dirs: impl IntoIterator<Item = u64>) -> HashMap<(u64, String), u64> {
    let mut out = HashMap::new();
    for dir in dirs {
        let Ok(entries) = tree.readdir(dir, 2) else {
            continue;
        };
        for e in entries {
            out.insert((dir, e.name.to_owned()), e.ino);
        }
    }
    out
}

/// Names before a batch, folders before it, sizes before it, and what the batch invalidated.
type BatchOutcome = (
    HashMap<(u64, String), u64>,
    Vec<u64>,
    HashMap<u64, u64>,
    Vec<Invalidation>,
);

struct Harness {
    model: Model,
    tree: Option<Tree>,
    dir: Option<tempfile::TempDir>,
    inos: HashMap<u64, u64>,
    /// Kernel references we hold, by inode.
    refs: BTreeMap<u64, u64>,
    seq: u64,
}

impl Harness {
    fn new(persistent: bool) -> Self {
        let dir = persistent.then(|| tempfile::tempdir().unwrap());
        let tree = match &dir {
            Some(d) => Tree::open(TreeStore::open(d.path(), &STORE_KEY).unwrap()).unwrap(),
            None => Tree::new(),
        };
        let mut h = Harness {
            model: Model::default(),
            tree: Some(tree),
            dir,
            inos: HashMap::new(),
            refs: BTreeMap::new(),
            seq: 0,
        };
        h.model.nodes.insert(ROOT, root_node());
        let root = to_node(ROOT, &root_node());
        h.tree().apply_snapshot([root], Some("0")).unwrap();
        h.check(None);
        h
    }

    fn tree(&mut self) -> &mut Tree {
        self.tree.as_mut().unwrap()
    }

    fn run(&mut self, step: &Step) {
        match step {
            Step::Batch(ops) => {
                self.seq += 1;
                let seq = self.seq.to_string();
                let dirs_before = self.live_dirs();
                let before = visible(self.tree.as_ref().unwrap(), dirs_before.clone());
                let sizes = self.sizes();
                let changes: Vec<Change> = ops.iter().filter_map(|o| self.model.apply(o)).collect();
                let inval = self.tree().apply_changes(changes, Some(&seq)).unwrap();
                self.check(Some((before, dirs_before, sizes, inval)));
            }
            Step::Snapshot(ops, order) => {
                self.seq += 1;
                let seq = self.seq.to_string();
                for o in ops {
                    self.model.apply(o);
                }
                let mut nodes: Vec<Node> = self
                    .model
                    .nodes
                    .iter()
                    .map(|(h, n)| to_node(*h, n))
                    .collect();
                nodes.sort_by_key(|n| n.handle.as_u64().wrapping_mul(*order | 1));
                let dirs_before = self.live_dirs();
                let before = visible(self.tree.as_ref().unwrap(), dirs_before.clone());
                let sizes = self.sizes();
                let inval = self.tree().apply_snapshot(nodes, Some(&seq)).unwrap();
                self.check(Some((before, dirs_before, sizes, inval)));
            }
            Step::Lookup(h) => {
                let tree = self.tree.as_ref().unwrap();
                let Some(ino) = tree.ino_of(Handle::from_u64(*h)) else {
                    return;
                };
                let Some(parent) = tree.parent_of(ino) else {
                    return;
                };
                let name = tree.local_name(ino).unwrap().to_owned();
                let attr = tree.lookup(parent, &name).expect("visible child resolves");
                assert_eq!(attr.ino, ino);
                *self.refs.entry(ino).or_default() += 1;
            }
            Step::Forget(i, n) => {
                let Some((&ino, _)) = self.refs.iter().nth(*i % self.refs.len().max(1)) else {
                    return;
                };
                self.tree().forget(ino, *n);
                let left = self.refs[&ino].saturating_sub(*n);
                if left == 0 {
                    self.refs.remove(&ino);
                    let live = self.inos.values().any(|&i| i == ino);
                    assert_eq!(
                        self.tree.as_ref().unwrap().getattr(ino).is_some(),
                        live,
                        "a forgotten inode lives exactly as long as its node"
                    );
                } else {
                    self.refs.insert(ino, left);
                }
            }
            Step::Reopen => {
                let Some(dir) = &self.dir else {
                    return;
                };
                let path = dir.path().to_owned();
                let tree = self.tree.take().unwrap();
                let saved = dump(&tree);
                let seq = tree.seq().map(str::to_owned);
                drop(tree);
                let tree = Tree::open(TreeStore::open(&path, &STORE_KEY).unwrap()).unwrap();
                assert_eq!(tree.seq().map(str::to_owned), seq);
                assert_eq!(dump(&tree), saved, "reloaded tree differs");
                self.tree = Some(tree);
                // The kernel's references do not survive an unmount.
                self.refs.clear();
                self.check(None);
            }
        }
    }

    fn live_dirs(&self) -> Vec<u64> {
        self.inos
            .iter()
            .filter(|(h, _)| kind_of(**h).is_dir())
            .map(|(_, i)| *i)
            .collect()
    }

    fn sizes(&self) -> HashMap<u64, u64> {
        let tree = self.tree.as_ref().unwrap();
        self.inos
            .values()
            .filter_map(|&ino| Some((ino, tree.getattr(ino)?.size)))
            .collect()
    }

    fn check(&mut self, batch: Option<BatchOutcome>) {
        let tree = self.tree.as_ref().unwrap();
        let model = &self.model;
        assert_eq!(tree.seq(), Some(self.seq.to_string().as_str()));
        assert_eq!(tree.len(), model.nodes.len());
        self.inos.retain(|h, _| model.nodes.contains_key(h));
        for (&h, n) in &model.nodes {
            let ino = tree
                .ino_of(Handle::from_u64(h))
                .expect("every node has an inode");
            let prev = *self.inos.entry(h).or_insert(ino);
            assert_eq!(prev, ino, "inode of {h} changed");
            if h == ROOT {
                assert_eq!(ino, ROOT_INO);
            }
            let got = tree.node(ino).unwrap();
            assert_eq!(got, to_node(h, n));
            let attr = tree.getattr(ino).unwrap();
            assert_eq!(
                (attr.size, attr.handle, attr.kind),
                (n.size, Handle::from_u64(h), kind_of(h))
            );
            assert_eq!(attr.file_type == FileType::Symlink, h == 4);

            let parent_ino = n
                .parent
                .and_then(|p| model.nodes.get(&p))
                .map(|_| self.inos_of(tree, n.parent.unwrap()));
            assert_eq!(tree.parent_of(ino), parent_ino, "parent of {h}");
            let mut p = Some(ino);
            let mut tree_reach = false;
            for _ in 0..=model.nodes.len() {
                match p {
                    Some(ROOT_INO) => {
                        tree_reach = true;
                        break;
                    }
                    Some(q) => p = tree.parent_of(q),
                    None => break,
                }
            }
            assert_eq!(tree_reach, model.reachable(h), "reachability of {h}");
        }
        for (&h, _) in model.nodes.iter().filter(|(h, _)| kind_of(**h).is_dir()) {
            let dir = self.inos[&h];
            let kids = model.children(h);
            let bases: Vec<String> = kids
                .iter()
                .map(|k| local_base(&model.nodes[k].name).into_owned())
                .collect();
            let keyed: Vec<((i64, Handle), &str)> = kids
                .iter()
                .zip(&bases)
                .map(|(k, b)| ((model.nodes[k].created, Handle::from_u64(*k)), b.as_str()))
                .collect();
            let assigned = assign_local_names(&keyed);
            let mut expected = HashSet::new();
            for ((k, base), a) in kids.iter().zip(&bases).zip(&assigned) {
                let name = a.as_deref().unwrap_or(base);
                let ino = self.inos[k];
                assert_eq!(tree.local_name(ino), Some(name), "name of {k}");
                assert_eq!(tree.peek(dir, name), Some(ino));
                expected.insert((ino, name.to_owned()));
            }
            assert_eq!(tree.child_count(dir), Some(kids.len()));
            let listing: Vec<_> = tree.readdir(dir, 0).unwrap().collect();
            assert_eq!(listing[0].name, ".");
            assert_eq!(listing[0].ino, dir);
            assert_eq!(listing[1].name, "..");
            assert_eq!(listing[1].ino, tree.parent_of(dir).unwrap_or(dir));
            let got: HashSet<(u64, String)> = listing[2..]
                .iter()
                .map(|e| (e.ino, e.name.to_owned()))
                .collect();
            assert_eq!(got.len(), listing.len() - 2, "listing has duplicates");
            assert_eq!(got, expected);
            for w in listing.windows(2) {
                assert!(w[0].offset < w[1].offset, "offsets increase");
            }
            for (i, e) in listing.iter().enumerate() {
                let rest: Vec<_> = tree.readdir(dir, e.offset).unwrap().collect();
                assert_eq!(rest, listing[i + 1..], "resume after offset {}", e.offset);
            }
        }
        for (&ino, &count) in &self.refs {
            assert_eq!(tree.lookup_count(ino), count);
            assert!(
                tree.getattr(ino).is_some(),
                "held inode {ino} must answer getattr"
            );
        }
        if let Some((before, dirs_before, sizes, inval)) = batch {
            let after = visible(tree, self.live_dirs());
            let inval: HashSet<Invalidation> = inval.into_iter().collect();
            let live_dirs: HashSet<u64> = self
                .inos
                .iter()
                .filter(|(h, _)| kind_of(**h).is_dir())
                .map(|(_, i)| *i)
                .collect();
            let seen_dirs: HashSet<u64> = dirs_before.into_iter().collect();
            let keys: HashSet<&(u64, String)> = before.keys().chain(after.keys()).collect();
            for key in keys {
                if before.get(key) != after.get(key)
                    && live_dirs.contains(&key.0)
                    && seen_dirs.contains(&key.0)
                {
                    let want = Invalidation::Entry {
                        parent: key.0,
                        name: key.1.clone(),
                    };
                    assert!(inval.contains(&want), "missing {want:?}");
                }
            }
            for (ino, size) in sizes {
                if tree.getattr(ino).is_some_and(|a| a.size != size)
                    && self.inos.values().any(|&i| i == ino)
                {
                    assert!(
                        inval.contains(&Invalidation::Inode(ino)),
                        "missing inode {ino}"
                    );
                }
            }
        }
    }

    fn inos_of(&self, tree: &Tree, h: u64) -> u64 {
        tree.ino_of(Handle::from_u64(h)).unwrap()
    }
}

fn dump(tree: &Tree) -> BTreeMap<u64, (u64, Option<u64>, String, Node)> {
    let mut out = BTreeMap::new();
    for h in (1..=N).chain([ROOT]) {
        if let Some(ino) = tree.ino_of(Handle::from_u64(h)) {
            out.insert(
                h,
                (
                    ino,
                    tree.parent_of(ino),
                    tree.local_name(ino).unwrap().to_owned(),
                    tree.node(ino).unwrap(),
                ),
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn tree_matches_the_model(steps in prop::collection::vec(step(), 1..40)) {
        let mut h = Harness::new(false);
        for s in &steps {
            h.run(s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn persisted_tree_matches_the_model_across_remounts(
        steps in prop::collection::vec(step(), 1..30),
    ) {
        let mut h = Harness::new(true);
        for s in &steps {
            h.run(s);
        }
        h.run(&Step::Reopen);
    }
}
