//! Type objects of the target, resolved from its memory and cached by address:
//! name (module-qualified for heap types), sizes, flags, and whether this build's probes
//! see every birth and death of the type's instances.
use crate::cpython::{self, Version, dict};
use crate::target::Mem;
use hashbrown::HashMap;

#[derive(Clone, Debug)]
pub struct TypeInfo {
    pub name: String,
    pub basicsize: u64,
    pub itemsize: u64,
    pub preheader: u64,
    pub flags: u64,
    pub heap: bool,
    /// Whether births of this type are counted (see `Resolver::new`'s `all_types`).
    pub tracked: bool,
    /// A type object inside the interpreter image (a builtin, not a C extension's).
    pub interpreter: bool,
    /// Its deallocator is outside the interpreter: a C extension's type (not a class
    /// defined in Python, whose `tp_dealloc` is the interpreter's `subtype_dealloc`), whose
    /// objects may hold native memory (`Pipeline::adopt_native`).
    pub extension_dealloc: bool,
    /// `tp_name` pointer when resolved; a change means the address now holds another type.
    tp_name: u64,
}

pub struct Resolver {
    mem: Mem,
    version: Version,
    /// Address ranges of the interpreter image (its static types live there).
    interpreter: Vec<(u64, u64)>,
    /// This build's probes see every object (complete) or only heap and extension types.
    all_types: bool,
    cache: HashMap<u64, TypeInfo>,
    pub failed_reads: u64,
}

impl Resolver {
    pub fn new(mem: Mem, version: Version, interpreter: Vec<(u64, u64)>, all_types: bool) -> Self {
        Resolver {
            mem,
            version,
            interpreter,
            all_types,
            cache: HashMap::new(),
            failed_reads: 0,
        }
    }

    pub fn get(&mut self, type_ptr: u64) -> Option<&TypeInfo> {
        if !self.cache.contains_key(&type_ptr) {
            match self.resolve(type_ptr) {
                Some(info) => {
                    self.cache.insert(type_ptr, info);
                }
                None => {
                    self.failed_reads += 1;
                    return None;
                }
            }
        }
        self.cache.get(&type_ptr)
    }

    /// Drops cache entries whose type object was replaced (heap types can be freed and their
    /// address reused). Called once per report: one read per cached heap type.
    /// A type that can no longer be read (the target exited) keeps its last name: the
    /// final report of a program that ended still names its classes.
    pub fn revalidate(&mut self) {
        let mem = &self.mem;
        self.cache.retain(|&addr, info| {
            !info.heap
                || mem
                    .u64(addr + cpython::TP_NAME)
                    .map_or(true, |p| p == info.tp_name)
        });
    }

    fn resolve(&self, t: u64) -> Option<TypeInfo> {
        let mut raw = [0u8; 24];
        self.mem.read(t + cpython::TP_NAME, &mut raw).ok()?;
        let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
        let (tp_name, basicsize, itemsize) = (word(0), word(1), word(2));
        let flags = self.mem.u64(t + cpython::TP_FLAGS).ok()?;
        if basicsize == 0 || basicsize > 1 << 20 {
            return None; // not a type object
        }
        let short = self.mem.cstr(tp_name, 256).ok()?;
        let heap = flags & cpython::TPFLAGS_HEAPTYPE != 0;
        let name = if heap && !short.contains('.') {
            match self.module_of(t) {
                Some(m) if m != "builtins" => format!("{m}.{short}"),
                _ => short,
            }
        } else {
            short
        };
        let inside = |a: u64| self.interpreter.iter().any(|&(s, e)| a >= s && a < e);
        let in_interpreter = inside(t);
        let dealloc = self.mem.u64(t + cpython::TP_DEALLOC).unwrap_or(0);
        Some(TypeInfo {
            name,
            basicsize,
            itemsize,
            preheader: cpython::preheader_size(self.version, flags),
            flags,
            heap,
            tracked: self.all_types || heap || !in_interpreter,
            interpreter: in_interpreter,
            extension_dealloc: dealloc != 0 && !inside(dealloc),
            tp_name,
        })
    }

    /// `type.__module__` of a heap type: the `__module__` entry of its `tp_dict`.
    fn module_of(&self, t: u64) -> Option<String> {
        let d = self.mem.u64(t + cpython::TP_DICT).ok()?;
        let keys = self.mem.u64(d + dict::MA_KEYS).ok()?;
        let (entries, n, stride, key_at) = if self.version.minor >= 11 {
            let mut h = [0u8; 3];
            self.mem.read(keys + dict::DK_LOG2_SIZE, &mut h).ok()?;
            let (_log2_size, log2_index_bytes, kind) = (h[0], h[1], h[2]);
            let n = self.mem.u64(keys + dict::DK_NENTRIES_311).ok()?;
            let entries = keys + dict::DK_INDICES_311 + (1u64 << log2_index_bytes);
            if kind == dict::DK_KIND_GENERAL {
                (entries, n, dict::GENERAL_ENTRY, dict::GENERAL_ENTRY_KEY)
            } else {
                (entries, n, dict::UNICODE_ENTRY, dict::UNICODE_ENTRY_KEY)
            }
        } else {
            let size = self.mem.u64(keys + dict::DK_SIZE_39).ok()?;
            let n = self.mem.u64(keys + dict::DK_NENTRIES_39).ok()?;
            let width = dict::index_width_39(size);
            (
                keys + dict::DK_INDICES_39 + size * width,
                n,
                dict::GENERAL_ENTRY,
                dict::GENERAL_ENTRY_KEY,
            )
        };
        for i in 0..n.min(256) {
            let e = entries + i * stride;
            let key = self.mem.u64(e + key_at).ok()?;
            if key != 0 && self.ascii(key).as_deref() == Some("__module__") {
                return self.ascii(self.mem.u64(e + key_at + 8).ok()?);
            }
        }
        None
    }

