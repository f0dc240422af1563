//! `--pause`: stop the target for an exact snapshot, and always let it go again.
//! The only place leakscope changes a target's state; opt-in, and announced.
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

pub struct Paused {
    pid: i32,
    started: Instant,
    /// The target was already stopped by someone else: leave it stopped.
    was_stopped: bool,
    old_mask: libc::sigset_t,
}

fn task_states(pid: i32) -> Vec<char> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        stat.rsplit(')').next()?.trim_start().chars().next()
    })
    .collect()
}

impl Paused {
    /// SIGSTOP, then wait (at most 2 s) until every thread is stopped. Ctrl-C and SIGTERM are
    /// held back until the target runs again, so no exit path leaves it stopped (only an
    /// uncatchable SIGKILL of leakscope could).
    pub fn stop(pid: u32) -> Result<Paused> {
        let pid = pid as i32;
        let was_stopped = task_states(pid).iter().all(|&c| c == 'T' || c == 't');
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::sigaddset(&mut block, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old_mask);
        }
        let paused = Paused {
            pid,
            started: Instant::now(),
            was_stopped,
            old_mask,
        };
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!("stopping pid {pid}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let states = task_states(pid);
            if states.is_empty() {
                bail!("process {pid} exited");
            }
            if states
                .iter()
                .all(|&c| c == 'T' || c == 't' || c == 'Z' || c == 'X')
            {
                return Ok(paused);
            }
            if Instant::now() > deadline {
                bail!("process {pid} did not stop within 2 s (state {states:?})");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Lets the target run again; returns how long it was stopped.
    pub fn resume(self) -> Duration {
        self.started.elapsed()
        // Drop sends SIGCONT and restores the signal mask.
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.was_stopped {
            unsafe { libc::kill(self.pid, libc::SIGCONT) };
        }
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}
