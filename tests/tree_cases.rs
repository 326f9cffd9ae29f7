//! Specific tree behaviours: persistence and its encryption, lookup counts, deferred deletes,
//! cycles, orphans, readdir offsets under change, handles.

use std::path::Path;

use serde_json::Map;
use veilfs::tree::{
    Change, FileType, Handle, Invalidation, Node, NodeKind, ROOT_INO, Tree, TreeError, TreeStore,
};

const KEY: [u8; 32] = [0x42; 32];
const ROOT: Handle = Handle::from_u64(1);

fn node(h: u64, parent: u64, kind: NodeKind, name: &str, created: i64) -> Node {
    Node {
        handle: Handle::from_u64(h),
        parent: (parent != 0).then_some(Handle::from_u64(parent)),
        kind,
        name: name.to_owned(),
        size: h * 10,
        mtime_ns: 1_700_000_000_123_456_789,
        created,
        mode: None,
        symlink: None,
        key: vec![0xAB; 32],
        attrs: Map::new(),
    }
}

fn file(h: u64, parent: u64, name: &str) -> Node {
    node(h, parent, NodeKind::File, name, h as i64)
}

fn folder(h: u64, parent: u64, name: &str) -> Node {
    node(h, parent, NodeKind::Folder, name, h as i64)
}

fn root() -> Node {
    node(1, 0, NodeKind::Root, "Cloud Drive", 0)
}

fn ino(tree: &Tree, h: u64) -> u64 {
    tree.ino_of(Handle::from_u64(h)).unwrap()
}

fn names(tree: &Tree, dir: u64) -> Vec<String> {
    tree.readdir(dir, 2)
        .unwrap()
        .map(|e| e.name.to_owned())
        .collect()
}

fn open(path: &Path) -> Tree {
    Tree::open(TreeStore::open(path, &KEY).unwrap()).unwrap()
}

#[test]
fn remount_keeps_inodes_and_sequence_and_stores_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let secret_name = "quarterly-secret-plan.odt";
    let (inos, docs) = {
        let mut tree = open(dir.path());
        assert!(tree.is_empty() && tree.seq().is_none());
        let mut f = file(3, 2, secret_name);
        f.key = b"KEYKEYKEYKEYKEYKEYKEYKEYKEYKEYKE".to_vec();
        f.attrs.insert("n".into(), secret_name.into());
        f.symlink = Some("target-of-a-link".into());
        tree.apply_snapshot([root(), folder(2, 1, "Documents"), f], Some("sn-1"))
            .unwrap();
        tree.apply_changes([Change::Upsert(file(4, 2, "b.txt"))], Some("sn-2"))
            .unwrap();
        tree.store().unwrap().flush().unwrap();
        let inos: Vec<u64> = [1, 2, 3, 4].iter().map(|&h| ino(&tree, h)).collect();
        (inos, ino(&tree, 2))
    };
    let tree = open(dir.path());
    assert_eq!(tree.seq(), Some("sn-2"));
    let again: Vec<u64> = [1, 2, 3, 4].iter().map(|&h| ino(&tree, h)).collect();
    assert_eq!(again, inos);
    assert_eq!(inos[0], ROOT_INO);
    assert_eq!(names(&tree, docs), vec![secret_name, "b.txt"]);
    let n = tree.node(ino(&tree, 3)).unwrap();
    assert_eq!(n.key, b"KEYKEYKEYKEYKEYKEYKEYKEYKEYKEYKE");
    assert_eq!(n.attrs["n"], secret_name);
    assert_eq!(n.symlink.as_deref(), Some("target-of-a-link"));
    assert_eq!(
        tree.getattr(ino(&tree, 3)).unwrap().file_type,
        FileType::Symlink
    );
    drop(tree);

    // Nothing of the names, keys or link targets is readable in the store's files.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in [
            secret_name.as_bytes(),
            b"Documents".as_slice(),
            b"KEYKEYKEYKEY".as_slice(),
            b"target-of-a-link".as_slice(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext {:?}",
                entry.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }

    // A newer node gets a fresh inode after remount, never a reused one.
    let mut tree = open(dir.path());
    tree.apply_changes([Change::Upsert(file(5, 2, "c.txt"))], Some("sn-3"))
        .unwrap();
    assert!(!inos.contains(&ino(&tree, 5)));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn wrong_key_and_swapped_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut tree = open(dir.path());
        tree.apply_snapshot([root(), file(2, 1, "a"), file(3, 1, "b")], Some("sn"))
            .unwrap();
        tree.store().unwrap().flush().unwrap();
    }
    assert!(matches!(
        TreeStore::open(dir.path(), &[0x43; 32]),
        Err(TreeError::KeyMismatch)
    ));
    {
        // Swap two sealed records: each is bound to its handle, so neither opens.
        let db = sled::open(dir.path()).unwrap();
        let k2 = [b"n".as_slice(), &2u64.to_be_bytes()].concat();
        let k3 = [b"n".as_slice(), &3u64.to_be_bytes()].concat();
        let v2 = db.get(&k2).unwrap().unwrap();
        let v3 = db.get(&k3).unwrap().unwrap();
        db.insert(&k2, v3).unwrap();
        db.insert(&k3, v2).unwrap();
        db.flush().unwrap();
    }
    let err = Tree::open(TreeStore::open(dir.path(), &KEY).unwrap()).unwrap_err();
    assert!(matches!(err, TreeError::Corrupt(_)), "{err}");
}

