//! The block cache: both layers, both budgets, encryption at rest, bad files, threads.

use bytes::Bytes;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use veilfs::cache::{BlockCache, ChunkId, ContentId};

const MIB: u64 = 1 << 20;

fn content(name: &str) -> ContentId {
    ContentId::derive(&[name.as_bytes(), b"meta-mac"])
}

fn chunk(name: &str, offset: u64) -> ChunkId {
    ChunkId {
        content: content(name),
        offset,
    }
}

/// Distinct, recognisable plaintext for each chunk.
fn data(id: &ChunkId, len: usize) -> Bytes {
    let seed = id.content.0[0] as usize + id.offset as usize;
    (0..len)
        .map(|i| b"PLAINTEXT-"[(i + seed) % 10])
        .collect::<Vec<u8>>()
        .into()
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir.join("chunks")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

#[test]
fn hits_misses_and_the_memory_budget() {
    let cache = BlockCache::in_memory(300);
    let ids: Vec<ChunkId> = (0..4).map(|i| chunk("f", i * 100)).collect();
    assert!(cache.get(&ids[0]).is_none());
    for id in &ids[..3] {
        cache.insert(*id, data(id, 100)).unwrap();
    }
    assert_eq!(cache.get(&ids[0]).unwrap(), data(&ids[0], 100));
    // ids[0] was just used, so inserting a fourth evicts ids[1].
    cache.insert(ids[3], data(&ids[3], 100)).unwrap();
    assert!(cache.get(&ids[1]).is_none());
    for id in [ids[0], ids[2], ids[3]] {
        assert_eq!(cache.get(&id).unwrap(), data(&id, 100));
    }
    // Larger than the whole budget: not kept, nothing else evicted for it.
    let big = chunk("big", 0);
    cache.insert(big, data(&big, 301)).unwrap();
    assert!(cache.get(&big).is_none());
    let s = cache.stats();
    assert_eq!((s.mem_bytes, s.mem_chunks, s.mem_budget), (300, 3, 300));
    assert_eq!((s.hits_mem, s.hits_disk, s.misses), (4, 0, 3));
    assert_eq!((s.disk_bytes, s.disk_chunks), (0, 0));
}

#[test]
fn disk_layer_serves_what_memory_evicted_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = chunk("a", 0);
    let b = chunk("a", MIB);
    {
        let cache = BlockCache::open(dir.path(), 150, 10 * MIB).unwrap();
        cache.insert(a, data(&a, 100)).unwrap();
        cache.insert(b, data(&b, 100)).unwrap(); // pushes `a` out of memory
        assert_eq!(cache.stats().mem_chunks, 1);
        assert_eq!(cache.get(&a).unwrap(), data(&a, 100));
        let s = cache.stats();
        assert_eq!((s.hits_disk, s.disk_chunks), (1, 2));
        assert_eq!(s.disk_bytes, 2 * BlockCache::disk_size_of(100));
    }
    let cache = BlockCache::open(dir.path(), 150, 10 * MIB).unwrap();
    assert_eq!(cache.stats().disk_chunks, 2);
    assert_eq!(cache.get(&b).unwrap(), data(&b, 100));
    assert_eq!(cache.get(&a).unwrap(), data(&a, 100));
    assert_eq!(cache.stats().hits_disk, 2);
}

