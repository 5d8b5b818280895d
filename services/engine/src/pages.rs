//! Zeroed memory for the weights, in 2 MB pages where the system gives them.
//!
//! A generated token reads every weight once, a few hundred megabytes, so with 4 KB pages
//! every 4 KB of weights costs a TLB miss and a page walk; in a virtual machine a walk goes
//! through two sets of page tables. On Linux a model's matrices are carved one after another
//! from one [`Region`]: a mapping that starts at a 2 MB boundary and is marked for transparent
//! huge pages (`MADV_HUGEPAGE`, which the default `madvise` mode honours), so every whole 2 MB
//! of weights gets one page and only the region's last, partly used one adds memory. The
//! region reserves address space only: pages nobody writes cost nothing. Elsewhere, or if
//! the mapping fails, the weights live on the heap.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// The size of a huge page on x86-64 and most AArch64 Linux systems.
const HUGE_PAGE: usize = 2 << 20;

/// Where each carved part starts: a cache line.
const ALIGN: usize = 64;

/// Address space that [`Pages`] are carved from in order, mapped for huge pages.
pub(crate) struct Region {
    #[cfg(target_os = "linux")]
    mapping: Option<Mapping>,
    /// Bytes carved so far (only mappings are carved).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    used: std::sync::atomic::AtomicUsize,
}

#[cfg(target_os = "linux")]
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned memory; its bytes are reachable only through the disjoint parts
// `Region::carve` hands out, each owned by one `Pages`.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// A region of up to `len` bytes. Without a mapping every carve falls back to the heap.
    pub fn reserve(len: usize) -> Arc<Region> {
        Arc::new(Region {
            #[cfg(target_os = "linux")]
            mapping: Mapping::new(len),
            used: Default::default(),
        })
    }

    /// The next `len` zeroed bytes of the region, or `None` when they do not fit.
    fn carve(self: &Arc<Region>, len: usize) -> Option<Pages> {
        #[cfg(target_os = "linux")]
        if let Some(mapping) = &self.mapping {
            use std::sync::atomic::Ordering;
            let take = len.next_multiple_of(ALIGN);
            let start = self.used.fetch_add(take, Ordering::Relaxed);
            if start + take <= mapping.len {
                // SAFETY: the part lies inside the mapping.
                let ptr = unsafe { mapping.ptr.add(start) };
                return Some(Pages {
                    storage: Storage::Carved {
                        _region: Arc::clone(self),
                        ptr,
                        len,
                    },
                });
            }
            self.used.fetch_sub(take, Ordering::Relaxed);
        }
        let _ = len;
        None
    }
}

#[cfg(target_os = "linux")]
impl Mapping {
    /// An anonymous mapping of `len` bytes (rounded up to whole huge pages) starting at a 2 MB
    /// boundary, marked for huge pages. `None` if the system refuses it.
    fn new(len: usize) -> Option<Mapping> {
        if len == 0 {
            return None;
        }
        let len = len.next_multiple_of(HUGE_PAGE);
        // Map one huge page more, then give back the parts before the first 2 MB boundary and
        // after the end.
        let reserve = len + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it. NORESERVE:
        // the address space is an upper bound, most of it may stay unused.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            tracing::debug!(len, "could not map memory for weights; using the heap");
            return None;
        }
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        let head = start - base as usize;
        let tail = reserve - head - len;
        // SAFETY: both ranges lie inside the mapping just made and outside the part kept.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            // A hint: without transparent huge pages the mapping keeps 4 KB pages.
            if libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) != 0 {
                tracing::debug!("transparent huge pages are not available for the weights");
            }
        }
        Some(Mapping {
            ptr: std::ptr::NonNull::new(start as *mut u8)?,
            len,
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` and is unmapped once, here, when the
        // last part carved from it is gone.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// `len` zeroed bytes of weights: carved from a [`Region`], or on the heap.
pub(crate) struct Pages {
    storage: Storage,
}

enum Storage {
    Heap(Vec<u8>),
    /// `len` bytes from `ptr` on, inside the region's mapping, which the `Arc` keeps alive.
    Carved {
        _region: Arc<Region>,
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    },
}

// SAFETY: a carved part is owned memory like a Vec's: no other `Pages` reaches its bytes.
unsafe impl Send for Pages {}
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` zeroed bytes from `region`, or from a region of their own when `region` is
    /// `None` or full.
    pub fn zeroed(len: usize, region: Option<&Arc<Region>>) -> Pages {
        if let Some(pages) = region.and_then(|r| r.carve(len)) {
            return pages;
        }
        // A region pays from one huge page on.
        if len >= HUGE_PAGE
            && let Some(pages) = Region::reserve(len).carve(len)
        {
            return pages;
        }
        Pages {
            storage: Storage::Heap(vec![0; len]),
        }
    }
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => v,
            // SAFETY: the part holds `len` bytes for as long as `self` (and so the region)
            // lives, and no other `Pages` holds any of them.
            Storage::Carved { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Heap(v) => v,
            // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
            Storage::Carved { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(pages: &mut Pages, seed: usize) {
        for (i, b) in pages.iter_mut().enumerate() {
            *b = ((i + seed) % 251) as u8;
        }
    }

    fn holds(pages: &Pages, seed: usize) -> bool {
        pages
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((i + seed) % 251) as u8)
    }

    #[test]
    fn pages_are_zeroed_and_writable() {
        for len in [0, 1, 4095, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 12345] {
            let mut pages = Pages::zeroed(len, None);
            assert_eq!(pages.len(), len);
            assert!(pages.iter().all(|&b| b == 0), "len {len}");
            fill(&mut pages, 0);
            assert!(holds(&pages, 0), "len {len}");
        }
    }

    #[test]
    fn parts_of_a_region_are_disjoint_and_outlive_it() {
        let region = Region::reserve(3 * HUGE_PAGE);
        let lens = [1000, HUGE_PAGE, 5, 300_000];
        let mut parts: Vec<Pages> = lens
            .iter()
            .map(|&len| Pages::zeroed(len, Some(&region)))
            .collect();
        // More than is left: memory of its own.
        let mut extra = Pages::zeroed(2 * HUGE_PAGE, Some(&region));
        drop(region);
        for (seed, part) in parts.iter_mut().enumerate() {
            assert!(part.iter().all(|&b| b == 0));
            fill(part, seed);
        }
        fill(&mut extra, 99);
        for (seed, (part, len)) in parts.iter().zip(lens).enumerate() {
            assert_eq!(part.len(), len);
            assert!(holds(part, seed), "part {seed} was overwritten");
        }
        assert!(holds(&extra, 99));
        #[cfg(target_os = "linux")]
        {
            assert!(
                parts
                    .iter()
                    .all(|p| (p.as_ptr() as usize).is_multiple_of(ALIGN))
            );
            assert!((parts[0].as_ptr() as usize).is_multiple_of(HUGE_PAGE));
        }
    }
}