#[test]
fn a_node_deleted_while_held_lives_until_forgotten() {
    let mut tree = Tree::new();
    tree.apply_snapshot([root(), file(2, 1, "held"), file(3, 1, "other")], None)
        .unwrap();
    let held = tree.lookup(ROOT_INO, "held").unwrap().ino;
    tree.lookup(ROOT_INO, "held").unwrap();
    assert_eq!(tree.lookup_count(held), 2);
    let other = ino(&tree, 3);

    let inval = tree
        .apply_changes(
            [
                Change::Delete(Handle::from_u64(2)),
                Change::Delete(Handle::from_u64(3)),
            ],
            None,
        )
        .unwrap();
    assert!(inval.contains(&Invalidation::Entry {
        parent: ROOT_INO,
        name: "held".into()
    }));
    assert_eq!(tree.peek(ROOT_INO, "held"), None);
    assert_eq!(tree.ino_of(Handle::from_u64(2)), None);
    assert_eq!(tree.len(), 1);
    assert_eq!(
        tree.getattr(held).unwrap().size,
        20,
        "still answers getattr"
    );
    assert!(tree.getattr(other).is_none(), "unheld inode freed at once");

    tree.forget(held, 1);
    assert!(tree.getattr(held).is_some());
    tree.forget(held, 1);
    assert!(tree.getattr(held).is_none());

    // Re-creating the handle later gives a new inode: the old one may still be cached.
    tree.apply_changes([Change::Upsert(file(2, 1, "held"))], None)
        .unwrap();
    assert_ne!(ino(&tree, 2), held);
}

#[test]
fn delete_and_readd_in_one_batch_keeps_the_inode_and_subtree_moves_whole() {
    let mut tree = Tree::new();
    tree.apply_snapshot(
        [
            root(),
            folder(2, 1, "src"),
            folder(3, 2, "deep"),
            file(4, 3, "f"),
            folder(5, 1, "dst"),
        ],
        None,
    )
    .unwrap();
    let before: Vec<u64> = [2, 3, 4].iter().map(|&h| ino(&tree, h)).collect();
    // A move as a delete of the subtree followed by its nodes under the new parent.
    tree.apply_changes(
        [
            Change::Delete(Handle::from_u64(2)),
            Change::Upsert(folder(2, 5, "src")),
            Change::Upsert(folder(3, 2, "deep")),
            Change::Upsert(file(4, 3, "f")),
        ],
        None,
    )
    .unwrap();
    let after: Vec<u64> = [2, 3, 4].iter().map(|&h| ino(&tree, h)).collect();
    assert_eq!(before, after);
    assert_eq!(names(&tree, ROOT_INO), vec!["dst"]);
    assert_eq!(tree.parent_of(after[0]), Some(ino(&tree, 5)));

    // Deleting a folder deletes what is under it.
    tree.apply_changes([Change::Delete(Handle::from_u64(5))], None)
        .unwrap();
    assert_eq!(tree.len(), 1);
    for i in after {
        assert!(tree.getattr(i).is_none());
    }
}

