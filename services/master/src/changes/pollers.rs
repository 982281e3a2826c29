//! Git pollers, for repositories that send no webhook. Every master polls
//! (a fetch into a bare mirror of its own, in the system's temporary
//! directory) and records each commit new on a branch as one change, keyed
//! by repository, branch and revision: however many masters see it, it is
//! recorded, and built, once. The first look at a branch only notes where
//! it is.
//!
//! A `repourl` may carry credentials (`https://bot:token@…`): they are used
//! to fetch and never recorded; the change names the repository without
//! them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shared::config::PollerConfig;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Change, Delivery, Plan, branch_plan, record};
use crate::urls::without_credentials;
use crate::{Master, MasterError};

/// Commits handled per branch and poll, so a huge first gap cannot stall.
const MOST_COMMITS: usize = 100;
const SOURCE: &str = "git_poller";

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("cannot run git: {0}")]
    Spawn(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub async fn run(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    let mut last_poll: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let catalog = master.catalog();
        for poller in &catalog.config.master.pollers {
            let due = last_poll
                .get(&poller.repourl)
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(poller.poll_seconds));
            if !due {
                continue;
            }
            last_poll.insert(poller.repourl.clone(), Instant::now());
            if let Err(error) = poll(&master, poller).await {
                tracing::warn!(%error, repository = %without_credentials(&poller.repourl), "polling failed; trying again at the next poll");
            }
        }
    }
}

async fn poll(master: &Arc<Master>, poller: &PollerConfig) -> Result<(), PollError> {
    let mirror = mirror_of(master, &poller.repourl);
    if !mirror.join("HEAD").exists() {
        std::fs::create_dir_all(&mirror)?;
        git(&mirror, &["init", "-q", "--bare"]).await?;
    }
    let mut fetch = vec!["fetch".to_owned(), "-q".into(), "--no-tags".into(), poller.repourl.clone()];
    fetch.extend(poller.branches.iter().map(|branch| format!("+refs/heads/{branch}:refs/heads/{branch}")));
    git(&mirror, &fetch.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    for branch in &poller.branches {
        let head = git(&mirror, &["rev-parse", &format!("refs/heads/{branch}")]).await?;
        let last = master.store.last_change_revision(SOURCE, &without_credentials(&poller.repourl), branch).await?;
        let new: Vec<String> = match last {
            Some(last) if last == head => continue,
            Some(last) => match git(&mirror, &["rev-list", "--reverse", &format!("{last}..{head}")]).await {
                Ok(list) => list.lines().map(str::to_owned).collect(),
                // The old head is gone (a force push): the new one is the change.
                Err(_) => vec![head.clone()],
            },
            None => {
                note_baseline(master, poller, branch, &head).await?;
                continue;
            }
        };
        let skip = new.len().saturating_sub(MOST_COMMITS);
        for revision in &new[skip..] {
            let change = describe(&mirror, poller, branch, revision).await?;
            let plan = branch_plan(&master.catalog().config, change);
            let id = delivery(poller, branch, revision);
            record(master, SOURCE, Delivery { id: &id, payload_sha256: None }, &plan).await?;
        }
    }
    Ok(())
}

/// The first look at a branch: where it is, as a change that builds nothing.
async fn note_baseline(master: &Arc<Master>, poller: &PollerConfig, branch: &str, head: &str) -> Result<(), PollError> {
    let change = Change {
        repository: without_credentials(&poller.repourl),
        branch: branch.to_owned(),
        revision: head.to_owned(),
        author: String::new(),
        comments: "where the branch was when polling began".into(),
        files: Vec::new(),
        category: "poll-start".into(),
        pull_request: None,
    };
    let plan = Plan::record_only(change, "first look");
    let id = delivery(poller, branch, head);
    record(master, SOURCE, Delivery { id: &id, payload_sha256: None }, &plan).await?;
    Ok(())
}

/// One commit as a change: author, subject and the files it touches.
async fn describe(mirror: &Path, poller: &PollerConfig, branch: &str, revision: &str) -> Result<Change, PollError> {
    let summary = git(mirror, &["log", "-1", "--format=%an%x00%s", revision]).await?;
    let (author, subject) = summary.split_once('\0').unwrap_or((&summary, ""));
    let files = git(mirror, &["diff-tree", "--no-commit-id", "--name-only", "-r", "--root", revision]).await?;
    Ok(Change {
        repository: without_credentials(&poller.repourl),
        branch: branch.to_owned(),
        revision: revision.to_owned(),
        author: author.to_owned(),
        comments: subject.to_owned(),
        files: files.lines().map(str::to_owned).collect(),
        category: "poll".into(),
        pull_request: None,
    })
}

fn delivery(poller: &PollerConfig, branch: &str, revision: &str) -> String {
    format!("{SOURCE}:{}:{branch}:{revision}", without_credentials(&poller.repourl))
}

/// This master's mirror of a repository.
fn mirror_of(master: &Master, repourl: &str) -> PathBuf {
    let digest: String = Sha256::digest(repourl.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir()
        .join("buildmaster-pollers")
        .join(master.namespace.as_str())
        .join(format!("{}-{digest}", master.name))
}

async fn git(directory: &Path, args: &[&str]) -> Result<String, PollError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(directory)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    if !output.status.success() {
        return Err(PollError::Git {
            // A URL's credentials stay out of logs.
            args: args.iter().map(|arg| without_credentials(arg)).collect::<Vec<_>>().join(" "),
            stderr: args.iter().fold(String::from_utf8_lossy(&output.stderr).trim().to_owned(), |text, arg| {
                text.replace(arg, &without_credentials(arg))
            }),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
