//! Files leakscope writes (`--folded`, `--flamegraph`, `--pprof`), written safely: leakscope runs as
//! root, often in directories other users can write to.
//!
//! - Checked before tracing starts (`OutputPath::check`, from `cli`): the directory is
//!   opened once and kept; a file is created and removed in it, so a path that cannot be
//!   written is refused at once, not after a long trace.
//! - Never through a symlink another user planted: a symlink on the way to the directory
//!   must belong to root or to the user running leakscope (`SUDO_UID` under sudo); the file
//!   itself is written to a new temporary name in that directory (`O_EXCL | O_NOFOLLOW`) and
//!   renamed over the name, which replaces a symlink there instead of writing where it
//!   points. Writes go through the directory opened at the check (the very directory the
//!   walk checked: same device and inode), so swapping a directory afterwards redirects
//!   nothing.
//! - Readers never see half a file: the rename is atomic, after `fsync`.
//! - Under sudo the file belongs to the user who ran it.
use anyhow::{Context, Result, bail};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A file to write at the end of a trace, checked and its directory held open.
#[derive(Clone, Debug)]
pub struct OutputPath {
    /// As the user gave it (for messages).
    pub path: PathBuf,
    dir: Arc<OwnedFd>,
    name: OsString,
    /// Who the file is given to (the user behind sudo), if not root.
    owner: Option<(u32, u32)>,
}

impl OutputPath {
    /// Checks `path` for `flag` (the option's name, for the message): its directory exists,
    /// is reached through no symlink another user owns, and a file can be created there.
    pub fn check(flag: &str, path: &Path) -> Result<OutputPath> {
        let shown = path.display();
        let Some(name) = path.file_name().filter(|n| !n.is_empty()) else {
            bail!("{flag} {shown}: not a file name");
        };
        let dir_path = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir_path.is_dir() {
            bail!("{flag} {shown}: no such directory {}", dir_path.display());
        }
        let trusted = trusted_uids();
        let checked = match walk(dir_path, &trusted)? {
            Walk::Foreign(link, uid) => bail!(
                "{flag} {shown}: {} is a symlink owned by uid {uid}, not by root or the user \
                 running leakscope; refusing to write through it",
                link.display()
            ),
            Walk::Missing(p) => bail!("{flag} {shown}: no such directory {}", p.display()),
            Walk::Dir(dev, ino) => (dev, ino),
        };
        let dir = open_dir(dir_path).map_err(|e| {
            anyhow::anyhow!(
                "{flag} {shown}: cannot open the directory {}: {e}",
                dir_path.display()
            )
        })?;
        let opened = std::fs::File::from(dir.try_clone()?).metadata()?;
        if (opened.dev(), opened.ino()) != checked {
            bail!(
                "{flag} {shown}: the directory {} changed while it was checked; refusing",
                dir_path.display()
            );
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => bail!("{flag} {shown}: is a directory"),
            Ok(m) if !m.is_file() && !m.file_type().is_symlink() => {
                bail!("{flag} {shown}: exists and is not a regular file")
            }
            _ => {}
        }
        let out = OutputPath {
            path: path.to_path_buf(),
            dir: Arc::new(dir),
            name: name.to_os_string(),
            owner: sudo_owner(),
        };
        // Proves the directory writable now.
        let (tmp, file) = out.create_temp().with_context(|| {
            format!(
                "{flag} {shown}: cannot create a file in {}",
                dir_path.display()
            )
        })?;
        drop(file);
        out.unlink(&tmp);
        Ok(out)
    }

    /// Writes `bytes` as the whole file: a new temporary file, synced, renamed over the name.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        let shown = self.path.display();
        let (tmp, mut file) = self
            .create_temp()
            .with_context(|| format!("writing {shown}"))?;
        let done = (|| -> std::io::Result<()> {
            file.write_all(bytes)?;
            if let Some((uid, gid)) = self.owner {
                cvt(unsafe { libc::fchown(file.as_raw_fd(), uid, gid) })?;
            }
            file.sync_all()?;
            let name = cstr(&self.name)?;
            let fd = self.dir.as_raw_fd();
            cvt(unsafe { libc::renameat(fd, tmp.as_ptr(), fd, name.as_ptr()) })?;
            Ok(())
        })();
        if let Err(e) = done {
            self.unlink(&tmp);
            return Err(e).with_context(|| format!("writing {shown}"));
        }
        Ok(())
    }

    /// A new file `.NAME.leakscope-PID-N.tmp` in the directory, never an existing one and
    /// never through a symlink.
    fn create_temp(&self) -> std::io::Result<(CString, File)> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let mut last = None;
        for _ in 0..16 {
            let mut tmp = OsString::from(".");
            tmp.push(&self.name);
            tmp.push(format!(
                ".leakscope-{}-{}.tmp",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp = cstr(&tmp)?;
            let fd = unsafe {
                libc::openat(
                    self.dir.as_raw_fd(),
                    tmp.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644 as libc::c_uint,
                )
            };
            if fd >= 0 {
                return Ok((tmp, unsafe { File::from_raw_fd(fd) }));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            last = Some(e);
        }
        Err(last.unwrap())
    }

    fn unlink(&self, tmp: &CString) {
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), tmp.as_ptr(), 0) };
    }
}

