//! Fills an account on a running `veilfs serve` with a large tree of empty files, quickly, for
//! the mount benchmarks of `scripts/bench/compare.sh` (listing a 50 000-node tree, mounting a
//! 100 000-node account):
//!
//!   VEILFS_BENCH_SERVER=http://127.0.0.1:PORT/ VEILFS_BENCH_EMAIL=… VEILFS_BENCH_PASSWORD=… \
//!   cargo bench --bench populate -- NAME TOP SUB FILES
//!
//! creates folder NAME at the root, TOP folders in it, SUB folders in each of those and FILES
//! empty files in each of those: 1 + TOP·(1 + SUB·(1 + FILES)) nodes. Going through the mount
//! would cost one round trip per node; here each file's (empty) upload is its own request, as
//! MEGA wants, but the nodes are created by the thousand with `p`
//! ([`MegaClient::put_nodes`]). Prints the number of nodes created.
//!
//! `cargo test --all-targets` runs bench targets without `--bench`: then this does nothing.

use std::path::Path;

use anyhow::bail;
use futures_util::{StreamExt as _, TryStreamExt as _};
use veilfs::mega::{MegaClient, NewContent, NewNode};

mod common;

/// Folders filled at once; each runs its uploads one after another.
const PARALLEL_FOLDERS: usize = 16;
/// Nodes per `p` (the server's limit).
const BATCH: usize = 1000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("populate bench: needs a server; see scripts/bench/compare.sh");
        return Ok(());
    }
    let args: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [name, top, sub, files] = args[..] else {
        bail!("usage: cargo bench --bench populate -- NAME TOP SUB FILES");
    };
    let shape = (top.parse()?, sub.parse()?, files.parse()?);
    tokio::runtime::Runtime::new()?.block_on(run(name, shape))
}

async fn run(name: &str, (top, sub, files): (usize, usize, usize)) -> anyhow::Result<()> {
    if sub + 1 > BATCH {
        bail!("at most {} subfolders per folder", BATCH - 1);
    }
    let (client, base) = common::login_with_folder(name).await?;

    // Each top folder and its subfolders in one batch.
    let mut leaves = Vec::with_capacity(top * sub);
    for t in 0..top {
        let mut batch = vec![NewNode {
            parent: None,
            content: NewContent::Folder,
            attributes: common::named(&format!("dir{t:04}")),
        }];
        batch.extend((0..sub).map(|s| NewNode {
            parent: Some(0),
            content: NewContent::Folder,
            attributes: common::named(&format!("sub{s:04}")),
        }));
        let created = client.put_nodes(&base, batch).await?;
        leaves.extend(created.into_iter().skip(1).map(|n| n.wire.h));
    }

    let scratch = tempfile::NamedTempFile::new()?;
    let empty = scratch.path();
    let client = &client;
    futures_util::stream::iter(leaves)
        .map(|folder| async move { fill(client, &folder, files, empty).await })
        .buffer_unordered(PARALLEL_FOLDERS)
        .try_collect::<()>()
        .await?;
    println!("{}", 1 + top * (1 + sub * (1 + files)));
    Ok(())
}

/// Uploads `files` empty files and creates them in `folder`, a batch at a time.
async fn fill(client: &MegaClient, folder: &str, files: usize, empty: &Path) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(files.min(BATCH));
    for f in 0..files {
        let (key, uploaded) = client.upload_data(empty, |_| {}).await?;
        batch.push(NewNode {
            parent: None,
            content: NewContent::File { key, uploaded },
            attributes: common::named(&format!("file{f:05}.txt")),
        });
        if batch.len() == BATCH || f + 1 == files {
            client.put_nodes(folder, std::mem::take(&mut batch)).await?;
        }
    }
    Ok(())
}
