//! Reading the target's memory, behind a small trait so that everything that walks it (the
//! census walker, the symbolizer, the type resolver) can be tested over memory a test builds
//! (`FakeMemory`): torn links, reused blocks, unreadable pages, on demand and every time.
//! Read-only by construction: the trait has no way to write.
use std::sync::Arc;

/// A read that could not be completed: unmapped, partly mapped, or the process is gone.
/// On a running heap this is data, not a failure: callers count it and go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError {
    pub addr: u64,
    pub len: usize,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read {} bytes at {:#x}", self.len, self.addr)
    }
}

impl std::error::Error for ReadError {}

pub type ReadResult<T> = Result<T, ReadError>;

pub trait Memory: Send + Sync {
    /// Fills `buf` from `addr`, all of it or nothing.
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<()>;

    fn u64(&self, addr: u64) -> ReadResult<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A NUL-terminated string of at most `max` bytes (lossy UTF-8).
    fn cstr(&self, addr: u64, max: usize) -> ReadResult<String> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        while out.len() < max {
            // Don't cross a page boundary in one read: the next page may be unmapped.
            let at = addr + out.len() as u64;
            let mut room = (4096 - (at as usize) % 4096).min(chunk.len());
            if self.read(at, &mut chunk[..room]).is_err() {
                // The end of what is readable may be closer than a page: go word by word.
                room = room.min(8 - (at as usize) % 8);
                self.read(at, &mut chunk[..room])?;
            }
            if let Some(nul) = chunk[..room].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..room]);
        }
        Err(ReadError { addr, len: max })
    }
}

/// Shared handle to some memory (the target process, or a fake one).
pub type Mem = Arc<dyn Memory>;

/// Memory a test lays out by hand: a sparse map of 8-byte-aligned words; reading any byte
/// that was never written (or was `unmap`ped) fails, like an unmapped page. Interior
/// mutability lets a test change the heap between (or during) reads, as a running target
/// does: `on_read` runs before each read and may rewrite the heap.
#[derive(Default)]
pub struct FakeMemory {
    words: std::sync::Mutex<hashbrown::HashMap<u64, u64>>,
    hook: std::sync::Mutex<Option<ReadHook>>,
    reads: std::sync::atomic::AtomicU64,
}

type ReadHook = Box<dyn FnMut(&FakeHeap) + Send>;

/// The fake's words, as the `on_read` hook sees them.
pub struct FakeHeap<'a> {
    words: &'a std::sync::Mutex<hashbrown::HashMap<u64, u64>>,
    /// How many reads happened before this one.
    pub reads: u64,
    /// The read about to happen (zero outside `on_read`): lets a test change the heap at an
    /// exact point of a walk ("just before the walker reads this node").
    pub addr: u64,
    pub len: usize,
}

impl FakeHeap<'_> {
    pub fn put(&self, addr: u64, value: u64) {
        assert!(
            addr.is_multiple_of(8),
            "fake memory is word-aligned: {addr:#x}"
        );
        self.words.lock().unwrap().insert(addr, value);
    }
    pub fn get(&self, addr: u64) -> Option<u64> {
        self.words.lock().unwrap().get(&addr).copied()
    }
    /// Makes `[addr, addr + len)` unreadable (an unmapped page, a freed arena).
    pub fn unmap(&self, addr: u64, len: u64) {
        self.words
            .lock()
            .unwrap()
            .retain(|&a, _| a + 8 <= addr || a >= addr + len);
    }
}

impl FakeMemory {
    pub fn new() -> Arc<FakeMemory> {
        Arc::new(FakeMemory::default())
    }

    pub fn put(&self, addr: u64, value: u64) {
        self.heap().put(addr, value)
    }

    pub fn put_words(&self, addr: u64, values: &[u64]) {
        for (i, &v) in values.iter().enumerate() {
            self.put(addr + 8 * i as u64, v);
        }
    }

    /// Bytes, padded with zeros to whole words (strings, line tables).
    pub fn put_bytes(&self, addr: u64, bytes: &[u8]) {
        assert!(addr.is_multiple_of(8));
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.put(addr + 8 * i as u64, u64::from_le_bytes(w));
        }
    }

    pub fn get(&self, addr: u64) -> Option<u64> {
        self.heap().get(addr)
    }

    /// Makes `[addr, addr + len)` unreadable (an unmapped page, a freed arena).
    pub fn unmap(&self, addr: u64, len: u64) {
        self.heap().unmap(addr, len)
    }

    /// Runs `hook` before every read from now on: the heap moving under a reader.
    pub fn on_read(&self, hook: impl FnMut(&FakeHeap) + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn heap(&self) -> FakeHeap<'_> {
        FakeHeap {
            words: &self.words,
            reads: self.reads(),
            addr: 0,
            len: 0,
        }
    }
}

impl Memory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<()> {
        if let Some(hook) = self.hook.lock().unwrap().as_mut() {
            hook(&FakeHeap {
                addr,
                len: buf.len(),
                ..self.heap()
            });
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let err = ReadError {
            addr,
            len: buf.len(),
        };
        let words = self.words.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr.checked_add(i as u64).ok_or(err)?;
            let w = words.get(&(a & !7)).ok_or(err)?;
            *b = w.to_le_bytes()[(a & 7) as usize];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_memory_reads_what_was_put_and_fails_elsewhere() {
        let m = FakeMemory::new();
        m.put_words(0x1000, &[1, 2]);
        assert_eq!(m.u64(0x1008), Ok(2));
        let mut b = [0u8; 4];
        assert!(
            m.read(0x1006, &mut b).is_ok(),
            "unaligned reads inside mapped words"
        );
        assert!(
            m.read(0x100c, &mut [0u8; 8]).is_err(),
            "a read running off the end fails"
        );
        m.unmap(0x1000, 8);
        assert!(m.u64(0x1000).is_err());
        assert_eq!(m.u64(0x1008), Ok(2));
    }

    #[test]
    fn cstr_stops_at_nul_and_bounds() {
        let m = FakeMemory::new();
        m.put_bytes(0x2000, b"__main__.Leak\0");
        assert_eq!(m.cstr(0x2000, 256).unwrap(), "__main__.Leak");
        m.put_bytes(0x3000, b"0123456789abcdef");
        assert!(m.cstr(0x3000, 16).is_err(), "no NUL within the bound");
    }
}
