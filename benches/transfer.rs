//! Transfer throughput of our own client (`veilfs::mega::MegaClient`) against a running
//! `veilfs serve`. `scripts/bench/transfer.sh` starts the server, creates the account, runs this
//! and the megajs counterpart (`tests/interop/megajs_bench.js`) and prints the table.
//!
//!   VEILFS_BENCH_SERVER=http://127.0.0.1:PORT/ VEILFS_BENCH_EMAIL=… VEILFS_BENCH_PASSWORD=… \
//!   cargo bench --bench transfer -- FILE...
//!
//! For each file: uploads it (encrypt + chunk MACs + POSTs + `p`), then downloads it (ranged GETs,
//! decryption, chunk MACs and the meta-MAC check against the node key), each timed on its own.
//! The download is compared with the file after the clock stops. Prints one line per file:
//! `rust <bytes> <upload seconds> <download seconds>`.
//!
//! `cargo test --all-targets` builds and runs bench targets too, without `--bench`: then this
//! does nothing, so the test suite needs no server.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

mod common;

use anyhow::{anyhow, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use veilfs::crypto::mega::{self as mc, FileKey};
use veilfs::mega::MegaClient;
use veilfs::mega::nodes::{DecryptedNode, NodeKey};

/// Bytes per download GET: whole MAC chunks up to this size, as many GETs in flight as uploads
/// have POSTs (8 MiB, 4), so both directions pipeline the same way.
const DOWNLOAD_GET_BYTES: u64 = 8 << 20;
const DOWNLOAD_PARALLELISM: usize = 4;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("transfer bench: needs a server; see scripts/bench/transfer.sh");
        return Ok(());
    }
    let files: Vec<PathBuf> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .collect();
    if files.is_empty() {
        bail!("usage: cargo bench --bench transfer -- FILE...");
    }
    tokio::runtime::Runtime::new()?.block_on(run(&files))
}

async fn run(files: &[PathBuf]) -> anyhow::Result<()> {
    let (client, folder) = common::login_with_folder("rust bench").await?;

    for path in files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let start = Instant::now();
        let node = client
            .upload(&folder, path, &common::named(&name), None, |_| {})
            .await?;
        let up = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let got = download(&client, &node).await?;
        let down = start.elapsed().as_secs_f64();

        if got != std::fs::read(path)? {
            bail!("downloaded content differs from {}", path.display());
        }
        println!("rust {} {up:.4} {down:.4}", got.len());
    }
    Ok(())
}

/// Downloads and decrypts a file node, checking every chunk MAC against the node's meta-MAC.
async fn download(client: &MegaClient, node: &DecryptedNode) -> anyhow::Result<Vec<u8>> {
    let Some(NodeKey::File { key, meta_mac }) = &node.key else {
        bail!("not a file node");
    };
    let info = client.download_info(&node.wire.h).await?;
    let size = info.size;
    let mut plain = vec![0u8; size as usize];
    let mut macs = mc::MacAccumulator::new(key, size);
    let mut pieces = futures_util::stream::iter(get_ranges(size))
        .map(|range| fetch_and_decrypt(client, &info.url, key, size, range))
        .buffer_unordered(DOWNLOAD_PARALLELISM);
    while let Some((range, data, chunk_macs)) = pieces.try_next().await? {
        plain[range.start as usize..range.end as usize].copy_from_slice(&data);
        let first = mc::chunk_index(range.start);
        for (i, mac) in chunk_macs.into_iter().enumerate() {
            macs.insert(first + i as u64, mac)?;
        }
    }
    macs.verify(meta_mac)
        .map_err(|e| anyhow!("MAC check failed: {e}"))?;
    Ok(plain)
}

/// One GET, then decryption and the MACs of the chunks it holds, off the async threads.
async fn fetch_and_decrypt(
    client: &MegaClient,
    url: &str,
    key: &FileKey,
    size: u64,
    range: Range<u64>,
) -> anyhow::Result<(Range<u64>, Vec<u8>, Vec<[u8; 16]>)> {
    let cipher = client.fetch_range(url, range.clone()).await?;
    let key = key.clone();
    tokio::task::spawn_blocking(move || {
        let mut data = cipher.to_vec();
        mc::ctr_apply(&key, range.start, &mut data);
        let spans: Vec<Range<u64>> = (mc::chunk_index(range.start)..)
            .map(|i| mc::chunk_range(i, size))
            .take_while(|r| r.start < range.end)
            .collect();
        let chunks: Vec<&[u8]> = spans
            .iter()
            .map(|r| &data[(r.start - range.start) as usize..(r.end - range.start) as usize])
            .collect();
        let macs = mc::chunk_macs(&key, &chunks);
        (range, data, macs)
    })
    .await
    .map_err(Into::into)
}

/// The GET ranges of a file of `size` bytes: whole MAC chunks, at most [`DOWNLOAD_GET_BYTES`].
fn get_ranges(size: u64) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for chunk in mc::chunk_spans(size) {
        match ranges.last_mut() {
            Some(last) if chunk.end - last.start <= DOWNLOAD_GET_BYTES => last.end = chunk.end,
            _ => ranges.push(chunk),
        }
    }
    ranges
}