#[test]
fn a_move_into_its_own_subtree_is_not_applied() {
    let mut tree = Tree::new();
    tree.apply_snapshot([root(), folder(2, 1, "a"), folder(3, 2, "b")], None)
        .unwrap();
    let (a, b) = (ino(&tree, 2), ino(&tree, 3));
    tree.apply_changes(
        [Change::Move {
            handle: Handle::from_u64(2),
            parent: Handle::from_u64(3),
        }],
        None,
    )
    .unwrap();
    assert_eq!(
        tree.parent_of(a),
        None,
        "left detached rather than forming a cycle"
    );
    assert_eq!(tree.parent_of(b), Some(a));
    assert!(names(&tree, ROOT_INO).is_empty());
    assert_eq!(tree.orphans(), vec![a]);
    // Once b moves out, a can sit under it.
    tree.apply_changes(
        [Change::Move {
            handle: Handle::from_u64(3),
            parent: ROOT,
        }],
        None,
    )
    .unwrap();
    assert_eq!(tree.parent_of(b), Some(ROOT_INO));
    assert_eq!(tree.parent_of(a), Some(b));
    assert!(tree.orphans().is_empty());
}

#[test]
fn children_arriving_before_their_parent_wait_for_it() {
    let mut tree = Tree::new();
    tree.apply_snapshot([file(4, 3, "x"), root()], None)
        .unwrap();
    let x = ino(&tree, 4);
    assert_eq!(tree.parent_of(x), None);
    assert_eq!(tree.orphans(), vec![x]);
    tree.apply_changes([Change::Upsert(folder(3, 1, "late"))], None)
        .unwrap();
    assert_eq!(tree.parent_of(x), Some(ino(&tree, 3)));
    assert_eq!(tree.lookup(ino(&tree, 3), "x").unwrap().ino, x);
    assert_eq!(
        tree.top_level(),
        vec![(NodeKind::Root, ROOT_INO)],
        "only the root is top-level"
    );
}

#[test]
fn an_older_duplicate_takes_the_plain_name_and_both_names_are_invalidated() {
    let mut tree = Tree::new();
    tree.apply_snapshot([root(), node(5, 1, NodeKind::File, "r.pdf", 100)], None)
        .unwrap();
    let newer = ino(&tree, 5);
    let inval = tree
        .apply_changes(
            [Change::Upsert(node(9, 1, NodeKind::File, "r.pdf", 50))],
            None,
        )
        .unwrap();
    let older = ino(&tree, 9);
    assert_eq!(tree.peek(ROOT_INO, "r.pdf"), Some(older));
    assert_eq!(tree.peek(ROOT_INO, "r (2).pdf"), Some(newer));
    for name in ["r.pdf", "r (2).pdf"] {
        assert!(inval.contains(&Invalidation::Entry {
            parent: ROOT_INO,
            name: name.into()
        }));
    }
    // The older one goes: the newer one gets the plain name back.
    tree.apply_changes([Change::Delete(Handle::from_u64(9))], None)
        .unwrap();
    assert_eq!(names(&tree, ROOT_INO), vec!["r.pdf"]);
    assert_eq!(tree.peek(ROOT_INO, "r.pdf"), Some(newer));
}

#[test]
fn readdir_resumes_correctly_while_the_folder_changes() {
    let mut tree = Tree::new();
    let mut nodes = vec![root()];
    nodes.extend((10..20).map(|h| file(h, 1, &format!("f{h}"))));
    tree.apply_snapshot(nodes, None).unwrap();
    let first: Vec<(u64, String, u64)> = tree
        .readdir(ROOT_INO, 0)
        .unwrap()
        .take(6)
        .map(|e| (e.ino, e.name.to_owned(), e.offset))
        .collect();
    assert_eq!(first[0].1, ".");
    assert_eq!(first[1].1, "..");
    let resume = first.last().unwrap().2;
    // Between two readdir calls: an entry already returned and one not yet returned go, one
    // comes.
    tree.apply_changes(
        [
            Change::Delete(Handle::from_u64(11)),
            Change::Delete(Handle::from_u64(17)),
            Change::Upsert(file(30, 1, "new")),
        ],
        None,
    )
    .unwrap();
    let rest: Vec<String> = tree
        .readdir(ROOT_INO, resume)
        .unwrap()
        .map(|e| e.name.to_owned())
        .collect();
    let mut seen: Vec<String> = first.into_iter().skip(2).map(|e| e.1).collect();
    seen.extend(rest);
    // Every name present throughout is listed exactly once; the deleted one not yet reached is
    // not listed.
    for h in (10..20).filter(|&h| h != 11 && h != 17) {
        let name = format!("f{h}");
        assert_eq!(seen.iter().filter(|n| **n == name).count(), 1, "{name}");
    }
    assert!(!seen.contains(&"f17".to_owned()));
    assert!(
        tree.readdir(ino(&tree, 10), 0).is_err(),
        "a file is not a folder"
    );
    assert!(matches!(
        tree.readdir(999, 0).map(|_| ()),
        Err(TreeError::NotFound(999))
    ));
}

