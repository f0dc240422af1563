//! Native allocations' sites: the stack copied at the allocator's return unwound
//! (`native::unwind`, from the files' CFI: extensions are built without frame pointers),
//! up to where the interpreter called in, each address symbolized (`native::symbolize`)
//! once. The Python frames above come from the birth's Python stack (`symbols`).
use crate::model::sites::Frame;
use crate::native::symbolize::NativeSymbolizer;
use crate::native::unwind::{NativeSample, Unwinder};
use crate::probes::kernel::NativeRecord;
use hashbrown::HashMap;

/// Deepest native part kept (the C functions between the interpreter and the allocator).
pub const MAX_NATIVE_FRAMES: usize = 32;

/// What the pipeline needs from native stacks (a fake in tests).
pub trait NativeFrames {
    /// Return addresses, innermost first, from the allocating function to the last one
    /// before the interpreter.
    fn unwind(&mut self, r: &NativeRecord) -> Vec<u64>;
    /// One address as frames, innermost first: the functions inlined there, then the one
    /// the address is in; each with its library, and with debug info file and line.
    fn frames(&mut self, addr: u64) -> Vec<Frame>;
}

pub struct NativeStacks {
    unwinder: Unwinder,
    symbolizer: NativeSymbolizer,
    /// The interpreter's code: unwinding stops there.
    interpreter: Vec<(u64, u64)>,
    frames: HashMap<u64, Vec<Frame>>,
}

impl NativeStacks {
    pub fn new(pid: u32, interpreter: Vec<(u64, u64)>) -> Self {
        NativeStacks {
            unwinder: Unwinder::new(pid),
            symbolizer: NativeSymbolizer::new(pid),
            interpreter,
            frames: HashMap::new(),
        }
    }
}

impl NativeFrames for NativeStacks {
    fn unwind(&mut self, r: &NativeRecord) -> Vec<u64> {
        let sample = NativeSample {
            ip: r.ip,
            sp: r.sp,
            bp: r.bp,
            stack: &r.stack,
        };
        let interp = &self.interpreter;
        let stop = |a: u64| interp.iter().any(|&(lo, hi)| a >= lo && a < hi);
        self.unwinder.unwind(&sample, MAX_NATIVE_FRAMES, &stop)
    }

    fn frames(&mut self, addr: u64) -> Vec<Frame> {
        if let Some(f) = self.frames.get(&addr) {
            return f.clone();
        }
        let n = self.symbolizer.symbolize(addr);
        let mut frames: Vec<Frame> = n
            .inlined
            .into_iter()
            .map(|i| Frame {
                function: i.function,
                file: i.file.unwrap_or_default(),
                line: i.line.map(|l| l as i32),
                library: Some(n.library.clone()),
            })
            .collect();
        frames.push(Frame {
            function: n.function,
            file: n.file.unwrap_or_default(),
            line: n.line.map(|l| l as i32),
            library: Some(n.library),
        });
        self.frames.insert(addr, frames.clone());
        frames
    }
}
