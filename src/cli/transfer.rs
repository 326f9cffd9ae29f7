//! `veilfs get` and `veilfs put`: files and folder trees between the shell and the account,
//! several files at once, each file in parallel ranges, with progress on a terminal.
//!
//! Downloads land in `<name>.veilfs-part` and are renamed into place only once every chunk's MAC
//! matched the file key, so a failed or tampered download never leaves a plausible file.
//! Uploads resume after an interruption (see `resume.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;

use super::account::{self, AccountArgs};
use super::drive::{Drive, Index, mega, node_key, split_parent};
use super::progress::Progress;
use super::resume;
use crate::content::Content;
use crate::crypto::mega::FileKey;
use crate::mega::client::MegaClient;
use crate::mega::nodes::NodeKey;
use crate::mega::remote::{attributes, to_tree_node};
use crate::mega::transfer::{self as mt, UploadResume};
use crate::mega::{ErrorCode, MegaError, fingerprint};
use crate::remote::Meta;
use crate::tree::{Handle, Node, NodeKind};

/// Files transferred at once (each also runs several ranges in parallel).
const PARALLEL_FILES: usize = 4;

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Download folders and everything in them.
    #[arg(short = 'r')]
    pub recursive: bool,
    /// A remote path, or a public link (https://…/file/…#key, …/folder/…#key, #!…!…, #F!…!…).
    pub remote: String,
    /// Local destination: a new path, or an existing folder to download into (default: the
    /// current folder).
    pub local: Option<PathBuf>,
    /// With a link: the API server to ask (default: derived from the link's host).
    #[arg(long, value_name = "URL")]
    pub link_server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PutArgs {
    /// Upload folders and everything in them.
    #[arg(short = 'r')]
    pub recursive: bool,
    pub local: PathBuf,
    /// A new remote path, or an existing folder to upload into (default: the root).
    #[arg(default_value = "/")]
    pub remote: String,
}

/// One file to download: where its encrypted data is and what to check it against.
pub struct Download {
    pub label: String,
    pub key: FileKey,
    pub meta_mac: [u8; 8],
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: Option<u32>,
    pub local: PathBuf,
    /// Asks for the download URL (`g`) when the file's turn comes.
    pub source: Source,
}

pub enum Source {
    /// A node of the logged-in account (or of a public folder, through that folder's API).
    Node(String),
    /// A public file link's handle.
    PublicFile(String),
}

/// Runs downloads, [`PARALLEL_FILES`] at a time; reports each failure and fails if any did.
pub async fn run_downloads(
    api: &crate::mega::ApiClient,
    jobs: Vec<Download>,
) -> anyhow::Result<()> {
    let total = jobs.iter().map(|j| j.size).sum();
    let progress = Progress::new(total, jobs.len());
    let failures: Vec<String> = futures_util::stream::iter(jobs)
        .map(|job| {
            let progress = &progress;
            async move {
                let result = download_one(api, &job, progress).await;
                result
                    .err()
                    .map(|e| format!("{}: {e:#}", job.local.display()))
            }
        })
        .buffer_unordered(PARALLEL_FILES)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    progress.finish();
    report(failures)
}

fn report(failures: Vec<String>) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        eprintln!("veilfs: {f}");
    }
    bail!("{} transfer(s) failed", failures.len())
}

