//! Allocation sites: captured stacks turned into Python frames (function, file, line), and
//! interned so every report and output refers to a site by a small id.
//!
//! `Site`, `Sites` and `folded` are pure; `Symbolizer` reads code objects from the target.
//! Code objects are cached by address. A code object freed and replaced by another at the
//! same address is caught two ways: where the build shows code objects' own births (complete
//! builds), that birth invalidates the address at exactly the right point in the event
//! stream; everywhere, each report re-reads a fingerprint of every cached code object. Either
//! way the entry drops together with the kernel stacks that used it, so later births
//! re-symbolize (objects already counted keep the site they were born at).
use crate::cpython::linetable;
use crate::cpython::{self, Instr, StackLayout};
use crate::model::sites::{Frame, Site, Sites};
use crate::target::Mem;
use hashbrown::{HashMap, HashSet};
use leakscope_common::RawStack;

struct CodeInfo {
    function: String,
    file: String,
    firstlineno: i32,
    table: Vec<u8>,
    /// (filename ptr, name ptr, firstlineno): re-read to detect a replaced code object.
    fingerprint: [u64; 3],
}

pub struct Symbolizer {
    mem: Mem,
    layout: StackLayout,
    version: cpython::Version,
    /// Runtime address of `PyCode_Type`: frames whose "code" is anything else (3.13+'s entry
    /// frames hold None) are skipped.
    code_type: u64,
    codes: HashMap<u64, Option<CodeInfo>>,
    /// Kernel stack id → site id, and which code objects each kernel stack used.
    by_stack: HashMap<u64, u32>,
    stack_codes: HashMap<u64, Vec<u64>>,
    pub sites: Sites,
    pub unreadable_stacks: u64,
}

impl Symbolizer {
    pub fn new(mem: Mem, version: cpython::Version, layout: StackLayout, code_type: u64) -> Self {
        Symbolizer {
            mem,
            layout,
            version,
            code_type,
            codes: HashMap::new(),
            by_stack: HashMap::new(),
            stack_codes: HashMap::new(),
            sites: Sites::default(),
            unreadable_stacks: 0,
        }
    }

    /// The site of kernel stack `id`; `fetch` reads the raw stack from the kernel map the
    /// first time an id is seen.
    pub fn site(&mut self, id: u64, fetch: impl FnOnce(u64) -> Option<RawStack>) -> u32 {
        if id == 0 {
            return 0;
        }
        if let Some(&site) = self.by_stack.get(&id) {
            return site;
        }
        let Some(raw) = fetch(id) else {
            self.unreadable_stacks += 1;
            return 0;
        };
        let depth = (raw.depth as usize).min(raw.frames.len());
        let mut frames = Vec::with_capacity(depth);
        let mut used = Vec::with_capacity(depth);
        for f in &raw.frames[..depth] {
            // (3.14+ frames hold a tagged `_PyStackRef`; the kernel records the word.)
            let code = f.code & !self.layout.code_tag;
            if let Some(frame) = self.frame(code, f.instr) {
                frames.push(frame);
                used.push(code);
            }
        }
        let site = self.sites.intern(Site {
            frames,
            truncated: raw.truncated != 0,
        });
        self.by_stack.insert(id, site);
        self.stack_codes.insert(id, used);
        site
    }

    fn frame(&mut self, code: u64, instr: u64) -> Option<Frame> {
        if !self.codes.contains_key(&code) {
            let info = self.read_code(code);
            self.codes.insert(code, info);
        }
        let info = self.codes.get(&code)?.as_ref()?;
        let offset: Option<i64> = match self.layout.instr {
            Instr::LastiBytes => Some(instr as u32 as i32 as i64),
            Instr::LastiUnits => Some(instr as u32 as i32 as i64 * 2),
            Instr::Pointer { code_adaptive } => Some(instr as i64 - (code + code_adaptive) as i64),
        };
        let line = match offset {
            // Before the first instruction (a frame being set up): CPython says firstlineno.
            Some(o) if o < 0 => Some(info.firstlineno),
            Some(o) => {
                linetable::line_at(self.layout.table, &info.table, info.firstlineno, o as u32)
            }
            None => None,
        };
        Some(Frame::python(
            info.function.clone(),
            info.file.clone(),
            line,
        ))
    }

    fn fingerprint(&self, code: u64) -> Option<[u64; 3]> {
        let l = &self.layout;
        Some([
            self.mem.u64(code + l.co_filename).ok()?,
            self.mem.u64(code + l.co_name).ok()?,
            self.mem.u64(code + l.co_firstlineno).ok()? & 0xffff_ffff,
        ])
    }