    /// A compact ASCII `str` (names of modules and attributes are).
    pub fn ascii(&self, s: u64) -> Option<String> {
        let len = self.mem.u64(s + cpython::STR_LENGTH).ok()?;
        let state = self.mem.u64(s + cpython::STR_STATE).ok()? as u32;
        let cpython::StrState { compact, ascii, .. } = cpython::str_state(state);
        if !compact || !ascii || len > 512 {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        self.mem
            .read(s + cpython::ascii_data_offset(self.version), &mut buf)
            .ok()?;
        String::from_utf8(buf).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::fake::{Target, V311};

    fn resolver(t: &Target, all_types: bool) -> Resolver {
        Resolver::new(t.mem(), t.version, t.image(), all_types)
    }

    #[test]
    fn resolver_names_heap_types_with_their_module() {
        let mut t = Target::new(V311);
        let leak = t.class("__main__", "Leak");
        let builtin_module = t.class("builtins", "Thing");
        let dotted = t.class("ignored", "pkg.Dotted");
        let dict = t.static_type("dict", 48, 0, cpython::TPFLAGS_HAVE_GC);
        let mut r = resolver(&t, false);
        let info = r.get(leak).unwrap().clone();
        assert_eq!(info.name, "__main__.Leak");
        assert!(info.heap && info.tracked);
        assert_eq!((info.basicsize, info.itemsize), (16, 0));
        assert_eq!(info.preheader, 32, "GC head + managed dict (3.11)");
        assert_eq!(r.get(builtin_module).unwrap().name, "Thing");
        assert_eq!(
            r.get(dotted).unwrap().name,
            "pkg.Dotted",
            "already qualified"
        );
        let d = r.get(dict).unwrap();
        assert_eq!(d.name, "dict");
        assert!(!d.heap);
        assert!(
            !d.tracked,
            "a static type of the interpreter on a partial build"
        );
        assert!(resolver(&t, true).get(dict).unwrap().tracked);
    }

    #[test]
    fn resolver_reads_the_310_dict_layout_for_the_module() {
        let mut t = Target::new(Version {
            major: 3,
            minor: 10,
            patch: 13,
        });
        let leak = t.heap_type("app.models", "Leak", 32, cpython::TPFLAGS_HAVE_GC);
        assert_eq!(
            resolver(&t, true).get(leak).unwrap().name,
            "app.models.Leak"
        );
    }

    #[test]
    fn resolver_refuses_a_garbage_type_pointer() {
        let mut t = Target::new(V311);
        let zero_size = t.static_type("zero", 0, 0, 0);
        let huge = t.static_type("huge", 1 << 21, 0, 0);
        let nameless = t.static_type("x", 16, 0, 0);
        t.mem.put(nameless + cpython::TP_NAME, 0xdead_0000);
        let mut r = resolver(&t, true);
        for bad in [0, 0xdead_0000, zero_size, huge, nameless] {
            assert!(r.get(bad).is_none(), "{bad:#x}");
        }
        assert_eq!(r.failed_reads, 5);
        // not cached: a type that becomes readable later resolves then
        let name_ptr = t.mem.get(t.str_type + cpython::TP_NAME).unwrap();
        t.mem.put(nameless + cpython::TP_NAME, name_ptr);
        assert_eq!(r.get(nameless).unwrap().name, "str");
    }

    #[test]
    fn resolver_revalidate_drops_a_replaced_heap_type() {
        let mut t = Target::new(V311);
        let old = t.class("__main__", "Old");
        let dict = t.static_type("dict", 48, 0, cpython::TPFLAGS_HAVE_GC);
        let mut r = resolver(&t, true);
        assert_eq!(r.get(old).unwrap().name, "__main__.Old");
        assert_eq!(r.get(dict).unwrap().name, "dict");
        // the class is freed and another one is created at its address
        let new = t.class("__main__", "New");
        for off in (0..0x400).step_by(8) {
            t.mem.put(old + off, t.mem.get(new + off).unwrap());
        }
        assert_eq!(
            r.get(old).unwrap().name,
            "__main__.Old",
            "cached until revalidated"
        );
        r.revalidate();
        assert_eq!(r.get(old).unwrap().name, "__main__.New");
        // static types are not re-read (they cannot be replaced): still cached after their
        // memory becomes unreadable
        t.mem.unmap(dict, 0x400);
        r.revalidate();
        assert_eq!(r.get(dict).unwrap().name, "dict");
    }
}
