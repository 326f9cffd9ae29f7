//! What the mount does when things go wrong underneath it: a blob corrupted on the server, a
//! file replaced while others read it, a full local staging disk, a dead server. In each case no
//! wrong bytes are served and no acknowledged write is lost.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::mount::{MountFixture, pattern, write_and_close};

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Removes the on-disk block cache of every account state under the mount's cache dir.
fn wipe_block_cache(f: &MountFixture) {
    for e in fs::read_dir(f.cache_dir()).unwrap() {
        let blocks = e.unwrap().path().join("blocks");
        if blocks.exists() {
            fs::remove_dir_all(blocks).unwrap();
        }
    }
}

/// Flips one bit of the ciphertext of the only `len`-byte blob on the server (CTR: byte i of
/// the blob encrypts byte i of the file).
fn corrupt_blob(f: &MountFixture, len: usize, at: u64) {
    let blobs: Vec<PathBuf> = files_under(&f.server_data())
        .into_iter()
        .filter(|p| fs::metadata(p).unwrap().len() == len as u64)
        .collect();
    assert_eq!(blobs.len(), 1, "blob of the file: {blobs:?}");
    let blob = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&blobs[0])
        .unwrap();
    let mut byte = [0u8];
    blob.read_exact_at(&mut byte, at).unwrap();
    blob.write_all_at(&[byte[0] ^ 0x20], at).unwrap();
    blob.sync_all().unwrap();
}

/// Uploads `data` as `name` in the drive's root with another client (plain MEGA: no per-chunk
/// MACs, only the meta-MAC in the key).
fn upload_as_another_client(f: &MountFixture, name: &str, data: &[u8]) {
    let src = f.root.path().join("other-client.src");
    fs::write(&src, data).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let other = f.other_client().await;
        let (nodes, _) = other.fetch_tree().await.unwrap();
        let root = nodes.iter().find(|n| n.wire.t == 2).unwrap().wire.h.clone();
        let mut attrs = serde_json::Map::new();
        attrs.insert("n".into(), serde_json::json!(name));
        other
            .upload(&root, &src, &attrs, None, |_| {})
            .await
            .unwrap();
    });
}

#[test]
fn a_foreign_blob_corrupted_on_the_server_reads_as_eio_never_as_wrong_bytes() {
    let mut f = MountFixture::new();
    let data = pattern(5 * 1024 * 1024, 7);
    upload_as_another_client(&f, "victim.bin", &data);
    f.unmount();
    let flip_at = data.len() as u64 / 2 + 12_345;
    corrupt_blob(&f, data.len(), flip_at);
    wipe_block_cache(&f);
    f.mount();

    // Sequential reading must stop with EIO before the end, and every byte it did return must
    // be the file's true content.
    let mut h = fs::File::open(f.path("victim.bin")).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    let error = loop {
        match h.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e),
        }
    };
    let error = error.unwrap_or_else(|| {
        panic!(
            "the corrupted file was read to its end ({} bytes, {})",
            got.len(),
            if got == data {
                "true content"
            } else {
                "WRONG BYTES"
            }
        )
    });
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert!(got.len() < data.len());
    assert!(
        got[..] == data[..got.len()],
        "a successful read returned wrong bytes"
    );
    drop(h);

    // Once detected, the damaged region stays unreadable (no retry serves it).
    let h = fs::File::open(f.path("victim.bin")).unwrap();
    let mut piece = vec![0u8; 4096];
    let e = h
        .read_exact_at(&mut piece, flip_at & !4095)
        .expect_err("the corrupted region was served");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = fs::read(f.path("victim.bin")).expect_err("the corrupted file was served");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
fn a_corrupted_chunk_of_our_upload_fails_alone_and_the_rest_still_reads() {
    let mut f = MountFixture::new();
    let data = pattern(20 * 1024 * 1024, 9);
    fs::write(f.path("big.bin"), &data).unwrap();
    f.unmount();
    // MEGA's chunks grow by 128 KiB: chunk 5 spans 1920 KiB .. 2688 KiB.
    let chunk5 = 15 * 128 * 1024u64..21 * 128 * 1024;
    corrupt_blob(&f, data.len(), chunk5.start + 1000);
    wipe_block_cache(&f);
    f.mount();

    let h = fs::File::open(f.path("big.bin")).unwrap();
    let read_at = |at: u64, len: usize| {
        let mut buf = vec![0u8; len];
        h.read_exact_at(&mut buf, at).map(|()| buf)
    };
    // Only that range: EIO, before anything else of the file was read.
    let e = read_at(chunk5.start + 512, 4096)
        .map(|b| b.len())
        .expect_err("the corrupted chunk was served");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Its neighbours, the start and the end read byte-exact.
    for (at, len) in [
        (chunk5.start - 8192, 8192),
        (chunk5.end, 65_536),
        (0, 4096),
        (data.len() as u64 - 100_000, 100_000),
        (10 * 1024 * 1024 + 3, 300_000),
    ] {
        let got = read_at(at, len).unwrap_or_else(|e| panic!("reading {len} at {at}: {e}"));
        assert!(
            got[..] == data[at as usize..at as usize + len],
            "bytes at {at}"
        );
    }
    // Reading straight through stops at the bad chunk, with true bytes up to it.
    let e = fs::read(f.path("big.bin")).expect_err("the whole file was served");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = read_at(chunk5.end - 10, 20)
        .map(|b| b.len())
        .expect_err("a read across the bad chunk's end");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
}

