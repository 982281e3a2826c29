//! Step process groups that outlive their worker. A step runs in a process
//! group of its own, so a worker killed with SIGKILL leaves it running in
//! the builder's directory. Each running group is noted in
//! `<basedir>/.steps/` (its id and the kernel's start time of its leader,
//! so a reused pid is never taken for it), and a worker starting on that
//! directory kills what its predecessor left before it takes a build.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A running step's group, noted on disk until dropped.
pub struct NotedGroup {
    path: Option<PathBuf>,
}

impl Drop for NotedGroup {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`); none when it is gone.
fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19).map(str::to_owned)
}

/// Notes the group of a step just started. A note that cannot be written
/// (a full disk) is logged: that group would then outlive a SIGKILL.
pub fn note(basedir: &Path, group: i32) -> NotedGroup {
    let dir = basedir.join(".steps");
    let path = dir.join(group.to_string());
    let written = start_time(group)
        .ok_or_else(|| std::io::Error::other("the step already ended"))
        .and_then(|started| std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, started)));
    match written {
        Ok(()) => NotedGroup { path: Some(path) },
        Err(error) => {
            tracing::warn!(%error, group, "cannot note a step's process group; it would outlive a killed worker");
            NotedGroup { path: None }
        }
    }
}

/// Kills every step group a previous worker on `basedir` left running;
/// returns how many.
pub fn kill_orphans(basedir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(basedir.join(".steps")) else { return 0 };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let group = path.file_name().and_then(|name| name.to_str()).and_then(|name| name.parse::<i32>().ok());
        let noted = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(group) = group
            && start_time(group).is_some_and(|started| started == noted.trim())
            && killpg(Pid::from_raw(group), Signal::SIGKILL).is_ok()
        {
            tracing::warn!(group, "killed a step a previous worker on this directory left running");
            killed += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}