    fn read_code(&self, code: u64) -> Option<CodeInfo> {
        if code == 0 || self.mem.u64(code + cpython::OB_TYPE).ok()? != self.code_type {
            return None;
        }
        let l = &self.layout;
        let fingerprint = self.fingerprint(code)?;
        let file = self.str(fingerprint[0])?;
        let function = self.str(
            self.mem
                .u64(code + l.co_qualname.unwrap_or(l.co_name))
                .ok()?,
        )?;
        let table_obj = self.mem.u64(code + l.co_linetable).ok()?;
        let len = self
            .mem
            .u64(table_obj + cpython::BYTES_SIZE)
            .ok()?
            .min(1 << 20);
        let mut table = vec![0u8; len as usize];
        self.mem
            .read(table_obj + cpython::BYTES_DATA, &mut table)
            .ok()?;
        Some(CodeInfo {
            function,
            file,
            firstlineno: fingerprint[2] as u32 as i32,
            table,
            fingerprint,
        })
    }

    /// A `str`: compact ASCII or compact UTF-8-representable (1-byte kind) text.
    fn str(&self, s: u64) -> Option<String> {
        let len = self.mem.u64(s + cpython::STR_LENGTH).ok()?;
        let state = self.mem.u64(s + cpython::STR_STATE).ok()? as u32;
        let cpython::StrState {
            kind,
            compact,
            ascii,
        } = cpython::str_state(state);
        if !compact || len > 4096 {
            return None;
        }
        let data = s + if ascii {
            cpython::ascii_data_offset(self.version)
        } else {
            cpython::compact_data_offset(self.version)
        };
        let mut buf = vec![0u8; (len * kind.max(1) as u64) as usize];
        self.mem.read(data, &mut buf).ok()?;
        Some(match kind {
            1 if ascii => String::from_utf8_lossy(&buf).into_owned(),
            1 => buf.iter().map(|&b| b as char).collect(),
            2 => char::decode_utf16(
                buf.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            )
            .map(|c| c.unwrap_or('?'))
            .collect(),
            4 => buf
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?')
                })
                .collect(),
            _ => return None,
        })
    }

    /// A new code object was born at `addr` (seen on complete builds): whatever was cached
    /// for that address is stale from this event on, and so are the kernel stacks using it.
    pub fn code_born(&mut self, addr: u64) {
        if self.codes.remove(&addr).is_some() {
            self.forget_stacks(&HashSet::from_iter([addr]));
        }
    }

    pub fn code_type(&self) -> u64 {
        self.code_type
    }

    fn forget_stacks(&mut self, stale: &HashSet<u64>) {
        let dead: Vec<u64> = self
            .stack_codes
            .iter()
            .filter(|(_, codes)| codes.iter().any(|c| stale.contains(c)))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.by_stack.remove(&id);
            self.stack_codes.remove(&id);
        }
    }

    /// Drops cached code objects that no longer match their fingerprint, and the kernel
    /// stacks that used them. One small read per cached code object; called per report.
    pub fn revalidate(&mut self) {
        let stale: HashSet<u64> = self
            .codes
            .iter()
            .filter(|(addr, info)| match info {
                Some(i) => self.fingerprint(**addr) != Some(i.fingerprint),
                None => true, // unreadable before: try again later
            })
            .map(|(addr, _)| *addr)
            .collect();
        if stale.is_empty() {
            return;
        }
        self.codes.retain(|a, _| !stale.contains(a));
        self.forget_stacks(&stale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::fake::{Target, V311};
    use leakscope_common::{MAX_FRAMES, RawFrame};

    /// 3.11 location entries "line + delta, no columns" (code 13), one per `(units, delta)`.
    fn table(entries: &[(u8, u8)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(units, delta)| [0x80 | 13 << 3 | (units - 1), delta << 1])
            .collect()
    }

    fn symbolizer(t: &Target) -> Symbolizer {
        let layout = cpython::stack_layout(t.version).unwrap();
        Symbolizer::new(t.mem(), t.version, layout, t.code_type)
    }

    /// A raw stack (innermost first) of `(code, code unit)`; 3.11 positions point into
    /// `co_code_adaptive`.
    fn stack(frames: &[(u64, i64)]) -> RawStack {
        let mut raw = RawStack {
            depth: frames.len() as u32,
            truncated: 0,
            frames: [RawFrame::default(); MAX_FRAMES],
        };
        for (slot, &(code, unit)) in raw.frames.iter_mut().zip(frames) {
            *slot = RawFrame {
                code,
                instr: (code as i64 + 184 + 2 * unit) as u64,
            };
        }
        raw
    }

    fn labels(s: &Symbolizer, site: u32) -> Vec<String> {
        s.sites.get(site).frames.iter().map(|f| f.label()).collect()
    }

    #[test]
    fn symbolizer_gives_function_file_and_line() {
        let mut t = Target::new(V311);
        let f = t.code("main.<locals>.f", "app.py", 10, &table(&[(3, 1), (2, 2)]));
        let module = t.code("<module>", "app.py", 1, &table(&[(4, 4)]));
        let mut s = symbolizer(&t);
        let site = s.site(7, |_| Some(stack(&[(f, 4), (module, 0)])));
        assert_eq!(
            labels(&s, site),
            ["main.<locals>.f (app.py:13)", "<module> (app.py:5)"]
        );
        // a frame being set up, before its first instruction, is at its first line
        let site = s.site(8, |_| Some(stack(&[(f, -1)])));
        assert_eq!(labels(&s, site), ["main.<locals>.f (app.py:10)"]);
        // the same kernel stack id is not read again
        assert_eq!(s.site(7, |_| panic!("re-read")), 1);
    }

    #[test]
    fn unreadable_code_object_frame_is_skipped() {
        let mut t = Target::new(V311);
        let f = t.code("f", "app.py", 10, &table(&[(3, 1)]));
        let not_code = t.str("None, say"); // 3.13 entry frames hold None, not code
        let no_file = t.code("g", "gone.py", 1, &table(&[(1, 0)]));
        let co_filename = cpython::stack_layout(t.version).unwrap().co_filename;
        let file = t.mem.get(no_file + co_filename).unwrap();
        t.mem.unmap(file, 64);
        let mut s = symbolizer(&t);
        let site = s.site(1, |_| {
            Some(stack(&[
                (0xdead_0000, 0),
                (f, 0),
                (not_code, 0),
                (no_file, 0),
                (0, 0),
            ]))
        });
        assert_eq!(labels(&s, site), ["f (app.py:11)"]);
        assert_eq!(s.site(2, |_| None), 0, "a stack the kernel no longer has");
        assert_eq!(s.unreadable_stacks, 1);
    }

    /// Shared by both ways a replaced code object is noticed: the stack that used it is
    /// symbolized again, with the new code object's names.
    fn replace_code(t: &mut Target, at: u64) {
        let new = t.code("h", "new.py", 30, &table(&[(2, 0)]));
        for off in (0..256).step_by(8) {
            t.mem.put(at + off, t.mem.get(new + off).unwrap());
        }
    }

    #[test]
    fn code_object_replaced_at_the_same_address_is_resymbolized_at_its_birth() {
        let mut t = Target::new(V311);
        let f = t.code("f", "old.py", 10, &table(&[(3, 1)]));
        let mut s = symbolizer(&t);
        let old = s.site(1, |_| Some(stack(&[(f, 0)])));
        assert_eq!(labels(&s, old), ["f (old.py:11)"]);
        replace_code(&mut t, f);
        assert_eq!(s.site(1, |_| panic!("cached")), old, "until we learn of it");
        s.code_born(f);
        let new = s.site(1, |_| Some(stack(&[(f, 0)])));
        assert_ne!(new, old);
        assert_eq!(labels(&s, new), ["h (new.py:30)"]);
        assert_eq!(
            labels(&s, old),
            ["f (old.py:11)"],
            "old sites keep their names"
        );
    }

    #[test]
    fn code_object_replaced_at_the_same_address_is_resymbolized_after_revalidate() {
        let mut t = Target::new(V311);
        let f = t.code("f", "old.py", 10, &table(&[(3, 1)]));
        let g = t.code("g", "kept.py", 20, &table(&[(3, 1)]));
        let mut s = symbolizer(&t);
        let old = s.site(1, |_| Some(stack(&[(f, 0)])));
        let kept = s.site(2, |_| Some(stack(&[(g, 0)])));
        replace_code(&mut t, f);
        s.revalidate();
        assert_eq!(s.site(2, |_| panic!("g did not change")), kept);
        let new = s.site(1, |_| Some(stack(&[(f, 0)])));
        assert_eq!(labels(&s, new), ["h (new.py:30)"]);
        assert_ne!(new, old);
    }
}