fn cstr(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn cvt(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    let c = cstr(p.as_os_str())?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Root, the effective user, and the user behind sudo.
fn trusted_uids() -> Vec<u32> {
    let mut v = vec![0, unsafe { libc::geteuid() }];
    v.extend(sudo_owner().map(|o| o.0));
    v
}

/// `SUDO_UID`/`SUDO_GID`, when leakscope runs under sudo.
fn sudo_owner() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

/// What walking to a directory found.
enum Walk {
    /// A symlink on the way that no trusted user owns, and its owner.
    Foreign(PathBuf, u32),
    /// A part of the way that does not exist.
    Missing(PathBuf),
    /// The directory reached: its device and inode.
    Dir(u64, u64),
}

/// Walks to `dir` one component at a time (`lstat`, following symlinks by hand), checking
/// who owns each symlink on the way.
fn walk(dir: &Path, trusted: &[u32]) -> Result<Walk> {
    let mut at = if dir.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().context("the current directory")?
    };
    let mut hops = 0;
    let mut parts: Vec<OsString> = dir
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    parts.reverse();
    while let Some(part) = parts.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => {
                at = PathBuf::from("/");
                continue;
            }
            Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let next = at.join(&part);
        let Ok(m) = std::fs::symlink_metadata(&next) else {
            return Ok(Walk::Missing(next));
        };
        if !m.file_type().is_symlink() {
            at = next;
            continue;
        }
        if !trusted.contains(&m.uid()) {
            return Ok(Walk::Foreign(next, m.uid()));
        }
        hops += 1;
        if hops > 40 {
            bail!("{}: too many levels of symbolic links", dir.display());
        }
        let target = std::fs::read_link(&next)?;
        let mut more: Vec<OsString> = target
            .components()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        more.reverse();
        parts.extend(more);
    }
    let m = std::fs::metadata(&at)?;
    Ok(Walk::Dir(m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("leakscope-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lchown(p: &Path, uid: u32) {
        let c = cstr(p.as_os_str()).unwrap();
        assert_eq!(
            unsafe { libc::lchown(c.as_ptr(), uid, uid) },
            0,
            "lchown {}",
            p.display()
        );
    }

    fn root() -> bool {
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn writes_the_whole_file_and_leaves_no_temporary() {
        let d = scratch("write");
        let out = OutputPath::check("--folded", &d.join("a.folded")).unwrap();
        out.write(b"x;y 1\n").unwrap();
        out.write(b"x;y 2\n").unwrap();
        assert_eq!(std::fs::read(d.join("a.folded")).unwrap(), b"x;y 2\n");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.folded"]);
    }

    #[test]
    fn a_symlink_at_the_name_is_replaced_not_written_through() {
        let d = scratch("link");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        symlink(&victim, d.join("out.svg")).unwrap();
        let out = OutputPath::check("--flamegraph", &d.join("out.svg")).unwrap();
        out.write(b"<svg/>").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let m = std::fs::symlink_metadata(d.join("out.svg")).unwrap();
        assert!(
            m.is_file(),
            "the link itself was replaced by a regular file"
        );
    }

    #[test]
    fn a_directory_reached_through_another_users_symlink_is_refused() {
        if !root() {
            eprintln!("skipped: needs root to give a symlink to another user");
            return;
        }
        let d = scratch("foreign");
        let target = d.join("real");
        std::fs::create_dir(&target).unwrap();
        let link = d.join("planted");
        symlink(&target, &link).unwrap();
        lchown(&link, 65534);
        let e = OutputPath::check("--folded", &link.join("x.folded")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("symlink owned by uid 65534"), "{msg}");
        assert!(!target.join("x.folded").exists());
        // root's own symlink is fine
        lchown(&link, 0);
        OutputPath::check("--folded", &link.join("x.folded")).unwrap();
    }

    #[test]
    fn what_cannot_be_written_is_refused_at_the_check() {
        let d = scratch("refuse");
        let e = OutputPath::check("--folded", &d.join("no/such/dir/x")).unwrap_err();
        assert!(format!("{e:#}").contains("no such directory"), "{e:#}");
        let e = OutputPath::check("--folded", &d).unwrap_err();
        assert!(format!("{e:#}").contains("is a directory"), "{e:#}");
        // /proc takes no new files, even from root
        let e = OutputPath::check("--folded", Path::new("/proc/leakscope.folded")).unwrap_err();
        assert!(format!("{e:#}").contains("cannot create a file"), "{e:#}");
        let e = OutputPath::check("--folded", Path::new("/dev/null")).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }
}
