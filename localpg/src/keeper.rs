//! Keeps a supervised child running: a thread waits on it and, when it exits without being
//! asked to, starts it again the same way (same folder, same ports), logging each restart, with
//! a backoff that doubles while it keeps dying and resets once it has run for a while.
//! `pgplane up` keeps its control-plane PostgreSQL and its etcd running this way.

use crate::Supervised;
use anyhow::Result;
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The first delay before a restart; doubled after each failed or short-lived run.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long counts as healthy: the next restart is immediate again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Starts the child and waits until it serves; called again for every restart.
pub type StartFn = Box<dyn FnMut() -> Result<Supervised> + Send + 'static>;

/// A child kept running until `stop`.
pub struct Keeper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    what: &'static str,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    current: Option<Arc<Supervised>>,
    stopping: bool,
    restarts: u64,
}

impl Keeper {
    /// Starts the child once (an error is returned as is) and then keeps it running.
    pub fn start(what: &'static str, mut start: StartFn) -> Result<Self> {
        let first = Arc::new(start()?);
        let shared = Arc::new(Shared {
            what,
            state: Mutex::new(State { current: Some(first), stopping: false, restarts: 0 }),
            wake: Condvar::new(),
        });
        let keeper = shared.clone();
        let thread = std::thread::Builder::new().name(format!("keep-{what}")).spawn(move || keeper.run(start))?;
        Ok(Keeper { shared, thread: Mutex::new(Some(thread)) })
    }

    /// The process id of the child running now (or of the last one while it restarts).
    pub fn pid(&self) -> u32 {
        self.shared.lock().current.as_ref().map(|c| c.pid()).unwrap_or(0)
    }

    /// How many times the child was started again since `start`.
    pub fn restarts(&self) -> u64 {
        self.shared.lock().restarts
    }

    /// The exit status of the current child, if it has exited and not been restarted yet.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.shared.lock().current.as_ref().and_then(|c| c.exit_status())
    }

    /// Stops keeping the child running, then stops it (the stop signal, SIGKILL after `grace`).
    pub fn stop(&self, grace: Duration) {
        let current = {
            let mut state = self.shared.lock();
            state.stopping = true;
            state.current.clone()
        };
        self.shared.wake.notify_all();
        if let Some(child) = current {
            child.stop(grace);
        }
        // A restart in progress finishes, sees `stopping` and stops what it started.
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, mut start: StartFn) {
        let mut backoff = FIRST_BACKOFF;
        let mut started = Instant::now();
        loop {
            let Some(child) = self.lock().current.clone() else { return };
            // The supervising thread reaps the child as it dies, so this wakes at once.
            let status = loop {
                if let Some(status) = child.wait_timeout(Duration::from_secs(3600)) {
                    break status;
                }
            };
            if self.lock().stopping {
                return;
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(what = self.what, pid = child.pid(), %status, delay_ms = backoff.as_millis() as u64, "exited unexpectedly; starting it again");
            // Wait out the backoff, then try again until a start succeeds.
            loop {
                {
                    let state = self.lock();
                    let (state, _) = self
                        .wake
                        .wait_timeout_while(state, backoff, |s| !s.stopping)
                        .unwrap_or_else(|e| e.into_inner());
                    if state.stopping {
                        return;
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                started = Instant::now();
                match start() {
                    Ok(new) => {
                        let new = Arc::new(new);
                        let mut state = self.lock();
                        if state.stopping {
                            drop(state);
                            new.stop(Duration::from_secs(30));
                            return;
                        }
                        state.restarts += 1;
                        state.current = Some(new.clone());
                        tracing::warn!(what = self.what, pid = new.pid(), restarts = state.restarts, "started again");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(
                            what = self.what,
                            error = format!("{e:#}"),
                            delay_ms = backoff.as_millis() as u64,
                            "could not start it again; retrying"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_killed_child_is_started_again_until_stopped() {
        // The second start fails: the keeper retries after its backoff.
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let keeper = Keeper::start(
            "sleep",
            Box::new(move || {
                if counted.fetch_add(1, Ordering::SeqCst) == 1 {
                    anyhow::bail!("refusing the first restart");
                }
                let mut cmd = Command::new("sleep");
                cmd.arg("600");
                Ok(Supervised::spawn(cmd, libc::SIGTERM)?)
            }),
        )
        .unwrap();
        let first = keeper.pid();
        assert!(Command::new("kill").args(["-9", &first.to_string()]).status().unwrap().success());
        wait_until("the child was not started again", || keeper.restarts() == 1);
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        let second = keeper.pid();
        assert!(second != first && alive(second) && !alive(first), "the killed child was not reaped");
        keeper.stop(Duration::from_secs(5));
        assert!(!alive(second));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(keeper.restarts(), 1, "a stopped child was started again");
    }
}
