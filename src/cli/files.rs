//! `veilfs ls`, `mkdir`, `mv`, `rm`: the account's tree from the shell, without a mount.

use std::path::PathBuf;

use anyhow::bail;

use super::account::{self, AccountArgs};
use super::drive::{Drive, split_parent};
use super::format;
use crate::tree::{Node, NodeKind};

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Long listing: type, size, modification time (UTC).
    #[arg(short = 'l')]
    pub long: bool,
    /// List folders recursively.
    #[arg(short = 'R')]
    pub recursive: bool,
    /// Remote path (default: the Cloud Drive root).
    #[arg(default_value = "/")]
    pub path: String,
}

#[derive(clap::Args, Debug)]
pub struct MkdirArgs {
    /// Create missing parents; an existing folder is not an error.
    #[arg(short = 'p')]
    pub parents: bool,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct MvArgs {
    pub from: String,
    /// A new path, or an existing folder to move into.
    pub to: String,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Delete folders and everything in them.
    #[arg(short = 'r')]
    pub recursive: bool,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

fn line(node: &Node, long: bool) -> String {
    let name = if node.kind == NodeKind::File {
        node.name.clone()
    } else {
        format!("{}/", node.name)
    };
    if !long {
        return name;
    }
    let kind = match node.kind {
        NodeKind::File => '-',
        _ => 'd',
    };
    format!(
        "{kind} {:>12}  {}  {name}",
        if node.kind == NodeKind::File {
            node.size.to_string()
        } else {
            "-".into()
        },
        format::date(node.mtime_ns.div_euclid(1_000_000_000)),
    )
}

pub async fn ls(account: AccountArgs, args: LsArgs) -> anyhow::Result<()> {
    let drive = Drive::load(account::open(&account).await?).await?;
    let node = drive.get(&args.path)?;
    if node.kind == NodeKind::File {
        println!("{}", line(node, args.long));
        return Ok(());
    }
    let mut out = String::new();
    let mut queue = vec![node.handle];
    let mut first = true;
    while let Some(folder) = queue.pop() {
        if args.recursive {
            if !first {
                out.push('\n');
            }
            out.push_str(&format!("{}:\n", drive.path_of(folder)));
        }
        first = false;
        let kids = drive.children(folder);
        for kid in &kids {
            out.push_str(&line(kid, args.long));
            out.push('\n');
        }
        if args.recursive {
            // Depth first, in name order: push in reverse so the first name pops first.
            queue.extend(
                kids.iter()
                    .rev()
                    .filter(|k| k.kind != NodeKind::File)
                    .map(|k| k.handle),
            );
        }
    }
    print!("{out}");
    Ok(())
}

pub async fn mkdir(account: AccountArgs, args: MkdirArgs) -> anyhow::Result<()> {
    let mut drive = Drive::load(account::open(&account).await?).await?;
    for path in &args.paths {
        if args.parents {
            drive.mkdir_p(path).await?;
            continue;
        }
        let (parent, name) = split_parent(path);
        let Some(name) = name else {
            bail!("{path}: the root already exists");
        };
        if drive.resolve(path).is_some() {
            bail!("{path}: already exists");
        }
        let parent = drive.folder(&parent)?.handle;
        drive.mkdir(parent, &name).await?;
    }
    Ok(())
}

pub async fn mv(account: AccountArgs, args: MvArgs) -> anyhow::Result<()> {
    let mut drive = Drive::load(account::open(&account).await?).await?;
    let node = drive.get(&args.from)?.clone();
    if node.handle == drive.root().handle {
        bail!("the root cannot be moved");
    }
    // Into an existing folder under the same name, or to a new path.
    let (parent, name) = match drive.resolve(&args.to) {
        Some(dest) if dest.kind != NodeKind::File => (dest.handle, node.name.clone()),
        Some(_) => bail!("{}: already exists", args.to),
        None if args.to.ends_with('/') => bail!("{}: no such folder", args.to),
        None => {
            let (parent, name) = split_parent(&args.to);
            let name = name.expect("only the root has no name, and it exists");
            (drive.folder(&parent)?.handle, name)
        }
    };
    if drive
        .child(parent, &name)
        .is_some_and(|n| n.handle != node.handle)
    {
        bail!("{}/{name}: already exists", drive.path_of(parent));
    }
    if node.parent != Some(parent) {
        drive.move_to(node.handle, parent).await?;
    }
    if node.name != name {
        drive.rename(node.handle, &name).await?;
    }
    Ok(())
}

pub async fn rm(account: AccountArgs, args: RmArgs) -> anyhow::Result<()> {
    let mut drive = Drive::load(account::open(&account).await?).await?;
    // Check every path before deleting anything: a typo must not leave half the job done.
    let mut doomed = Vec::new();
    for path in &args.paths {
        let node = drive.get(path)?;
        if node.handle == drive.root().handle {
            bail!("refusing to delete the root");
        }
        if node.kind != NodeKind::File && !args.recursive {
            bail!("{path}: is a folder (use -r)");
        }
        doomed.push(node.handle);
    }
    for handle in doomed {
        drive.delete(handle).await?;
    }
    Ok(())
}

/// A local path's file name as the remote name of its copy.
pub fn local_name(path: &std::path::Path) -> anyhow::Result<String> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    match canonical.file_name() {
        Some(n) => Ok(n.to_string_lossy().into_owned()),
        None => bail!("{}: has no file name", path.display()),
    }
}
