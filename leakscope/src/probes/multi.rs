//! uprobe_multi links (Linux ≥ 6.6), the way leakscope attaches when the kernel has them.
//!
//! Why: closing one of aya's perf-event uprobe links detaches the program, waits for an
//! RCU tasks-trace grace period, and only then destroys the event and removes its
//! breakpoints, so the target keeps trapping for ~0.2 s after every detach (measured:
//! docs/overhead.md). A uprobe_multi link removes its breakpoints first and waits after,
//! so a window costs the target only while it is open. aya 0.14 cannot load a program for
//! that link (`UProbe::load` sets no expected attach type), so the same programs are
//! loaded a second way here: parsed and relocated against the maps aya created (aya-obj,
//! aya's own object crate), loaded with `expected_attach_type = BPF_TRACE_UPROBE_MULTI`,
//! and linked with `BPF_LINK_CREATE` — two system calls whose attributes are written out
//! below from `include/uapi/linux/bpf.h`.
use anyhow::{Context, Result, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::ProgramSection;
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it for a uprobe_multi link.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD`'s attribute.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The object's uprobe programs, loaded for uprobe_multi links.
pub struct MultiPrograms {
    /// Each program's fd, and whether it runs at the function's return (a uretprobe).
    progs: HashMap<&'static str, (OwnedFd, bool)>,
}

impl MultiPrograms {
    /// Loads `names` from `object`, its map references pointing at the maps `ebpf` created
    /// (call it before any map is taken out of `ebpf`).
    pub fn load(ebpf: &Ebpf, object: &[u8], names: &[&'static str]) -> Result<MultiPrograms> {
        let mut obj = aya_obj::Object::parse(object).context("parsing the BPF object")?;
        if obj.has_btf_relocations() {
            bail!("the BPF object has CO-RE relocations, which this loader does not apply");
        }
        let fds: HashMap<&str, RawFd> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name, map_fd(map)?)))
            .collect();
        let defs = std::mem::take(&mut obj.maps);
        let mut missing = defs.keys().filter(|n| !fds.contains_key(n.as_str()));
        if let Some(name) = missing.next() {
            bail!("map {name} of the BPF object was not created");
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(s, _)| s).collect();
        obj.relocate_maps(
            defs.iter().map(|(n, m)| (n.as_str(), fds[n.as_str()], m)),
            &text_sections,
        )
        .context("relocating the BPF programs' map references")?;
        obj.relocate_calls(&text_sections)
            .context("relocating the BPF programs' calls")?;
        let mut progs = HashMap::new();
        for &name in names {
            let prog = obj
                .programs
                .get(name)
                .with_context(|| format!("the BPF object has no program {name}"))?;
            let ret = match prog.section {
                ProgramSection::UProbe { sleepable: false } => false,
                ProgramSection::URetProbe { sleepable: false } => true,
                _ => bail!("BPF program {name} is not a plain uprobe or uretprobe"),
            };
            let function = &obj.functions[&prog.function_key()];
            let fd = load_one(
                name,
                &function.instructions,
                &obj.license,
                prog.kernel_version,
            )
            .with_context(|| format!("loading BPF program {name} for uprobe_multi links"))?;
            progs.insert(name, (fd, ret));
        }
        Ok(MultiPrograms { progs })
    }

    /// One pid-scoped uprobe_multi link of `program` at `offset` in `path` (a single
    /// breakpoint, cookie `cookie`). Dropping the link removes the breakpoint at once; the
    /// close then waits for the kernel's grace periods (~0.1–0.2 s) in the closing thread.
    pub fn attach(
        &self,
        program: &str,
        path: &Path,
        offset: u64,
        cookie: u64,
        pid: u32,
    ) -> Result<OwnedFd> {
        let (prog, ret) = self
            .progs
            .get(program)
            .with_context(|| format!("BPF program {program} is not loaded"))?;
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .context("a probe's path holds a NUL byte")?;
        let offsets = [offset];
        let cookies = [cookie];
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_TRACE_UPROBE_MULTI,
            path: path.as_ptr() as u64,
            offsets: offsets.as_ptr() as u64,
            cookies: cookies.as_ptr() as u64,
            cnt: 1,
            multi_flags: if *ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 },
            pid,
            ..Default::default()
        };
        let fd = bpf(BPF_LINK_CREATE, &mut attr).context("creating a uprobe_multi link")?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// `(runs, run time ns)` of `program` from the kernel's BPF stats.
    pub fn stats(&self, program: &str) -> Option<(u64, u64)> {
        let (fd, _) = self.progs.get(program)?;
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut attr = InfoAttr {
            bpf_fd: fd.as_fd().as_raw_fd() as u32,
            info_len: size_of_val(&info) as u32,
            info: &mut info as *mut _ as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
        Some((info.run_cnt, info.run_time_ns))
    }
}

/// The file descriptor of one of aya's maps (`None` for a kind our object does not use).
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m)
        | Map::PerfEventArray(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

fn load_one(
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
    license: &CString,
    kernel_version: Option<u32>,
) -> Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut log = vec![0u8; 1 << 20];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        kern_version: kernel_version.unwrap_or(0),
        prog_name,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(_) => {
            // Load again with the verifier's log, to say why.
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let e = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            match e {
                Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
                Err(e) => bail!(
                    "{e}; verifier: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            }
        }
    }
}
