//! [`CountingAllocator`]: the system allocator, counting the bytes and blocks the process
//! holds, so a memory bench can print what its data structures really take beside the
//! resident memory (which also holds freed memory the allocator kept).
//!
//! A bench binary installs it with
//! `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;` and reads
//! [`allocated`]. Two relaxed atomic updates per allocation; lock-free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static BYTES: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The system allocator with counters of what is allocated and not yet freed.
pub struct CountingAllocator;

/// What the process holds from the allocator at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocated {
    /// Bytes requested and not freed (without the allocator's own headers and rounding).
    pub bytes: usize,
    /// Blocks allocated and not freed.
    pub blocks: usize,
}

impl Allocated {
    /// What was allocated since `earlier` (0 where it shrank).
    pub fn since(self, earlier: Allocated) -> Allocated {
        Allocated {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            blocks: self.blocks.saturating_sub(earlier.blocks),
        }
    }
}

/// What the process holds now; all zero unless [`CountingAllocator`] is the global
/// allocator.
pub fn allocated() -> Allocated {
    Allocated {
        bytes: BYTES.load(Ordering::Relaxed),
        blocks: BLOCKS.load(Ordering::Relaxed),
    }
}

/// The most bytes held at once since the process started or since the last
/// [`reset_peak_allocated`].
pub fn peak_allocated_bytes() -> usize {
    PEAK_BYTES.load(Ordering::Relaxed)
}

/// Starts a new peak from what is held now.
pub fn reset_peak_allocated() {
    PEAK_BYTES.store(BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn count_allocation(bytes: usize) {
    let now = BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    BLOCKS.fetch_add(1, Ordering::Relaxed);
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_allocation(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_allocation(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, passed on as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            let now = BYTES.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
            BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}
