//! Public links between `veilfs` and the real megajs, both ways: megajs opens what `veilfs link`
//! printed (checking every MAC), and `veilfs get` downloads a folder link megajs made.

mod common;

use std::fs;

use common::mount::{PASSWORD, pattern};
use common::shell::Shell;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// megajs accepts links on MEGA's hosts only; the API object's gateway decides where it asks.
fn as_mega_nz(link: &str, server: &str) -> String {
    link.replace(server.trim_end_matches('/'), "https://mega.nz")
}

#[test]
fn megajs_opens_links_printed_by_veilfs_link() {
    let sh = Shell::new();
    let tree = sh.local("album");
    fs::create_dir_all(tree.join("2026")).unwrap();
    let big = pattern(1_200_000, 1);
    let small = pattern(5_000, 2);
    fs::write(tree.join("cover.bin"), &big).unwrap();
    fs::write(tree.join("2026/day.bin"), &small).unwrap();
    sh.ok(&["put", "-r", tree.to_str().unwrap(), "/"]);

    let file_link = sh.ok(&["link", "/album/cover.bin"]).trim().to_string();
    let out = common::run_node(
        "megajs_open_link.js",
        &[],
        &json!({"gateway": sh.url, "link": as_mega_nz(&file_link, &sh.url)}),
    );
    assert_eq!(
        out["files"],
        json!([{"path": "cover.bin", "size": big.len(), "sha256": sha256(&big)}])
    );

    let folder_link = sh.ok(&["link", "/album"]).trim().to_string();
    let out = common::run_node(
        "megajs_open_link.js",
        &[],
        &json!({"gateway": sh.url, "link": as_mega_nz(&folder_link, &sh.url)}),
    );
    assert_eq!(
        out["files"],
        json!([
            {"path": "album/2026/day.bin", "size": small.len(), "sha256": sha256(&small)},
            {"path": "album/cover.bin", "size": big.len(), "sha256": sha256(&big)},
        ])
    );
}

#[test]
fn veilfs_get_downloads_a_folder_link_made_by_megajs() {
    let sh = Shell::new();
    // megajs's own scenario: a folder of files, a linked single file (unlinked at the end),
    // and the folder's link, which stays valid.
    let files = [(0usize, "empty.bin"), (131_073, "chunky.bin")];
    let input = json!({
        "gateway": sh.url,
        "email": sh.email,
        "password": PASSWORD,
        "folder": "from-megajs",
        "files": files.iter().enumerate().map(|(i, (size, name))| {
            json!({"name": name, "size": size, "start": i + 2, "step": i + 5})
        }).collect::<Vec<_>>(),
        "single": {"name": "single.bin", "size": 10, "start": 9, "step": 4},
    });
    let made = common::run_node("megajs_links.js", &[], &input);
    let link = made["folderLink"].as_str().unwrap();
    assert!(link.starts_with("https://mega.nz/folder/"), "{link}");

    let dest = sh.local("got");
    fs::create_dir_all(&dest).unwrap();
    let out = sh.run_in(
        "stranger",
        &[
            "get",
            "--link-server",
            &sh.url,
            link,
            dest.to_str().unwrap(),
        ],
    );
    common::shell::assert_ok(&out);
    for (i, (size, name)) in files.iter().enumerate() {
        // The same bytes megajs uploaded (its testBuffer).
        let expected: Vec<u8> = (0..*size)
            .map(|j| ((i + 2 + j * (i + 5)) % 255) as u8)
            .collect();
        let got = fs::read(dest.join("from-megajs").join(name)).unwrap();
        assert!(got == expected, "{name}");
    }
}
