//! The real megajs 1.3.10 against `veilfs serve`: an account made by `veilfs signup`'s code,
//! then login, mkdir, uploads of sizes around chunk boundaries with non-ASCII names, listing,
//! MAC-checked downloads, rename, move, delete, and a second megajs session that learns every
//! change from action packets alone. Afterwards the data directory is searched for plaintext.

mod common;
#[path = "support/megajs_round_trip.rs"]
mod megajs_round_trip;

use std::path::{Path, PathBuf};
use std::time::Duration;
use veilfs::server::{self, ServerConfig};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "veilfs-server-megajs-{}",
        hex::encode(veilfs::crypto::random_array::<6>())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megajs_uses_our_server_end_to_end() {
    let dir = temp_dir();
    let mut config = ServerConfig::new(dir.clone(), "127.0.0.1:0".parse().unwrap());
    config.wait_timeout = Duration::from_secs(20);
    let server = server::start(config).await.unwrap();
    let needles = megajs_round_trip::megajs_round_trip(&server).await;

    // Zero knowledge: no name, content sample, or password on the server's disk.
    server.shutdown().await.unwrap();
    let stored = all_files(&dir);
    assert!(stored.len() > 5, "{stored:?}");
    for path in stored {
        let bytes = std::fs::read(&path).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