#[test]
fn at_rest_files_are_ciphertext_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(dir.path(), MIB, MIB).unwrap();
    let id = chunk("secret", 0);
    let plain = data(&id, 4096);
    cache.insert(id, plain.clone()).unwrap();
    let files = chunk_files(dir.path());
    assert_eq!(files.len(), 1);
    let stored = std::fs::read(&files[0]).unwrap();
    assert_eq!(stored.len() as u64, BlockCache::disk_size_of(4096));
    assert!(
        !stored.windows(10).any(|w| w == b"PLAINTEXT-"),
        "plaintext on disk"
    );
    // The same chunk written twice gets a fresh nonce: no two sealings are equal.
    cache.insert(id, plain).unwrap();
    assert_ne!(std::fs::read(&files[0]).unwrap(), stored);

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("key")), 0o600);
    assert_eq!(std::fs::read(dir.path().join("key")).unwrap().len(), 32);
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(dir.path()), 0o700);
    assert!(
        std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn tampered_truncated_swapped_and_foreign_files_are_misses_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<ChunkId> = (0..5).map(|i| chunk(&format!("f{i}"), 0)).collect();
    {
        let cache = BlockCache::open(dir.path(), 0, MIB).unwrap();
        for id in &ids {
            cache.insert(*id, data(id, 1000)).unwrap();
        }
    }
    let path = |id: &ChunkId| {
        dir.path()
            .join("chunks")
            .join(hex::encode(id.content.0))
            .join(format!("{:016x}", id.offset))
    };
    // 0: one flipped bit. 1: truncated. 2: replaced by chunk 3's (valid) file. 4: junk.
    let mut bytes = std::fs::read(path(&ids[0])).unwrap();
    bytes[100] ^= 1;
    std::fs::write(path(&ids[0]), bytes).unwrap();
    let bytes = std::fs::read(path(&ids[1])).unwrap();
    std::fs::write(path(&ids[1]), &bytes[..bytes.len() - 1]).unwrap();
    std::fs::copy(path(&ids[3]), path(&ids[2])).unwrap();
    std::fs::write(path(&ids[4]), b"VFC1 not a sealed chunk at all, not at all").unwrap();
    // And a file that is not ours at all, under a name that is not a chunk's.
    std::fs::write(dir.path().join("chunks").join("stray"), b"?").unwrap();

    let cache = BlockCache::open(dir.path(), 0, MIB).unwrap();
    assert!(!dir.path().join("chunks").join("stray").exists());
    for i in [0, 1, 2, 4] {
        assert!(cache.get(&ids[i]).is_none(), "chunk {i} served");
        assert!(!path(&ids[i]).exists(), "chunk {i} not deleted");
    }
    assert_eq!(cache.get(&ids[3]).unwrap(), data(&ids[3], 1000));
    let s = cache.stats();
    assert_eq!((s.corrupt, s.misses, s.hits_disk), (4, 4, 1));
    assert_eq!(s.disk_chunks, 1);
    assert_eq!(s.disk_bytes, BlockCache::disk_size_of(1000));
}

#[test]
fn disk_budget_evicts_least_recently_used_across_both_layers() {
    let dir = tempfile::tempdir().unwrap();
    let each = BlockCache::disk_size_of(100);
    let cache = BlockCache::open(dir.path(), 1000, 3 * each).unwrap();
    let ids: Vec<ChunkId> = (0..4).map(|i| chunk("g", i)).collect();
    for id in &ids[..3] {
        cache.insert(*id, data(id, 100)).unwrap();
    }
    // A memory hit on ids[0] makes it recent on disk too, so ids[1] is the one to go.
    assert!(cache.get(&ids[0]).is_some());
    cache.insert(ids[3], data(&ids[3], 100)).unwrap();
    let s = cache.stats();
    assert_eq!((s.disk_chunks, s.disk_bytes), (3, 3 * each));
    assert_eq!(chunk_files(dir.path()).len(), 3);
    drop(cache);
    let cache = BlockCache::open(dir.path(), 0, 3 * each).unwrap();
    assert!(cache.get(&ids[1]).is_none());
    for id in [ids[0], ids[2], ids[3]] {
        assert_eq!(cache.get(&id).unwrap(), data(&id, 100));
    }
    // Reopening with a smaller budget trims to it.
    drop(cache);
    let cache = BlockCache::open(dir.path(), 0, each).unwrap();
    assert_eq!(cache.stats().disk_chunks, 1);
    assert_eq!(chunk_files(dir.path()).len(), 1);
}

