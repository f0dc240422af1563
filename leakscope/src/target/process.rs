//! The target process as seen through `/proc`: existence, memory maps, its files (through
//! `/proc/<pid>/root`, so chroots and containers work) and reads of its memory.
//! Read-only by construction: nothing here can write to or stop the target.
use super::memory::{Mem, Memory, ReadError, ReadResult};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub inode: u64,
    /// The path as the kernel shows it to us: inside the target's mount namespace, which for
    /// a pivot_root'ed container is its root and for a plain chroot is not.
    pub path: String,
}

pub struct Process {
    pub pid: u32,
    pub comm: String,
    start_time: u64,
}

impl Process {
    pub fn open(pid: u32) -> Result<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|_| anyhow::anyhow!("no process with pid {pid}"))?;
        let (comm, start_time) = parse_stat(&stat).context("unreadable /proc/<pid>/stat")?;
        Ok(Process {
            pid,
            comm,
            start_time,
        })
    }

    /// True while the same process (not a reused pid) is running and not a zombie.
    pub fn alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => match parse_stat(&stat) {
                Some((_, start)) if start == self.start_time => !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z'),
                _ => false,
            },
            Err(_) => false,
        }
    }

    pub fn maps(&self) -> Result<Vec<Mapping>> {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .with_context(|| format!("reading /proc/{}/maps", self.pid))?;
        Ok(parse_maps(&text))
    }

    /// The file behind a mapping, as a path that resolves in *our* namespace (for reading
    /// it and for attaching uprobes to it): `/proc/<pid>/root/<path>` when that is the
    /// mapped inode (containers: the path is relative to their root), else the mapping's own
    /// `/proc/<pid>/map_files/<start>-<end>` link (a chroot inside another mount namespace,
    /// a deleted or replaced file), which always opens the exact mapped file.
    pub fn file_of(&self, m: &Mapping) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let via_root = PathBuf::from(format!("/proc/{}/root{}", self.pid, m.path));
        match std::fs::metadata(&via_root) {
            Ok(meta) if meta.ino() == m.inode => via_root,
            _ => PathBuf::from(format!(
                "/proc/{}/map_files/{:x}-{:x}",
                self.pid, m.start, m.end
            )),
        }
    }

    /// The target's pid namespace as `(st_dev, st_ino)` of `/proc/<pid>/ns/pid`, when it is
    /// not ours (a container): its threads know themselves by the ids of that namespace
    /// (`PyThreadState.native_thread_id`), which the BPF side then asks the kernel for.
    pub fn foreign_pid_namespace(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        if nspid_depth(&status)? < 2 {
            return None;
        }
        let ns = std::fs::metadata(format!("/proc/{}/ns/pid", self.pid)).ok()?;
        Some((ns.dev(), ns.ino()))
    }

    /// A mapped file's path as the target sees it: a chroot's maps show our path of the
    /// file (`/srv/root/usr/bin/python3`), which the target knows as `/usr/bin/python3`.
    pub fn as_target_sees(&self, path: &str) -> String {
        let root = std::fs::read_link(format!("/proc/{}/root", self.pid)).ok();
        match root.as_ref().and_then(|r| r.to_str()) {
            Some(r) if r != "/" => match path.strip_prefix(r) {
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                _ => path.to_string(),
            },
            _ => path.to_string(),
        }
    }

    pub fn memory(&self) -> Mem {
        std::sync::Arc::new(ProcessMemory { pid: self.pid })
    }

    /// CPU time the process (all its threads) spent in the kernel so far, seconds
    /// (`stime` of /proc/<pid>/stat, in clock ticks). Uprobe traps are kernel time of the
    /// thread that hits them: the budget reads what they really cost here.
    pub fn system_time_s(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let ticks = parse_stime(&stat)?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| ticks as f64 / hz as f64)
    }
}

/// How many pid namespaces deep a process is: the ids on the `NSpid:` line of its
/// `/proc/<pid>/status` (1 in the namespace we run in, more in a container's).
fn nspid_depth(status: &str) -> Option<usize> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    Some(line["NSpid:".len()..].split_whitespace().count())
}

/// Field 15 (`stime`) of a /proc/<pid>/stat line.
fn parse_stime(stat: &str) -> Option<u64> {
    // After "pid (comm) ": state is field 3, so stime (15) is the 13th field after it.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(12)?
        .parse()
        .ok()
}

/// `(comm, starttime)` from `/proc/<pid>/stat`; comm may contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    // Fields after the comm start at field 3 (state); starttime is field 22.
    let start = stat[close + 2..].split_whitespace().nth(19)?.parse().ok()?;
    Some((comm, start))
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let range = it.next()?;
            let _perms = it.next()?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let inode = it.next()?.parse().ok()?;
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset,
                inode,
                path,
            })
        })
        .collect()
}

/// The target's memory, read with `process_vm_readv` (needs ptrace access: root or
/// CAP_SYS_PTRACE). Every read can fail on a running heap; callers treat failure as data.
#[derive(Clone, Copy)]
pub struct ProcessMemory {
    pid: u32,
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut _,
            iov_len: buf.len(),
        };
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if n < 0 || n as usize != buf.len() {
            return Err(ReadError {
                addr,
                len: buf.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn pid_namespace_depth_from_status() {
        assert_eq!(
            nspid_depth("Name:\tpython3\nNSpid:\t31189\t1\nNSsid:\t1\n"),
            Some(2)
        );
        assert_eq!(nspid_depth("NSpid:\t4242\n"), Some(1));
        assert_eq!(nspid_depth("Name:\tx\n"), None);
    }

    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(("a (b) c".to_string(), 987654)));
    }

    #[test]
    fn stime_is_field_15_whatever_the_comm() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 111 222 0 0 20 0 1 0 987654";
        assert_eq!(parse_stime(stat), Some(222));
        assert_eq!(parse_stime("42 (x) S 1"), None);
    }

    #[test]
    fn maps_line() {
        let m = parse_maps(
            "7f00-7f80 r-xp 0001c000 08:01 1234  /opt/py/lib/libpython3.11.so.1.0\n\
             7f90-7fa0 rw-p 00000000 00:00 0 \n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].offset, 0x1c000);
        assert_eq!(m[0].inode, 1234);
        assert_eq!(m[0].path, "/opt/py/lib/libpython3.11.so.1.0");
        assert_eq!(m[1].path, "");
    }
}
