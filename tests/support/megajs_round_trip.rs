//! The megajs round trip against a running server, shared by the test on a local data
//! directory (tests/server_megajs.rs) and the one with blobs on Garage (tests/server_s3.rs).

use serde_json::{Value, json};
use veilfs::crypto::mega::is_megajs_quirk_size;
use veilfs::server::RunningServer;

use super::common;

/// megajs's test rule, as in the script: byte i = (start + i·step) mod 255.
pub fn test_buffer(size: usize, start: usize, step: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ((start + i * step) % 255) as u8)
        .collect()
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Makes an account, runs tests/interop/megajs_server.js against `server` and checks what
/// megajs saw. Returns byte strings that must not appear in anything the server stores:
/// names, the password, and a run of file content.
pub async fn megajs_round_trip(server: &RunningServer) -> Vec<Vec<u8>> {
    // Mixed case: megajs lower-cases before us0/us, and so must everyone else.
    let email = "Interop.User@Example.org";
    let password = "pässwörd — ✓ 2";
    veilfs::mega::signup::create_account(&server.url(), email, password, "Interop")
        .await
        .unwrap();

    // Sizes next to chunk boundaries (128K, 384K, 1280K, 4608K), but outside megajs's MAC quirk
    // ranges (B−16, B], where megajs would reject even a correct file.
    let sizes: [(u64, &str); 9] = [
        (1, "один.txt"),
        (15, "ß—15 bytes"),
        (131_056, "日本語 128K-16"),
        (131_073, "emoji 🎉 128K+1"),
        (393_200, "café 384K-16"),
        (393_217, "naïve 384K+1"),
        (1_310_721, "Ünïcödé 1280K+1"),
        (4_718_593, "größer 4608K+1"),
        (5_242_885, "πολύ μεγάλο 5M+5"),
    ];
    for (size, _) in sizes {
        assert!(!is_megajs_quirk_size(size), "{size} is a megajs quirk size");
    }
    let files: Vec<Value> = sizes
        .iter()
        .enumerate()
        .map(|(i, (size, name))| json!({"name": name, "size": size, "start": i * 7 + 1, "step": i + 3}))
        .collect();
    let folder = "Dossier partagé 📁";
    let input = json!({
        "gateway": server.url(),
        "email": email,
        "password": password,
        "folder": folder,
        "files": files,
        "rename": {"from": "ß—15 bytes", "to": "renamed ✓ ß"},
        "move": "один.txt",
        "remove": "café 384K-16",
    });
    let script_input = input.clone();
    let out = tokio::task::spawn_blocking(move || {
        common::run_node("megajs_server.js", &[], &script_input)
    })
    .await
    .unwrap();

    assert_eq!(out["sameUser"], true);
    assert_eq!(out["user"].as_str().unwrap().len(), 11);
    assert_eq!(
        out["rootsA"],
        json!(["Cloud Drive", "Rubbish Bin", "Inbox"])
    );
    assert_eq!(out["folderName"], folder);
    // Uploads: every name and size as megajs sees them after `p`.
    let uploads = out["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), sizes.len());
    for (u, (size, name)) in uploads.iter().zip(sizes) {
        assert_eq!(u["name"], name);
        assert_eq!(u["size"], size);
        assert_eq!(u["handle"].as_str().unwrap().len(), 8);
    }
    let mut names: Vec<&str> = sizes.iter().map(|(_, n)| *n).collect();
    names.sort();
    let listed: Vec<&str> = out["listA"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, names);
    // Downloads: megajs checked each file's MAC; the bytes are what was uploaded.
    for (d, (i, (size, name))) in out["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(sizes.iter().enumerate())
    {
        assert_eq!(d["name"], *name);
        assert_eq!(d["ok"], true, "{name}");
        assert_eq!(d["size"], *size);
        let want = test_buffer(*size as usize, i * 7 + 1, i + 3);
        assert_eq!(d["sha256"], hex::encode(sha2_digest(&want)), "{name}");
    }
    // Session B saw the uploads through `sc`, and could download one.
    let mut listed_b: Vec<&str> = out["listB"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    listed_b.sort();
    assert_eq!(listed_b, names);
    assert_eq!(out["downloadB"], true);
    assert!(
        out["afterRenameB"]
            .as_array()
            .unwrap()
            .contains(&json!("renamed ✓ ß"))
    );
    assert!(
        !out["afterRenameB"]
            .as_array()
            .unwrap()
            .contains(&json!("ß—15 bytes"))
    );
    assert_eq!(out["movedParentA"], true);
    assert!(
        out["rootB"]
            .as_array()
            .unwrap()
            .contains(&json!("один.txt"))
    );
    // After rename, move and delete, both sessions agree.
    assert_eq!(out["finalA"], out["finalB"]);
    let final_names: Vec<&str> = out["finalA"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(final_names.len(), sizes.len() - 2);
    assert!(!final_names.contains(&"café 384K-16"));
    assert!(!final_names.contains(&"один.txt"));
    assert!(final_names.contains(&"renamed ✓ ß"));
    assert!(
        out["circular"].as_str().unwrap().contains("ECIRCULAR"),
        "{}",
        out["circular"]
    );
    // Quota as megajs reads it: everything uploaded minus the deleted file.
    let total: u64 = sizes.iter().map(|(s, _)| s).sum();
    assert_eq!(out["spaceUsed"], total - 393_200);
    assert_eq!(out["spaceTotal"], 20u64 << 30);
    // Every exchange megajs had with us was HTTP 200; it used the API, transfers and sc.
    let requests = out["requests"].as_array().unwrap();
    assert!(requests.iter().all(|r| r["status"] == 200), "{requests:?}");
    for path in ["cs", "ul", "dl", "sc", "wsc"] {
        assert!(
            requests.iter().any(|r| r["path"] == path),
            "megajs never used /{path}"
        );
    }

    let mut needles: Vec<Vec<u8>> = sizes.iter().map(|(_, n)| n.as_bytes().to_vec()).collect();
    needles.push(folder.as_bytes().to_vec());
    needles.push("renamed ✓ ß".as_bytes().to_vec());
    needles.push(password.as_bytes().to_vec());
    // 64 bytes from the middle of the largest file (a run unlikely to occur by chance).
    let big = test_buffer(5_242_885, 8 * 7 + 1, 8 + 3);
    needles.push(big[2_000_000..2_000_064].to_vec());
    needles
}