#[test]
fn atomic_save_readers_see_old_or_new_never_a_mix_and_it_persists() {
    let mut f = MountFixture::new();
    // Versions of different sizes, across the first chunk boundaries.
    let versions: Vec<Vec<u8>> = (0..8u8)
        .map(|k| pattern(150_000 + 61_000 * k as usize, k.wrapping_mul(17) + 1))
        .collect();
    fs::write(f.path("doc"), &versions[0]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let versions = Arc::new(versions);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, versions, doc) = (stop.clone(), versions.clone(), f.path("doc"));
            std::thread::spawn(move || {
                let mut seen = vec![0u32; versions.len()];
                let mut problems = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match fs::read(&doc) {
                        Ok(data) => match versions.iter().position(|v| *v == data) {
                            Some(k) => seen[k] += 1,
                            None => problems.push(format!("a mix of {} bytes", data.len())),
                        },
                        Err(e) => problems.push(format!("error {e}")),
                    }
                }
                (seen, problems)
            })
        })
        .collect();

    // The editor's save: a new file, fsync, rename over the original.
    for (k, v) in versions.iter().enumerate().skip(1) {
        let tmp = f.path(".doc.swp");
        let mut h = fs::File::create(&tmp).unwrap();
        h.write_all(v).unwrap();
        h.sync_all().unwrap();
        drop(h);
        fs::rename(&tmp, f.path("doc")).unwrap();
        assert!(fs::read(f.path("doc")).unwrap() == *v, "just saved");
        if k % 3 == 0 {
            // Long enough for this version's upload to commit while the readers read (an
            // open racing that commit was refused once: `Vfs::open_handle`).
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        let (seen, problems) = r.join().unwrap();
        assert!(problems.is_empty(), "readers saw: {problems:?}");
        reads += seen.iter().sum::<u32>();
    }
    assert!(reads > 0);

    let check = |f: &MountFixture| {
        assert!(fs::read(f.path("doc")).unwrap() == *versions.last().unwrap());
        let names: Vec<_> = fs::read_dir(&f.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["doc"]);
    };
    check(&f);
    f.remount();
    check(&f);
    f.unmount();
    wipe_block_cache(&f);
    f.mount();
    check(&f);
}

