//! A child process we are the parent of: a dedicated thread spawns it and waits on it, so it
//! is always reaped (no zombie holding PostgreSQL's lock file). `spawn`: the kernel signals it
//! if our process dies (PR_SET_PDEATHSIG); `spawn_detached`: it outlives us in its own session.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub struct Supervised {
    pid: u32,
    exit: Arc<(Mutex<Option<ExitStatus>>, Condvar)>,
    stop_signal: i32,
}

impl Supervised {
    /// Spawns `cmd`; `stop_signal` is sent by `stop` and by the kernel if we die.
    pub fn spawn(cmd: Command, stop_signal: i32) -> io::Result<Self> {
        Self::spawn_with(cmd, stop_signal, true, None)
    }

    /// Spawns `cmd` in a new session (its own process group, no controlling terminal) and
    /// without a parent-death signal: it outlives our process, and signals sent to our process
    /// group (Ctrl-C in a terminal) do not reach it. We still reap it while we live.
    pub fn spawn_detached(cmd: Command, stop_signal: i32) -> io::Result<Self> {
        Self::spawn_with(cmd, stop_signal, false, None)
    }

    /// `spawn_detached`, calling `on_exit` (on the waiting thread) once the child has exited
    /// and its status is recorded.
    pub fn spawn_detached_notify(
        cmd: Command,
        stop_signal: i32,
        on_exit: Box<dyn FnOnce() + Send + 'static>,
    ) -> io::Result<Self> {
        Self::spawn_with(cmd, stop_signal, false, Some(on_exit))
    }

    fn spawn_with(
        mut cmd: Command,
        stop_signal: i32,
        die_with_us: bool,
        on_exit: Option<Box<dyn FnOnce() + Send + 'static>>,
    ) -> io::Result<Self> {
        // SAFETY: prctl, getppid and setsid are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if !die_with_us {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    return Ok(());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() == 1 {
                    return Err(io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let exit = Arc::new((Mutex::new(None), Condvar::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = exit.clone();
        std::thread::Builder::new().name("supervise".into()).spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let status = child.wait();
                let (lock, cvar) = &*waiter;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(-1)));
                cvar.notify_all();
                if let Some(f) = on_exit {
                    f();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
        let pid = rx.recv().map_err(|_| io::Error::other("supervisor thread died"))??;
        Ok(Supervised { pid, exit, stop_signal })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the child has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn signal(&self, signal: i32) {
        if self.exit_status().is_none() {
            // SAFETY: kill(2) takes no pointers. The pid is our child's; the only window in which
            // it could name another process is between the waiter reaping the child and recording
            // its exit, a few instructions during which the kernel would have to reuse the pid.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// Sends the stop signal and waits up to `grace`, then SIGKILL and waits for good.
    pub fn stop(&self, grace: Duration) {
        self.signal(self.stop_signal);
        if self.wait_timeout(grace).is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(3600));
        }
    }

    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let (lock, cvar) = &*self.exit;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cvar.wait_timeout_while(guard, timeout, |s| s.is_none()).unwrap_or_else(|e| e.into_inner());
        *guard
    }
}