async fn download_one(
    api: &crate::mega::ApiClient,
    job: &Download,
    progress: &Progress,
) -> anyhow::Result<()> {
    let bar = progress.file(&job.label, job.size);
    let url = if job.size == 0 {
        String::new()
    } else {
        let info = match &job.source {
            Source::Node(h) => mt::download_info(api, h, Default::default()).await?,
            Source::PublicFile(ph) => super::links::public_file_info(api, ph).await?,
        };
        info.url
    };
    let name = job
        .local
        .file_name()
        .context("the destination has no file name")?
        .to_string_lossy();
    let part = job.local.with_file_name(format!(".{name}.veilfs-part"));
    let file =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let result = mt::download_to_file(
        api.http(),
        api.policy(),
        &url,
        &job.key,
        &job.meta_mac,
        job.size,
        &file,
        bar.counter(),
    )
    .await
    .map_err(anyhow::Error::from)
    .and_then(|()| {
        file.set_modified(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(job.mtime_ns.max(0) as u64),
        )?;
        if let Some(mode) = job.mode {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
        }
        file.sync_all()?;
        std::fs::rename(&part, &job.local)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// The download of a file node, to `local`.
pub fn node_download(node: &Node, local: PathBuf, label: String) -> anyhow::Result<Download> {
    let NodeKey::File { key, meta_mac } = node_key(node)? else {
        bail!("{}: not a file", node.name);
    };
    Ok(Download {
        label,
        key,
        meta_mac,
        size: node.size,
        mtime_ns: node.mtime_ns,
        mode: node.mode,
        local,
        source: Source::Node(mega(node.handle)?),
    })
}

/// Plans the download of `node` (a file, or with `recursive` a folder) to `local`: an existing
/// local folder receives it under its own name. Creates the local folders.
pub fn plan_downloads(
    drive: &Index,
    node: &Node,
    local: Option<&Path>,
    recursive: bool,
) -> anyhow::Result<Vec<Download>> {
    let local = local.unwrap_or(Path::new("."));
    let target = if local.is_dir() {
        local.join(safe_local_name(&node.name)?)
    } else {
        local.to_path_buf()
    };
    if node.kind == NodeKind::File {
        return Ok(vec![node_download(
            node,
            target,
            drive.path_of(node.handle),
        )?]);
    }
    if !recursive {
        bail!("{}: is a folder (use -r)", drive.path_of(node.handle));
    }
    let mut jobs = Vec::new();
    let mut stack = vec![(node.handle, target)];
    while let Some((folder, dir)) = stack.pop() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for kid in drive.children(folder) {
            let path = dir.join(safe_local_name(&kid.name)?);
            match kid.kind {
                NodeKind::File => jobs.push(node_download(kid, path, drive.path_of(kid.handle))?),
                _ => stack.push((kid.handle, path)),
            }
        }
    }
    Ok(jobs)
}

/// A remote name as a local file name: one that cannot climb out of the destination.
fn safe_local_name(name: &str) -> anyhow::Result<String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("{name:?} cannot be a local file name");
    }
    Ok(name.to_string())
}

pub async fn get(account: AccountArgs, args: GetArgs) -> anyhow::Result<()> {
    if super::links::looks_like_link(&args.remote) {
        return super::links::get(&args).await;
    }
    let drive = Drive::load(account::open(&account).await?).await?;
    let node = drive.get(&args.remote)?;
    let jobs = plan_downloads(&drive, node, args.local.as_deref(), args.recursive)?;
    run_downloads(drive.client.api(), jobs).await
}

/// One file to upload.
struct Upload {
    local: PathBuf,
    parent: Handle,
    name: String,
    /// A file of the name already there: replaced once the new one exists.
    replaces: Option<Node>,
}

pub async fn put(account: AccountArgs, args: PutArgs) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(&args.local).with_context(|| format!("{}", args.local.display()))?;
    let mut drive = Drive::load(account::open(&account).await?).await?;
    // Into an existing folder under the local name, or to a new path.
    let (parent, name) = match drive.resolve(&args.remote) {
        Some(n) if n.kind != NodeKind::File => (n.handle, super::files::local_name(&args.local)?),
        Some(n) if meta.is_dir() => bail!("{}: a file is in the way", drive.path_of(n.handle)),
        // `put f /Docs/` means "into the folder /Docs", never "as a file named Docs".
        _ if args.remote.ends_with('/') => bail!("{}: no such folder", args.remote),
        _ => {
            let (parent, name) = split_parent(&args.remote);
            let name = name.expect("the root exists");
            (drive.folder(&parent)?.handle, name)
        }
    };
    let mut jobs = Vec::new();
    if meta.is_dir() {
        if !args.recursive {
            bail!("{}: is a folder (use -r)", args.local.display());
        }
        let mut stack = vec![(args.local.clone(), parent, name)];
        while let Some((dir, parent, name)) = stack.pop() {
            let folder = match drive.child(parent, &name) {
                Some(n) if n.kind == NodeKind::File => {
                    bail!("{}: a file is in the way", drive.path_of(n.handle))
                }
                Some(n) => n.handle,
                None => drive.mkdir(parent, &name).await?.handle,
            };
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let kind = entry.file_type()?;
                let child_name = entry.file_name().to_string_lossy().into_owned();
                if kind.is_dir() {
                    stack.push((entry.path(), folder, child_name));
                } else if kind.is_file() {
                    jobs.push(upload_job(&drive, entry.path(), folder, child_name)?);
                } else {
                    eprintln!(
                        "veilfs: skipping {} (not a regular file)",
                        entry.path().display()
                    );
                }
            }
        }
    } else {
        jobs.push(upload_job(&drive, args.local.clone(), parent, name)?);
    }
    run_uploads(&drive, jobs).await
}

fn upload_job(
    drive: &Drive,
    local: PathBuf,
    parent: Handle,
    name: String,
) -> anyhow::Result<Upload> {
    let replaces = match drive.child(parent, &name) {
        Some(n) if n.kind != NodeKind::File => {
            bail!("{}: a folder is in the way", drive.path_of(n.handle))
        }
        other => other.cloned(),
    };
    Ok(Upload {
        local,
        parent,
        name,
        replaces,
    })
}