#[test]
fn release_disk_frees_the_least_recently_used_chunks_first() {
    let dir = tempfile::tempdir().unwrap();
    let each = BlockCache::disk_size_of(100);
    let cache = BlockCache::open(dir.path(), 0, 10 * each).unwrap();
    let ids: Vec<ChunkId> = (0..4).map(|i| chunk("r", i)).collect();
    for id in &ids {
        cache.insert(*id, data(id, 100)).unwrap();
    }
    // Asking for a little more than one chunk frees the two oldest.
    assert_eq!(cache.release_disk(each + 1), 2 * each);
    assert_eq!(chunk_files(dir.path()).len(), 2);
    assert!(cache.get(&ids[0]).is_none() && cache.get(&ids[1]).is_none());
    assert_eq!(cache.get(&ids[3]).unwrap(), data(&ids[3], 100));
    // Asking for more than there is frees what there is.
    assert_eq!(cache.release_disk(u64::MAX), 2 * each);
    assert_eq!(cache.stats().disk_chunks, 0);
    assert_eq!(cache.release_disk(1), 0);
}

#[test]
fn invalidate_drops_every_chunk_of_one_content_only() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(dir.path(), MIB, MIB).unwrap();
    let old: Vec<ChunkId> = (0..3).map(|i| chunk("v1", i * 1000)).collect();
    let other = chunk("unrelated", 0);
    for id in old.iter().chain([&other]) {
        cache.insert(*id, data(id, 1000)).unwrap();
    }
    cache.invalidate(&content("v1"));
    for id in &old {
        assert!(cache.get(id).is_none());
    }
    assert_eq!(cache.get(&other).unwrap(), data(&other, 1000));
    let s = cache.stats();
    assert_eq!((s.mem_chunks, s.disk_chunks), (1, 1));
    assert_eq!(s.mem_bytes, 1000);
    assert_eq!(chunk_files(dir.path()).len(), 1);
    // A new version of the file is a different content id: its chunks never collide.
    assert_ne!(content("v1"), ContentId::derive(&[b"v1", b"new-mac"]));
}

#[test]
fn a_bad_key_file_is_replaced_and_old_chunks_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let id = chunk("k", 0);
    {
        let cache = BlockCache::open(dir.path(), 0, MIB).unwrap();
        cache.insert(id, data(&id, 10)).unwrap();
    }
    let key = std::fs::read(dir.path().join("key")).unwrap();
    std::fs::write(dir.path().join("key"), b"short").unwrap();
    let cache = BlockCache::open(dir.path(), 0, MIB).unwrap();
    let new_key = std::fs::read(dir.path().join("key")).unwrap();
    assert_eq!(new_key.len(), 32);
    assert_ne!(new_key, key);
    assert!(cache.get(&id).is_none());
    assert!(chunk_files(dir.path()).is_empty());
}

#[test]
fn many_threads_never_see_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    // Small budgets so that eviction races with reads on both layers.
    let cache = Arc::new(
        BlockCache::open(dir.path(), 20 * 512, 40 * BlockCache::disk_size_of(512)).unwrap(),
    );
    let ids: Arc<Vec<ChunkId>> = Arc::new(
        (0..64)
            .map(|i| chunk(&format!("t{}", i % 8), (i / 8) * 512))
            .collect(),
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let cache = cache.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut served = 0u32;
                for _ in 0..1500 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = ids[(x % 64) as usize];
                    match x % 11 {
                        0..=5 => {
                            if let Some(got) = cache.get(&id) {
                                assert_eq!(got, data(&id, 512), "wrong data for {id:?}");
                                served += 1;
                            }
                        }
                        6..=9 => cache.insert(id, data(&id, 512)).unwrap(),
                        _ => cache.invalidate(&id.content),
                    }
                }
                served
            })
        })
        .collect();
    let served: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 0, "the cache served nothing");
    let s = cache.stats();
    assert!(
        s.mem_bytes <= s.mem_budget && s.disk_bytes <= s.disk_budget,
        "{s:?}"
    );
    assert_eq!(s.corrupt, 0);
}