#[test]
fn a_handle_turning_from_file_to_folder_gets_a_new_inode() {
    let mut tree = Tree::new();
    tree.apply_snapshot([root(), file(2, 1, "x")], None)
        .unwrap();
    let old = ino(&tree, 2);
    tree.apply_changes([Change::Upsert(folder(2, 1, "x"))], None)
        .unwrap();
    let new = ino(&tree, 2);
    assert_ne!(old, new);
    assert_eq!(tree.getattr(new).unwrap().file_type, FileType::Directory);
    assert!(tree.getattr(old).is_none());
}

#[test]
fn our_own_upload_replacing_a_node_leaves_the_kernel_cache_alone_unless_it_differs() {
    let mut tree = Tree::new();
    let local = Handle::new_local();
    let mut staged = file(2, 1, "x");
    staged.handle = local;
    staged.key = Vec::new();
    tree.apply_snapshot([root(), staged.clone()], None).unwrap();
    let x = tree.ino_of(local).unwrap();
    // Committed: a server handle, a key and attributes, the same size, time and mode.
    let mut uploaded = file(3, 1, "x");
    uploaded.size = staged.size;
    uploaded.attrs.insert("n".into(), "x".into());
    let inval = tree
        .apply_changes(
            [Change::Replace {
                old: local,
                node: uploaded.clone(),
            }],
            None,
        )
        .unwrap();
    assert!(inval.is_empty(), "{inval:?}");
    assert_eq!(tree.ino_of(Handle::from_u64(3)), Some(x));
    assert_eq!(tree.node(x).unwrap().key, uploaded.key);
    // The next upload of it lands with another size and mtime: those are what the kernel was
    // shown while the content was local (`Vfs::stat_of` shows the local file's), so nothing
    // it holds is stale; the tree takes them.
    let mut again = file(4, 1, "x");
    again.size = staged.size + 10;
    again.mtime_ns += 1;
    let inval = tree
        .apply_changes(
            [Change::Replace {
                old: Handle::from_u64(3),
                node: again.clone(),
            }],
            None,
        )
        .unwrap();
    assert!(inval.is_empty(), "{inval:?}");
    // Even with the same key and attributes (only the size and mtime moved), the tree takes them.
    let mut same_key = file(6, 1, "x");
    same_key.key = again.key.clone();
    same_key.attrs = again.attrs.clone();
    same_key.size = again.size + 1;
    same_key.mtime_ns = again.mtime_ns + 1;
    let inval = tree
        .apply_changes(
            [Change::Replace {
                old: Handle::from_u64(4),
                node: same_key.clone(),
            }],
            None,
        )
        .unwrap();
    assert!(inval.is_empty(), "{inval:?}");
    assert_eq!(tree.getattr(x).unwrap().size, again.size + 1);
    let again = same_key;
    let attr = tree.getattr(x).unwrap();
    assert_eq!((attr.size, attr.mtime_ns), (again.size, again.mtime_ns));
    // A mode that differs is still news to the kernel.
    let mut moded = file(5, 1, "x");
    moded.size = again.size;
    moded.mtime_ns = again.mtime_ns;
    moded.mode = Some(0o600);
    let inval = tree
        .apply_changes(
            [Change::Replace {
                old: Handle::from_u64(6),
                node: moded,
            }],
            None,
        )
        .unwrap();
    assert_eq!(inval, vec![Invalidation::Inode(x)]);
    // Another client's content under the same handle (a new key): the pages are stale.
    let mut theirs = tree.node(x).unwrap();
    theirs.key = vec![9; 32];
    let inval = tree.apply_changes([Change::Upsert(theirs)], None).unwrap();
    assert_eq!(inval, vec![Invalidation::Inode(x)]);
}

