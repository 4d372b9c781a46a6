//! Looking at processes through /proc: which ones name a folder in their arguments (how the tests
//! count Patroni, PostgreSQL and HAProxy of one database), whether one is alive, and SIGKILL for
//! pids the test started or found in its own folders.

use std::path::Path;

// The agent's own /proc readers: the tests look at processes the way the agent does.
pub use pgplane_agent::process::{alive, arguments};

fn pids() -> Vec<u32> {
    let mut all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    all.sort();
    all
}

/// Live processes one of whose arguments is `path` or lies inside it.
pub fn naming(path: &Path) -> Vec<u32> {
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&pid| pid != me && alive(pid))
        .filter(|&pid| arguments(pid).iter().any(|a| Path::new(a).starts_with(path)))
        .collect()
}

/// Live processes with exactly `path` among their arguments.
pub fn running_exactly(path: &Path) -> Vec<u32> {
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&pid| pid != me && alive(pid))
        .filter(|&pid| arguments(pid).iter().any(|a| Path::new(a) == path))
        .collect()
}

/// The postmaster of a data folder, from its `postmaster.pid`.
pub fn postmaster(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

pub fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// SIGKILLs every process naming something inside `dir` (cleanup of a test's own folder).
pub fn kill_all_under(dir: &Path) {
    for _ in 0..3 {
        let left = naming(dir);
        if left.is_empty() {
            return;
        }
        left.into_iter().for_each(kill9);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// True when nobody listens on the loopback port.
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}
