//! What the benches that need a running `veilfs serve` share: the account named by the
//! environment (`VEILFS_BENCH_SERVER`, `VEILFS_BENCH_EMAIL`, `VEILFS_BENCH_PASSWORD`, set by
//! the scripts in `scripts/bench/`).

use anyhow::{Context as _, anyhow};
use serde_json::{Map, Value};
use veilfs::mega::MegaClient;
use veilfs::mega::session::Credentials;
use veilfs::mega::transfer::TransferOptions;
use veilfs::retry::RetryPolicy;
use zeroize::Zeroizing;

/// Logs in to the bench account and makes folder `name` at its root; returns the client and
/// the new folder's handle.
pub async fn login_with_folder(name: &str) -> anyhow::Result<(MegaClient, String)> {
    let env = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let client = MegaClient::login(
        &env("VEILFS_BENCH_SERVER")?,
        &Credentials {
            email: env("VEILFS_BENCH_EMAIL")?,
            password: Zeroizing::new(env("VEILFS_BENCH_PASSWORD")?),
            mfa_code: None,
        },
        RetryPolicy::default(),
        TransferOptions::default(),
    )
    .await?;
    let (nodes, _) = client.fetch_tree().await?;
    let root = nodes
        .iter()
        .find(|n| n.wire.t == 2)
        .ok_or_else(|| anyhow!("the account has no root folder"))?;
    let folder = client.mkdir(&root.wire.h, &named(name)).await?;
    Ok((client, folder.wire.h))
}

/// Node attributes holding only a name.
pub fn named(name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("n".into(), Value::String(name.into()));
    m
}
