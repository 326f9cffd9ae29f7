//! The node tree at 100 000 nodes.
//!
//! `cargo bench --bench tree`. Targets (issue 9): a remount with local metadata (loading the
//! persisted tree from sled into memory) under 1 s, and the process under 200 MB RSS. The RSS a
//! loaded tree adds is printed once, before the measurements.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value};
use veilfs::tree::{Handle, Node, NodeKind, Tree, TreeStore};

const NODES: u64 = 100_000;
const FOLDERS: u64 = 2_000;
const KEY: [u8; 32] = [9; 32];

/// A plausible account: 2 000 folders (some nested), 98 000 files with attributes like MEGA's
/// (`n` name, `c` fingerprint), a 32-byte key each, and a sprinkling of duplicate names.
fn account() -> Vec<Node> {
    let mut nodes = Vec::with_capacity(NODES as usize);
    let node = |h: u64, parent: Option<u64>, kind, name: String| {
        let mut attrs = Map::new();
        attrs.insert("n".into(), Value::String(name.clone()));
        attrs.insert(
            "c".into(),
            Value::String("AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEf".into()),
        );
        Node {
            handle: Handle::from_u64(h),
            parent: parent.map(Handle::from_u64),
            kind,
            name,
            size: h * 1000,
            mtime_ns: 1_700_000_000_000_000_000 + h as i64,
            created: 1_700_000_000 + h as i64,
            mode: None,
            symlink: None,
            key: vec![h as u8; 32],
            attrs,
        }
    };
    nodes.push(node(1, None, NodeKind::Root, "Cloud Drive".into()));
    for f in 0..FOLDERS {
        let parent = if f < 100 { 1 } else { 10 + f % 100 };
        nodes.push(node(
            10 + f,
            Some(parent),
            NodeKind::Folder,
            format!("folder {f}"),
        ));
    }
    for i in 0..NODES - FOLDERS - 1 {
        let parent = 10 + i % FOLDERS;
        // One name in 50 repeats another in the same folder.
        let name = if i % 50 == 0 {
            "IMG_0001.JPG".to_string()
        } else {
            format!("IMG_{i:06}.JPG")
        };
        nodes.push(node(10 + FOLDERS + i, Some(parent), NodeKind::File, name));
    }
    nodes
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn load(path: &Path) -> Tree {
    Tree::open(TreeStore::open(path, &KEY).expect("store opens")).expect("tree loads")
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut tree = load(dir.path());
        tree.apply_snapshot(account(), Some("seq"))
            .expect("snapshot applies");
        tree.store().expect("store").flush().expect("flush");
    }
    let before = rss_kib();
    let tree = load(dir.path());
    assert_eq!(tree.len() as u64, NODES);
    eprintln!(
        "tree: {} nodes loaded; RSS {} MiB before, {} MiB after (+{} MiB)",
        tree.len(),
        before / 1024,
        rss_kib() / 1024,
        rss_kib().saturating_sub(before) / 1024
    );
    drop(tree);

    let mut group = c.benchmark_group("tree");
    group.sample_size(10);
    group.bench_function("load_100k_from_sled", |b| {
        b.iter(|| black_box(load(dir.path())))
    });
    let nodes = account();
    group.bench_function("snapshot_100k_in_memory", |b| {
        b.iter(|| {
            let mut t = Tree::new();
            t.apply_snapshot(nodes.iter().cloned(), None)
                .expect("in-memory snapshot");
            black_box(t)
        })
    });
    group.finish();
}

criterion_group!(tree_benches, benches);
criterion_main!(tree_benches);
