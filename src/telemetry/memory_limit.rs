//! The memory this process may use: its cgroup's limit (v2 `memory.max`,
//! or v1 `memory.limit_in_bytes`, the lowest along the path), or the host's
//! total memory when no cgroup sets one. Exported as
//! `herald_memory_limit_bytes{source}` so dashboards and alerts can set
//! resident memory against it.

use std::path::{Path, PathBuf};

/// Limits at or above this are "unlimited" (cgroup v1 reports ~2^63).
const UNLIMITED: u64 = 1 << 60;

/// Where a limit came from: the metric's `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// A cgroup (container or systemd unit) limit.
    Cgroup,
    /// No cgroup limit: the host's `MemTotal`.
    Host,
}

impl LimitSource {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cgroup => "cgroup",
            Self::Host => "host",
        }
    }
}

/// The effective memory limit in bytes, and where it came from; `None`
/// only where neither cgroups nor `/proc/meminfo` can be read.
pub fn read() -> Option<(u64, LimitSource)> {
    let host = host_total();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_limit(&text, Path::new("/sys/fs/cgroup")));
    match (cgroup, host) {
        (Some(c), Some(h)) if c < h => Some((c, LimitSource::Cgroup)),
        (Some(c), None) => Some((c, LimitSource::Cgroup)),
        (_, Some(h)) => Some((h, LimitSource::Host)),
        (None, None) => None,
    }
}

fn host_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The lowest finite limit of this process's cgroup and its ancestors, from
/// the `/proc/self/cgroup` text, under the cgroup mount `root`.
fn cgroup_limit(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let candidates: Vec<PathBuf> = if controllers.is_empty() {
            // cgroup v2: one unified hierarchy.
            ancestors(root, path, "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ancestors(&root.join("memory"), path, "memory.limit_in_bytes")
        } else {
            continue;
        };
        for file in candidates {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            if let Ok(v) = text.trim().parse::<u64>()
                && v < UNLIMITED
            {
                best = Some(best.map_or(v, |b| b.min(v)));
            }
        }
    }
    best
}

/// `base/<path>/file` and the same file in every ancestor up to `base`.
fn ancestors(base: &Path, path: &str, file: &str) -> Vec<PathBuf> {
    let mut dir = base.join(path.trim_start_matches('/'));
    let mut out = vec![dir.join(file)];
    while dir != base && dir.pop() {
        out.push(dir.join(file));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_limit_along_the_path_wins() {
        let root = std::env::temp_dir().join(format!("herald-cg-{}", std::process::id()));
        let leaf = root.join("kubepods/pod1/c1");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        std::fs::write(root.join("kubepods/memory.max"), "max\n").expect("write");
        std::fs::write(root.join("kubepods/pod1/memory.max"), "536870912\n").expect("write");
        std::fs::write(leaf.join("memory.max"), "max\n").expect("write");
        assert_eq!(
            cgroup_limit("0::/kubepods/pod1/c1\n", &root),
            Some(512 << 20)
        );
        // v1 reports "unlimited" as a huge number.
        let v1 = root.join("memory/app");
        std::fs::create_dir_all(&v1).expect("mkdir");
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").expect("write");
        assert_eq!(cgroup_limit("4:memory:/app\n", &root), None);
        std::fs::write(v1.join("memory.limit_in_bytes"), "1073741824\n").expect("write");
        assert_eq!(cgroup_limit("4:cpu,memory:/app\n", &root), Some(1 << 30));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn this_host_has_a_limit() {
        let (bytes, _) = read().expect("/proc/meminfo is readable on Linux");
        assert!(bytes > 1 << 20);
    }
}
