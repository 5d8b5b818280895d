//! A team of threads that runs one forward pass in lockstep: every thread runs the same
//! sequence of steps on its share of the work, with a spinning barrier between steps.
//!
//! The threads live for one forward pass (a scoped spawn costs some ten microseconds, a
//! generated token takes milliseconds), so no thread spins between calls. Spinning rather than
//! sleeping at the barrier matters: a step takes tens of microseconds, a futex wake-up about as
//! long. A thread that panics poisons the barrier, so the others stop instead of waiting
//! forever, and the panic reaches the caller.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A sense-reversing barrier for a fixed number of threads.
#[derive(Debug)]
pub(crate) struct Barrier {
    threads: usize,
    waiting: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl Barrier {
    pub fn new(threads: usize) -> Barrier {
        Barrier {
            threads,
            waiting: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Waits until every thread has arrived, calling `idle` while it spins. Everything written
    /// before by any thread is visible after it to all.
    pub fn wait(&self, mut idle: impl FnMut()) {
        if self.threads == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.waiting.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.waiting.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("another compute thread panicked");
            }
            idle();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 14) {
                // More threads than free cores: let the late one run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// One thread's place in the team.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub id: usize,
    pub threads: usize,
    barrier: &'a Barrier,
}

impl Member<'_> {
    /// Waits for the other threads at the barrier, calling `idle` meanwhile.
    pub fn sync_while(&self, idle: impl FnMut()) {
        self.barrier.wait(idle);
    }

    /// This thread's items of `n` dealt round-robin (for uneven items: attention heads of
    /// different lengths).
    pub fn deal(&self, n: usize) -> impl Iterator<Item = usize> + use<> {
        (self.id..n).step_by(self.threads)
    }
}

/// Poisons the barrier when its thread unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `work` on `threads` threads (this one and `threads - 1` spawned), each with its
/// [`Member`]. Returns `Err` with the message of a thread's panic.
pub fn run(threads: usize, work: impl Fn(Member) + Sync) -> Result<(), String> {
    let threads = threads.max(1);
    let barrier = Barrier::new(threads);
    let member = |id| Member {
        id,
        threads,
        barrier: &barrier,
    };
    let body = |id| {
        let _guard = PoisonOnPanic(&barrier);
        work(member(id));
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::thread::scope(|s| {
            for id in 1..threads {
                let body = &body;
                s.spawn(move || body(id));
            }
            body(0);
        })
    }));
    outcome.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())
    })
}

/// A slice several threads write in disjoint parts between barriers.
#[derive(Debug, Clone, Copy)]
pub struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: access goes through the unsafe methods, whose callers keep the parts disjoint.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub fn new(slice: &mut [T]) -> Shared<T> {
        Shared {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
        }
    }

    /// # Safety
    /// No other thread may access `range` until the next barrier.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// # Safety
    /// No thread may write any of it until the next barrier.
    pub unsafe fn all(&self) -> &[T] {
        // SAFETY: the whole slice, read-only by the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_lockstep() {
        let mut data = vec![0usize; 64];
        let shared = Shared::new(&mut data);
        run(3, |m| {
            for step in 1..=50 {
                for i in m.deal(64) {
                    // SAFETY: dealt indices are disjoint between threads.
                    unsafe { shared.part(i..i + 1)[0] += 1 };
                }
                m.sync_while(|| {});
                // SAFETY: nobody writes until the next barrier.
                let all = unsafe { shared.all() };
                assert!(all.iter().all(|&v| v == step), "a thread ran ahead");
                m.sync_while(|| {});
            }
        })
        .unwrap();
        assert!(data.iter().all(|&v| v == 50));
    }

    #[test]
    fn a_panicking_thread_stops_the_team() {
        let err = run(2, |m| {
            if m.id == 1 {
                panic!("boom");
            }
            m.sync_while(|| {});
            m.sync_while(|| {});
        })
        .unwrap_err();
        assert!(err.contains("boom") || err.contains("panicked"), "{err}");
    }
}
