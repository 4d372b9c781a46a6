//! The agent as the reaper of its data plane's orphans: a child subreaper, so a PostgreSQL whose
//! Patroni died is re-parented to the agent rather than to init, and reaped here (an unreaped
//! postmaster zombie keeps its lock file "in use", and the next Patroni could not start it).
#![allow(unsafe_code)]

/// Makes orphaned descendants of this process its children (PR_SET_CHILD_SUBREAPER).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot become a child subreaper");
    }
}

/// (state, parent, session) from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.chars().next()?, fields.get(1)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// Reaps our zombie children that are orphans of the data plane: they belong to a session that
/// is neither ours nor their own (a Patroni's or HAProxy's, which we start as session leaders
/// and whose own reaper threads wait on them). Children we wait on ourselves are never touched.
/// Returns how many were reaped.
pub fn reap_orphans() -> usize {
    let me = std::process::id();
    let Some((_, _, my_session)) = stat(me) else { return 0 };
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut reaped = 0;
    for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        let Some((state, parent, session)) = stat(pid) else { continue };
        if state == 'Z' && parent == me && session != my_session && session != pid {
            let mut status = 0;
            // SAFETY: waitpid on one of our own children, with a valid pointer to an int.
            if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) } == pid as libc::pid_t {
                reaped += 1;
            }
        }
    }
    if reaped > 0 {
        tracing::info!(reaped, "reaped orphaned processes of the data plane");
    }
    reaped
}

/// Runs `f` while a thread reaps orphans every 50 ms: Patroni waits for its PostgreSQL's pid to
/// vanish when it stops it, and the agent may be past its SIGCHLD task (shutting down).
pub fn reaping<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let reaper = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            reap_orphans();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    let out = f();
    done.store(true, Ordering::Relaxed);
    let _ = reaper.join();
    out
}