#[test]
fn a_handle_open_across_a_replace_or_unlink_still_reads_the_old_content() {
    let mut f = MountFixture::new();
    let old = pattern(400_000, 1);
    fs::write(f.path("doc"), &old).unwrap();
    fs::write(f.path("gone"), &old).unwrap();
    f.unmount();
    wipe_block_cache(&f);
    f.mount();
    // Opened, nothing read yet: the content is on the server only.
    let reader = fs::File::open(f.path("doc")).unwrap();
    let orphan = fs::File::open(f.path("gone")).unwrap();
    fs::write(f.path(".doc.swp"), b"new").unwrap();
    fs::rename(f.path(".doc.swp"), f.path("doc")).unwrap();
    fs::remove_file(f.path("gone")).unwrap();
    for h in [&reader, &orphan] {
        let mut got = Vec::new();
        let mut h = h;
        h.read_to_end(&mut got)
            .expect("reading a handle opened before the replace");
        assert!(got == old, "an old handle read other content");
    }
    assert_eq!(fs::read(f.path("doc")).unwrap(), b"new");
    assert!(!f.path("gone").exists());
    drop((reader, orphan));
    // Nothing of the old files is left behind once they are closed: a fresh mount sees
    // only the new content, and the server holds one file.
    f.remount();
    let names: Vec<_> = fs::read_dir(&f.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["doc"]);
    // The old contents went through the rubbish bin and out of the account (the unmount
    // waited for that): the quota counts only the new 3 bytes.
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %f %S"])
        .arg(&f.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let used = (v[0] - v[1]) * v[2];
    assert!(used < 100_000, "{used} bytes still used: {text}");
}

#[test]
fn a_stalled_download_blocks_neither_listing_nor_cached_files() {
    let mut f = MountFixture::new();
    let slow = pattern(3 * 1024 * 1024, 5);
    let cached = pattern(300_000, 6);
    fs::create_dir(f.path("dir")).unwrap();
    fs::write(f.path("dir/slow.bin"), &slow).unwrap();
    fs::write(f.path("cached.bin"), &cached).unwrap();
    f.unmount();
    wipe_block_cache(&f);
    f.mount();
    assert!(fs::read(f.path("cached.bin")).unwrap() == cached);

    f.pause_server(true);
    let path = f.path("dir/slow.bin");
    // The tree kept from the last mount holds the committed upload, not the empty node the
    // file was created as (the store is flushed at unmount).
    assert_eq!(fs::metadata(&path).unwrap().len(), slow.len() as u64);
    let reader = std::thread::spawn(move || fs::read(path));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !reader.is_finished(),
        "the download did not wait for the frozen server"
    );

    // While it hangs, the tree and the cached content answer.
    let mnt = f.mnt.clone();
    let lister = std::thread::spawn(move || {
        let mut names: Vec<_> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let meta = fs::metadata(mnt.join("dir/slow.bin")).unwrap();
        let content = fs::read(mnt.join("cached.bin")).unwrap();
        (names, meta.len(), content)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lister.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let done = lister.is_finished();
    f.pause_server(false);
    assert!(done, "listing waited for the stalled download");
    let (names, len, content) = lister.join().unwrap();
    assert_eq!(names, ["cached.bin", "dir"]);
    assert_eq!(len, slow.len() as u64);
    assert!(content == cached);
    // Once the server is back the download completes, byte-exact.
    assert!(reader.join().unwrap().unwrap() == slow);
}

/// An unmount that gives up waiting (`--upload-wait`) says how many uploads are left, rather
/// than "all uploads done"; they go up from the next mount.
#[test]
fn an_unmount_that_stops_waiting_says_what_is_left_and_the_next_mount_uploads_it() {
    let mut f = MountFixture::new();
    f.unmount();
    f.mount_options(&["--upload-wait", "0.5"]);
    f.mount();
    f.stop_server();
    write_and_close(&f.path("a.txt"), b"first").unwrap();
    write_and_close(&f.path("b.txt"), b"second").unwrap();
    let unmount = f.start_unmount();
    let said = f.finish_unmount(unmount);
    assert!(
        said.contains("2 queued uploads not done yet: they resume at the next mount"),
        "{said}"
    );
    assert!(!said.contains("all uploads done"), "{said}");

    f.start_server();
    f.mount();
    let unmount = f.start_unmount();
    let said = f.finish_unmount(unmount);
    assert!(!said.contains("not done yet"), "{said}");
    // Read back from the server: nothing queued, nothing cached.
    wipe_block_cache(&f);
    f.mount();
    assert_eq!(fs::read(f.path("a.txt")).unwrap(), b"first");
    assert_eq!(fs::read(f.path("b.txt")).unwrap(), b"second");
}

#[test]
fn a_write_closed_while_the_server_is_dead_is_uploaded_once_it_is_back() {
    let mut f = MountFixture::new();
    fs::write(f.path("offline.bin"), b"before").unwrap();
    fs::create_dir(f.path("dir")).unwrap();
    fs::write(f.path("dir/second.txt"), b"v1").unwrap();
    f.remount(); // both are on the server now

    f.stop_server();
    let data = pattern(3 * 1024 * 1024 + 5, 11);
    // Overwriting existing files needs no server: close() succeeds, the content is journaled.
    // The fsync halfway queues a first version, which the close's version supersedes: the
    // unmount below counts one upload per file.
    {
        use std::io::Write;
        let mut file = fs::File::create(f.path("offline.bin")).unwrap();
        file.write_all(&data[..data.len() / 2]).unwrap();
        file.sync_all().expect("fsync with the server down");
        file.write_all(&data[data.len() / 2..]).unwrap();
        file.sync_all().unwrap();
    }
    write_and_close(&f.path("dir/second.txt"), b"v2, written offline")
        .expect("overwrite with the server down");
    // The mount serves the new content at once.
    assert!(fs::read(f.path("offline.bin")).unwrap() == data);
    // The unmount waits for them, and says so while the server is still away.
    let mut unmount = f.start_unmount();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(unmount.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(
        first.starts_with("waiting for 2 queued uploads ("),
        "unmount printed {first:?}"
    );
    f.start_server();
    let rest = f.finish_unmount(unmount);
    assert!(rest.trim_end().ends_with("all uploads done"), "{rest}");
    wipe_block_cache(&f);
    f.mount();
    assert!(fs::read(f.path("offline.bin")).unwrap() == data);
    assert_eq!(
        fs::read(f.path("dir/second.txt")).unwrap(),
        b"v2, written offline"
    );
}