#[test]
fn attribute_changes_invalidate_the_inode_only() {
    let mut tree = Tree::new();
    tree.apply_snapshot([root(), file(2, 1, "x")], None)
        .unwrap();
    let x = ino(&tree, 2);
    let mut changed = file(2, 1, "x");
    changed.size = 4096;
    changed.key = vec![1; 32];
    let inval = tree.apply_changes([Change::Upsert(changed)], None).unwrap();
    assert_eq!(inval, vec![Invalidation::Inode(x)]);
    assert_eq!(tree.getattr(x).unwrap().size, 4096);
    let same = tree.node(x).unwrap();
    assert!(
        tree.apply_changes([Change::Upsert(same)], None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn mega_handles_round_trip_and_bad_ones_are_refused() {
    let h = Handle::from_mega("AbCd-_09").unwrap();
    assert_eq!(h.to_mega().as_deref(), Some("AbCd-_09"));
    assert_eq!(h.to_string(), "AbCd-_09");
    assert_eq!(Handle::from_bytes(h.to_bytes().unwrap()), h);
    assert_eq!(Handle::from_mega("AAAAAAAB").unwrap(), Handle::from_u64(1));
    for bad in ["", "AbCd-_0", "AbCd-_09A", "AbCd+/09", "AbCd-_0="] {
        assert!(
            matches!(Handle::from_mega(bad), Err(TreeError::BadHandle(_))),
            "{bad:?}"
        );
    }
    assert_eq!(Handle::from_u64(1 << 50).to_mega(), None);
}

#[test]
fn a_large_snapshot_is_written_in_slices_and_reloads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = vec![root()];
    nodes.extend((2..1_300).map(|h| file(h, 1, &format!("n{h}"))));
    let inos: Vec<u64> = {
        let mut tree = open(dir.path());
        tree.apply_snapshot(nodes, Some("big")).unwrap();
        (1..1_300).map(|h| ino(&tree, h)).collect()
    };
    let tree = open(dir.path());
    assert_eq!(tree.seq(), Some("big"));
    assert_eq!(tree.len(), 1_299);
    assert_eq!((1..1_300).map(|h| ino(&tree, h)).collect::<Vec<_>>(), inos);
    assert_eq!(tree.child_count(ROOT_INO), Some(1_298));
}

#[test]
fn a_node_kept_waiting_by_a_passing_cycle_is_attached_once_the_batch_breaks_it() {
    // 9 waits for 11; 7 sits under 9. Then one snapshot brings 11 under 7 and 9 again before
    // it moves 7 to the root: linking 9 under 11 would close the cycle 9 → 11 → 7 → 9 at those
    // moments, but not once 7 has moved. (Found by tree_model.)
    let mut tree = Tree::new();
    tree.apply_snapshot([root()], Some("1")).unwrap();
    tree.apply_changes([Change::Upsert(folder(9, 11, "nine"))], Some("2"))
        .unwrap();
    tree.apply_changes([Change::Upsert(folder(7, 9, "seven"))], Some("3"))
        .unwrap();
    tree.apply_snapshot(
        [
            root(),
            folder(11, 7, "eleven"),
            folder(9, 11, "nine"),
            folder(7, 1, "seven"),
        ],
        Some("4"),
    )
    .unwrap();
    assert_eq!(tree.parent_of(ino(&tree, 7)), Some(ROOT_INO));
    assert_eq!(tree.parent_of(ino(&tree, 11)), Some(ino(&tree, 7)));
    assert_eq!(tree.parent_of(ino(&tree, 9)), Some(ino(&tree, 11)));
    assert_eq!(names(&tree, ino(&tree, 11)), ["nine"]);
}

#[test]
fn a_local_folder_that_reaches_the_server_keeps_its_inode_and_children_and_its_old_handle() {
    let dir = tempfile::tempdir().unwrap();
    let local = Handle::new_local();
    let local_file = Handle::new_local();
    let at = |handle: Handle, parent: Handle, kind, name: &str| Node {
        handle,
        parent: Some(parent),
        ..node(0, 0, kind, name, 5)
    };
    let (folder_ino, inos) = {
        let mut tree = open(dir.path());
        tree.apply_snapshot([root(), folder(2, 1, "twin")], Some("sn-1"))
            .unwrap();
        tree.apply_changes(
            [
                Change::Upsert(at(local, ROOT, NodeKind::Folder, "made here")),
                Change::Upsert(at(local_file, local, NodeKind::File, "new.txt")),
                Change::Upsert(file(10, 0, "committed.txt")),
            ],
            None,
        )
        .unwrap();
        tree.apply_changes(
            [Change::Move {
                handle: Handle::from_u64(10),
                parent: local,
            }],
            None,
        )
        .unwrap();
        let folder_ino = ino(&tree, local.as_u64());
        // On the server as handle 20: the same inode, its children under it.
        tree.apply_changes(
            [Change::Replace {
                old: local,
                node: folder(20, 1, "made here"),
            }],
            None,
        )
        .unwrap();
        assert_eq!(ino(&tree, 20), folder_ino);
        assert_eq!(names(&tree, folder_ino), ["new.txt", "committed.txt"]);
        // A change naming the old handle (made while the server answered) lands there too.
        tree.apply_changes(
            [Change::Upsert(at(
                Handle::new_local(),
                local,
                NodeKind::File,
                "late",
            ))],
            None,
        )
        .unwrap();
        assert_eq!(tree.ino_of(local), Some(folder_ino));
        assert_eq!(
            names(&tree, folder_ino),
            ["new.txt", "committed.txt", "late"]
        );
        // So does the folder itself read under the old handle (a `chmod` of it racing with
        // its creation): no second "made here" appears.
        tree.apply_changes(
            [Change::Upsert(Node {
                mode: Some(0o750),
                // A folder made here has no key until the server creates it.
                key: Vec::new(),
                ..at(local, ROOT, NodeKind::Folder, "made here")
            })],
            None,
        )
        .unwrap();
        assert_eq!(names(&tree, 1), ["twin", "made here"]);
        let now = tree.node(folder_ino).unwrap();
        assert_eq!(now.mode, Some(0o750));
        assert_eq!(now.handle, Handle::from_u64(20));
        // The server's key stays: the local node had none.
        assert_eq!(now.key, folder(20, 1, "made here").key);
        assert!(!now.key.is_empty());
        assert_eq!(
            tree.node(ino(&tree, 10)).unwrap().parent,
            Some(Handle::from_u64(20))
        );
        tree.store().unwrap().flush().unwrap();
        let inos: Vec<u64> = [local_file.as_u64(), 10]
            .iter()
            .map(|&h| ino(&tree, h))
            .collect();
        (folder_ino, inos)
    };
    // What was persisted names the server's handle.
    let tree = open(dir.path());
    assert_eq!(ino(&tree, 20), folder_ino);
    assert_eq!(
        names(&tree, folder_ino),
        ["new.txt", "committed.txt", "late"]
    );
    for i in inos {
        assert_eq!(tree.parent_of(i), Some(folder_ino));
    }
}

#[test]
fn a_local_folder_found_on_the_server_already_hands_its_children_to_that_folder() {
    let mut tree = Tree::new();
    let local = Handle::new_local();
    tree.apply_snapshot(
        [root(), folder(2, 1, "x"), file(3, 2, "old.txt")],
        Some("sn-1"),
    )
    .unwrap();
    let made = Node {
        handle: local,
        parent: Some(ROOT),
        ..folder(0, 0, "x")
    };
    let kid = Node {
        handle: Handle::new_local(),
        parent: Some(local),
        ..file(0, 0, "kept.txt")
    };
    tree.apply_changes([Change::Upsert(made), Change::Upsert(kid)], None)
        .unwrap();
    assert_eq!(
        names(&tree, ROOT_INO).len(),
        2,
        "two folders named x, shown apart"
    );
    tree.apply_changes(
        [Change::Replace {
            old: local,
            node: folder(2, 1, "x"),
        }],
        None,
    )
    .unwrap();
    assert_eq!(names(&tree, ROOT_INO), ["x"]);
    assert_eq!(names(&tree, ino(&tree, 2)), ["old.txt", "kept.txt"]);
    assert_eq!(tree.ino_of(local), Some(ino(&tree, 2)));
}
