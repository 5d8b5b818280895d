//! Zeroed memory for a matrix's weights, in 2 MB pages where the system gives them.
//!
//! A generated token reads every weight once, a few hundred megabytes, so with 4 KB pages
//! every 4 KB of weights costs a TLB miss and a page walk; in a virtual machine a walk goes
//! through two sets of page tables. On Linux the weights are mapped at a 2 MB boundary and
//! marked for transparent huge pages (`MADV_HUGEPAGE`, which the default `madvise` mode of
//! transparent huge pages honours): whole 2 MB ranges of the mapping get 2 MB pages, the last
//! part of a mapping that does not fill one keeps 4 KB pages, so no memory is added. Elsewhere,
//! or if the mapping fails, the weights live on the heap as before.

use std::ops::{Deref, DerefMut};

/// The size of a huge page on x86-64 and most AArch64 Linux systems.
const HUGE_PAGE: usize = 2 << 20;

/// `len` zeroed bytes, mapped for huge pages where possible.
pub(crate) struct Pages {
    storage: Storage,
}

enum Storage {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Mapped {
        ptr: std::ptr::NonNull<u8>,
        len: usize,
        mapped: usize,
    },
}

// SAFETY: a mapping is owned memory like a Vec's: only reachable through `&self`/`&mut self`.
unsafe impl Send for Pages {}
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` zeroed bytes; mappings only pay from one huge page on.
    pub fn zeroed(len: usize) -> Pages {
        #[cfg(target_os = "linux")]
        if len >= HUGE_PAGE
            && let Some(pages) = Pages::map(len)
        {
            return pages;
        }
        Pages {
            storage: Storage::Heap(vec![0; len]),
        }
    }

    /// An anonymous mapping of `len` bytes (rounded up to 4 KB pages) starting at a 2 MB
    /// boundary, marked for huge pages. `None` if the system refuses the mapping.
    #[cfg(target_os = "linux")]
    fn map(len: usize) -> Option<Pages> {
        let mapped = len.next_multiple_of(4096);
        // Map one huge page more, then give back the parts before the first 2 MB boundary and
        // after the end.
        let reserve = mapped + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
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
        let tail = reserve - head - mapped;
        // SAFETY: both ranges lie inside the mapping just made and outside the part kept.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap((start + mapped) as *mut libc::c_void, tail);
            }
            // A hint: without transparent huge pages the mapping keeps 4 KB pages.
            if libc::madvise(start as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE) != 0 {
                tracing::debug!("transparent huge pages are not available for the weights");
            }
        }
        Some(Pages {
            storage: Storage::Mapped {
                ptr: std::ptr::NonNull::new(start as *mut u8)?,
                len,
                mapped,
            },
        })
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Pages {
        let mut pages = Pages::zeroed(bytes.len());
        pages.copy_from_slice(bytes);
        pages
    }
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap(v) => v,
            // SAFETY: the mapping holds `len` readable bytes for as long as `self` lives.
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, len, .. } => unsafe {
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
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped { ptr, mapped, .. } = self.storage {
            // SAFETY: the mapping was made by `map` and is unmapped once, here.
            unsafe { libc::munmap(ptr.as_ptr() as *mut libc::c_void, mapped) };
        }
    }
}

impl Clone for Pages {
    fn clone(&self) -> Pages {
        Pages::copy_of(self)
    }
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mapped = !matches!(self.storage, Storage::Heap(_));
        f.debug_struct("Pages")
            .field("len", &self.len())
            .field("mapped", &mapped)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_zeroed_writable_and_copied() {
        for len in [0, 1, 4095, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 12345] {
            let mut pages = Pages::zeroed(len);
            assert_eq!(pages.len(), len);
            assert!(pages.iter().all(|&b| b == 0), "len {len}");
            for (i, b) in pages.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            let copy = pages.clone();
            drop(pages);
            assert_eq!(copy.len(), len);
            assert!(copy.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_weights_start_at_a_huge_page_boundary() {
        let pages = Pages::zeroed(3 * HUGE_PAGE + 12345);
        assert!(matches!(pages.storage, Storage::Mapped { .. }));
        assert_eq!(pages.as_ptr() as usize % HUGE_PAGE, 0);
        // Small ones stay on the heap: a mapping gains nothing below one huge page.
        assert!(matches!(Pages::zeroed(4096).storage, Storage::Heap(_)));
    }
}
