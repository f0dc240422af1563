//! `trace [options] -- PROGRAM ARGS…`: start the program so that leakscope attaches before
//! it runs any Python code.
//!
//! The child stops itself before `exec` (SIGSTOP); a pid-scoped uprobe is put on the
//! executable's entry point (`e_entry`: the loader has mapped every library by then, and
//! none of the program's own code has run), whose program stops the child again
//! (`spawn_stop`: `bpf_send_signal(SIGSTOP)`); the child is let go, execs, and stops
//! there. The stop probe is taken out, the trace attaches to the stopped process as to any
//! other, and `resume` lets it run. A script (`#!`) is started through its interpreter,
//! which is then the file probed. A thread reaps the child and keeps its exit status.
use crate::probes::kernel;
use anyhow::{Context, Result, bail};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct Spawned {
    pub pid: u32,
    /// The exit code once the child ended (128 + the signal when a signal killed it).
    status: Arc<Mutex<Option<i32>>>,
}

impl Spawned {
    /// Starts `argv` (program, then its arguments) and returns it stopped at its entry.
    pub fn start(argv: &[OsString]) -> Result<Spawned> {
        let Some(program) = argv.first() else {
            bail!("no program to start after --");
        };
        let path = find_program(Path::new(program))?;
        let exe = executable_of(&path)?;
        let entry = entry_offset(&exe)?;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .context("the program's path has a NUL byte")?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("an argument has a NUL byte")?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());
        // SIGINT and SIGTERM wait (blocked) until the trace loop handles them: until then
        // their default action would end leakscope and leave the child stopped for good.
        // The child gets the mask it would have had.
        let old_mask = block_stop_signals();
        // Tells the parent why exec failed (errno), closed by a successful exec.
        let mut pipe = [0; 2];
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // The child: only async-signal-safe calls from here.
            unsafe {
                libc::close(pipe[0]);
                libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
                libc::raise(libc::SIGSTOP);
                libc::execv(c_path.as_ptr(), c_argv.as_ptr());
                let errno = *libc::__errno_location();
                libc::write(pipe[1], (&errno as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        unsafe { libc::close(pipe[1]) };
        let read_end = pipe[0];
        let pid_u = pid as u32;
        let fail = |e: anyhow::Error| {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                libc::close(read_end);
            }
            e
        };
        wait_stopped(pid).map_err(fail)?;
        let stop = kernel::stop_at_entry(&exe, entry, pid_u).map_err(|e| {
            fail(e.context(format!("putting the start probe on {}", exe.display())))
        })?;
        unsafe { libc::kill(pid, libc::SIGCONT) };
        if let Err(e) = wait_stopped(pid) {
            let mut errno = 0i32;
            let n = unsafe { libc::read(read_end, (&mut errno as *mut i32).cast(), 4) };
            unsafe { libc::close(read_end) };
            if n == 4 {
                bail!(
                    "cannot run {}: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(errno)
                );
            }
            return Err(e);
        }
        unsafe { libc::close(read_end) };
        drop(stop);
        let status = Arc::new(Mutex::new(None));
        let shared = status.clone();
        std::thread::Builder::new()
            .name("leakscope-child".into())
            .spawn(move || {
                let mut st = 0;
                loop {
                    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
                    if r == pid {
                        break;
                    }
                    if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
                    {
                        // Reaped elsewhere: the status is lost, the program is gone.
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(255);
                        return;
                    }
                }
                let code = if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else {
                    128 + libc::WTERMSIG(st)
                };
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
            })?;
        Ok(Spawned { pid: pid_u, status })
    }

    /// Lets the stopped child run (after the probes are attached).
    pub fn resume(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
    }

    /// Passes a signal leakscope received on to the program.
    pub fn forward(&self, signal: i32) {
        if self.exit_code().is_none() {
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn block_stop_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Lets SIGINT and SIGTERM in again (blocked by `Spawned::start`), once the trace loop
/// handles them; one that came meanwhile is delivered then.
pub fn unblock_stop_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Whether a terminal's Ctrl-C reaches the child too: leakscope is in the foreground process
/// group of its controlling terminal (the child shares the group). Then SIGINT must not be
/// forwarded, or the program would see it twice.
pub fn terminal_delivers_sigint() -> bool {
    let fd = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    let fg = unsafe { libc::tcgetpgrp(fd) };
    unsafe { libc::close(fd) };
    fg > 0 && fg == unsafe { libc::getpgrp() }
}

fn wait_stopped(pid: i32) -> Result<()> {
    let mut st = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(std::io::Error::last_os_error()).context("waitpid");
        }
    }
    if libc::WIFSTOPPED(st) {
        return Ok(());
    }
    if libc::WIFEXITED(st) {
        bail!(
            "the program exited (status {}) before it started",
            libc::WEXITSTATUS(st)
        );
    }
    bail!(
        "the program was killed (signal {}) before it started",
        libc::WTERMSIG(st)
    )
}

/// `program` as exec would find it: a path as given, a bare name searched in `PATH`.
fn find_program(program: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_os_str().as_bytes().contains(&b'/') {
        if !runnable(program) {
            bail!("{}: no such executable file", program.display());
        }
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| runnable(p))
        .with_context(|| format!("{}: not found in PATH", program.display()))
}

/// The ELF file the kernel runs for `path`: itself, or the interpreter its `#!` line names
/// (`/usr/bin/env NAME` searched in `PATH`).
fn executable_of(path: &Path) -> Result<PathBuf> {
    let mut head = [0u8; 256];
    let n = {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.read(&mut head)?
    };
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        return Ok(path.to_path_buf());
    }
    let Some(line) = head.strip_prefix(b"#!") else {
        bail!(
            "{}: neither an ELF executable nor a #! script",
            path.display()
        );
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let interp = words.next().context("an empty #! line")?;
    let interp = if interp.rsplit('/').next() == Some("env") {
        let name = words
            .find(|w| !w.starts_with('-'))
            .with_context(|| format!("{}: #!{line} names no program", path.display()))?;
        find_program(Path::new(name))?
    } else {
        PathBuf::from(interp)
    };
    executable_of(&interp)
}

/// The file offset of `exe`'s entry point.
fn entry_offset(exe: &Path) -> Result<u64> {
    use object::{Object, ObjectSegment};
    let data = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", exe.display()))?;
    let entry = file.entry();
    for seg in file.segments() {
        let (start, size) = (seg.address(), seg.size());
        if entry >= start && entry < start + size {
            let (offset, _) = seg.file_range();
            return Ok(entry - start + offset);
        }
    }
    bail!(
        "{}: its entry point {entry:#x} is in no segment",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_exec_finds_them() {
        assert!(find_program(Path::new("sh")).unwrap().ends_with("sh"));
        assert!(find_program(Path::new("no-such-program-here")).is_err());
        assert!(
            find_program(Path::new("/etc/passwd")).is_err(),
            "not executable"
        );
        // A #! script runs its interpreter: that is the file probed.
        let dir = std::env::temp_dir().join(format!("leakscope-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("app");
        std::fs::write(&script, "#!/usr/bin/env -S sh -e\necho hi\n").unwrap();
        let exe = executable_of(&script).unwrap();
        assert!(exe.ends_with("sh"), "{}", exe.display());
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(executable_of(&script).unwrap(), PathBuf::from("/bin/sh"));
        std::fs::write(&script, "plain text\n").unwrap();
        assert!(executable_of(&script).is_err());
        let _ = std::fs::remove_dir_all(dir);
        // The entry point of a real executable lies in its first loaded segment's file.
        let sh = find_program(Path::new("sh")).unwrap();
        let off = entry_offset(&std::fs::canonicalize(sh).unwrap()).unwrap();
        assert!(off > 0);
    }
}