async fn run_uploads(drive: &Drive, jobs: Vec<Upload>) -> anyhow::Result<()> {
    let sizes: Vec<u64> = jobs
        .iter()
        .map(|j| std::fs::metadata(&j.local).map(|m| m.len()).unwrap_or(0))
        .collect();
    let progress = Progress::new(sizes.iter().sum(), jobs.len());
    let client = &drive.client;
    let failures: Vec<String> = futures_util::stream::iter(jobs.into_iter().zip(sizes))
        .map(|(job, size)| {
            let progress = &progress;
            async move {
                let label = format!("{}", job.local.display());
                let result = upload_one(client, &job, size, &label, progress).await;
                result.err().map(|e| format!("{label}: {e:#}"))
            }
        })
        .buffer_unordered(PARALLEL_FILES)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    progress.finish();
    report(failures)
}

async fn upload_one(
    client: &MegaClient,
    job: &Upload,
    size: u64,
    label: &str,
    progress: &Progress,
) -> anyhow::Result<Node> {
    let meta = std::fs::metadata(&job.local)?;
    let mtime_ns = {
        use std::os::unix::fs::MetadataExt;
        meta.mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec())
    };
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    };
    let fp = fingerprint::fingerprint(
        &std::fs::File::open(&job.local)?,
        size,
        mtime_ns.div_euclid(1_000_000_000),
    )?;
    let base = job
        .replaces
        .as_ref()
        .map(|n| n.attrs.clone())
        .unwrap_or_default();
    let attrs = attributes(
        &base,
        &Meta {
            name: job.name.clone(),
            mode: Some(mode),
            mtime_ns,
            symlink: None,
        },
        Some(fp),
    );
    let parent = mega(job.parent)?;
    let local = std::fs::canonicalize(&job.local)?;
    let journal = resume::path_for(&resume::UploadId {
        server: &client.session().server,
        user: &client.session().user_handle,
        local: &local,
        size,
        mtime_ns,
        parent: &parent,
        name: &job.name,
    });

    let mut fresh = false;
    let (key, uploaded) = loop {
        let (key, state) = match resume::load(&journal).filter(|_| !fresh) {
            Some((key, state)) => {
                progress.println(&format!(
                    "resuming the upload of {label} ({} of {} already sent)",
                    super::format::size(sent_bytes(size, &state)),
                    super::format::size(size)
                ));
                (key, state)
            }
            None => {
                let key = FileKey::generate();
                let state = UploadResume {
                    url: mt::upload_url(client.api(), size, Default::default()).await?,
                    ..UploadResume::default()
                };
                resume::save(&journal, &key, &state)?;
                fresh = true;
                (key, state)
            }
        };
        let bar = progress.file(label, size);
        let recorder = Arc::new(Mutex::new(state.clone()));
        let on_post = {
            let (journal, key) = (journal.clone(), key.clone());
            move |start: u64, token: Option<&str>| {
                let mut state = recorder.lock().expect("journal lock");
                state.done.insert(start);
                if let Some(t) = token {
                    state.token = Some(t.to_string());
                }
                // Held under the lock: saves of one journal must not interleave.
                if let Err(error) = resume::save(&journal, &key, &state) {
                    tracing::warn!(%error, "cannot record upload progress");
                }
            }
        };
        match mt::upload_to(
            client.api(),
            &Content::File(job.local.clone()),
            &key,
            &state,
            bar.counter(),
            on_post,
        )
        .await
        {
            Ok(uploaded) => break (key, uploaded),
            // The server forgot the upload (restarted, or its lifetime passed): start over.
            Err(
                MegaError::Api(ErrorCode::Expired | ErrorCode::NotFound | ErrorCode::Args)
                | MegaError::Http(404 | 410)
                | MegaError::Malformed(_),
            ) if !fresh => {
                progress.println(&format!(
                    "{label}: the server no longer has the upload; starting over"
                ));
                resume::forget(&journal);
                fresh = true;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let node = client
        .commit_upload(
            &parent,
            key,
            &uploaded,
            &attrs,
            job.replaces
                .as_ref()
                .map(|n| mega(n.handle))
                .transpose()?
                .as_deref(),
        )
        .await?;
    resume::forget(&journal);
    to_tree_node(node).context("the new file has no handle")
}

/// Bytes the server already holds according to `state`.
fn sent_bytes(size: u64, state: &UploadResume) -> u64 {
    mt::upload_posts(size)
        .into_iter()
        .filter(|r| state.done.contains(&r.start))
        .map(|r| r.end - r.start)
        .sum()
}
