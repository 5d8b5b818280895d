//! A small pool of inference contexts, each remembering which tokens its KV cache holds, so a
//! prompt that starts like an earlier one (the fixed system prompt of a voicemail feature)
//! only computes the tokens after the shared prefix.
//!
//! The pool is generic over the context type so its bookkeeping is tested without a model.
//! Each call checks a context out and has it to itself until the [`Lease`] is dropped: two
//! threads never share a context. When every context is busy and the pool is at its size
//! limit, a caller waits for one to come back.
//!
//! # The invariant a leased context keeps
//!
//! KV positions `0..tokens.len()` hold exactly `tokens`; positions past that may hold anything
//! (an interrupted decode, the last sampled token's predecessors...) and are removed before
//! the next use. The generator truncates `tokens` to the reused prefix *before* it decodes and
//! appends a token only *after* its KV entry is written, so an error or a panic at any point
//! leaves the invariant true.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::Result;

/// A context and the tokens at the start of its KV cache.
#[derive(Debug)]
pub(crate) struct Slot<C> {
    pub ctx: C,
    pub tokens: Vec<u32>,
}

#[derive(Debug)]
struct State<C> {
    /// Idle slots, least recently returned first.
    idle: Vec<Slot<C>>,
    /// Slots in existence (idle, leased, or being created).
    open: usize,
}

/// How many tokens two sequences share at their start.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How much of a cached prefix `shared` tokens long a prompt of `prompt_len` tokens can reuse.
/// The last prompt token is always computed again: its logits choose the first new token.
pub(crate) fn reusable(shared: usize, prompt_len: usize) -> usize {
    shared.min(prompt_len.saturating_sub(1))
}

/// What [`Pool::checkout`] does for a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Take the idle slot at this index, reusing this many cached tokens.
    Reuse { index: usize, keep: usize },
    /// Create a new context.
    Create,
    /// Wait for a slot to be returned.
    Wait,
}

/// Chooses a slot for `prompt` among the idle slots' cached tokens (least recently returned
/// first).
///
/// With reuse on: the idle slot sharing the longest prefix with the prompt if that prefix is at
/// least `min_shared` tokens; otherwise a new context while the pool may grow, so the cached
/// prefixes of other prompt families survive; otherwise the idle slot with the longest shared
/// prefix, the least recently used on a tie. With reuse off: any idle slot (keeping nothing),
/// then a new context.
pub(crate) fn choose(
    idle: &[&[u32]],
    prompt: &[u32],
    can_grow: bool,
    reuse: bool,
    min_shared: usize,
) -> Choice {
    if !reuse {
        return match idle.len() {
            0 if can_grow => Choice::Create,
            0 => Choice::Wait,
            n => Choice::Reuse {
                index: n - 1,
                keep: 0,
            },
        };
    }
    let mut best: Option<(usize, usize)> = None;
    for (index, tokens) in idle.iter().enumerate() {
        let keep = reusable(common_prefix(tokens, prompt), prompt.len());
        if best.is_none_or(|(_, k)| keep > k) {
            best = Some((index, keep));
        }
    }
    match best {
        Some((index, keep)) if keep >= min_shared.max(1) || !can_grow => {
            Choice::Reuse { index, keep }
        }
        _ if can_grow => Choice::Create,
        _ => Choice::Wait,
    }
}

/// Contexts handed out one caller at a time.
#[derive(Debug)]
pub(crate) struct Pool<C> {
    state: Mutex<State<C>>,
    returned: Condvar,
    max: usize,
    reuse: bool,
    min_shared: usize,
}

impl<C> Pool<C> {
    /// A pool of at most `max` contexts (at least one). `reuse` off makes every call compute
    /// its whole prompt; `min_shared` is the shortest shared prefix worth taking a busy
    /// family's context for rather than opening a new one.
    pub fn new(max: usize, reuse: bool, min_shared: usize) -> Self {
        Pool {
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max: max.max(1),
            reuse,
            min_shared,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // The state is a list of slots and a count, consistent after every statement that
        // changes it; a panic elsewhere while the lock was held leaves nothing half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A context for `prompt`: an idle one (with how many of its cached tokens the prompt can
    /// keep) or a new one made by `create`, called without the pool's lock held.
    pub fn checkout(
        &self,
        prompt: &[u32],
        create: impl FnOnce() -> Result<C>,
    ) -> Result<Lease<'_, C>> {
        let mut state = self.lock();
        loop {
            let idle: Vec<&[u32]> = state.idle.iter().map(|s| s.tokens.as_slice()).collect();
            let choice = choose(
                &idle,
                prompt,
                state.open < self.max,
                self.reuse,
                self.min_shared,
            );
            match choice {
                Choice::Reuse { index, keep } => {
                    let slot = state.idle.remove(index);
                    return Ok(Lease {
                        pool: self,
                        slot: Some(slot),
                        keep,
                    });
                }
                Choice::Create => {
                    state.open += 1;
                    drop(state);
                    return match create() {
                        Ok(ctx) => Ok(Lease {
                            pool: self,
                            slot: Some(Slot {
                                ctx,
                                tokens: Vec::new(),
                            }),
                            keep: 0,
                        }),
                        Err(e) => {
                            self.lock().open -= 1;
                            self.returned.notify_one();
                            Err(e)
                        }
                    };
                }
                Choice::Wait => {
                    state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Contexts in existence and how many of them are idle.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.open, state.idle.len())
    }

    /// The cached tokens of each idle slot, least recently returned first.
    #[cfg(test)]
    pub fn idle_tokens(&self) -> Vec<Vec<u32>> {
        self.lock().idle.iter().map(|s| s.tokens.clone()).collect()
    }

    fn give_back(&self, slot: Slot<C>) {
        self.lock().idle.push(slot);
        self.returned.notify_one();
    }
}

/// One caller's exclusive use of a context; returns it to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Lease<'a, C> {
    pool: &'a Pool<C>,
    slot: Option<Slot<C>>,
    /// Cached tokens at the start of the prompt that can stay in the KV cache.
    pub keep: usize,
}

impl<C> Lease<'_, C> {
    pub fn slot(&mut self) -> &mut Slot<C> {
        self.slot
            .as_mut()
            .expect("a lease holds its slot until dropped")
    }
}

impl<C> Drop for Lease<'_, C> {
    fn drop(&mut self) {
        if let Some(mut slot) = self.slot.take() {
            if std::thread::panicking() {
                // Whatever the panic interrupted, nothing cached is trusted any more.
                slot.tokens.clear();
            }
            self.pool.give_back(slot);
        }
    }
}

/// CPU cores shared by the computations of one runtime in the process.
///
/// ggml's CPU threads wait for each other after every operation of a graph by spinning. Two
/// computations whose threads together outnumber the cores keep preempting each other's
/// spinning threads and run many times slower than one after the other. A computation takes
/// as many cores as it has threads (at most all of them) and waits while they are taken, so
/// concurrent calls interleave their steps instead.
#[derive(Debug)]
pub(crate) struct Cores {
    free: Mutex<usize>,
    returned: Condvar,
    total: usize,
}

impl Cores {
    /// `total` cores (at least one).
    pub fn new(total: usize) -> Self {
        let total = total.max(1);
        Cores {
            free: Mutex::new(total),
            returned: Condvar::new(),
            total,
        }
    }

    /// Takes `n` cores (at most all), waiting until they are free; they are given back when
    /// the guard is dropped.
    pub fn take(&self, n: usize) -> CoresTaken<'_> {
        let n = n.clamp(1, self.total);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free < n {
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= n;
        CoresTaken { cores: self, n }
    }
}

/// Cores taken from [`Cores`] until dropped.
#[derive(Debug)]
pub(crate) struct CoresTaken<'a> {
    cores: &'a Cores,
    n: usize,
}

impl Drop for CoresTaken<'_> {
    fn drop(&mut self) {
        *self.cores.free.lock().unwrap_or_else(|p| p.into_inner()) += self.n;
        self.cores.returned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::error::Error;

    const SYSTEM: [u32; 6] = [1, 10, 11, 12, 13, 2];

    fn prompt(user: &[u32]) -> Vec<u32> {
        SYSTEM.iter().chain(user).copied().collect()
    }

    #[test]
    fn shared_prefixes_are_measured() {
        assert_eq!(common_prefix(&[], &[1, 2]), 0);
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 3]), 3);
        // The last prompt token is always computed again.
        assert_eq!(reusable(3, 3), 2);
        assert_eq!(reusable(2, 3), 2);
        assert_eq!(reusable(5, 1), 0);
        assert_eq!(reusable(0, 0), 0);
    }

    #[test]
    fn the_longest_useful_prefix_wins() {
        let a = prompt(&[20, 21]);
        let b = prompt(&[30]);
        let other = vec![1, 50, 51];
        let p = prompt(&[20, 22]);
        // SYSTEM + [20] is shared with `a`.
        assert_eq!(
            choose(&[&other, &b, &a], &p, true, true, 4),
            Choice::Reuse { index: 2, keep: 7 }
        );
        // Below the threshold a new context is opened while the pool may grow...
        assert_eq!(choose(&[&other], &p, true, true, 4), Choice::Create);
        // ...and otherwise the best idle one is taken anyway.
        assert_eq!(
            choose(&[&other], &p, false, true, 4),
            Choice::Reuse { index: 0, keep: 1 }
        );
        // Ties go to the least recently returned slot.
        assert_eq!(
            choose(&[&b, &b], &p, false, true, 4),
            Choice::Reuse { index: 0, keep: 6 }
        );
        assert_eq!(choose(&[], &p, true, true, 4), Choice::Create);
        assert_eq!(choose(&[], &p, false, true, 4), Choice::Wait);
        // A prompt equal to the cache recomputes its last token.
        assert_eq!(
            choose(&[&a], &a, true, true, 4),
            Choice::Reuse {
                index: 0,
                keep: a.len() - 1
            }
        );
    }

    #[test]
    fn without_reuse_nothing_is_kept() {
        let a = prompt(&[20]);
        assert_eq!(
            choose(&[&a], &a, true, false, 4),
            Choice::Reuse { index: 0, keep: 0 }
        );
        assert_eq!(choose(&[], &a, true, false, 4), Choice::Create);
        assert_eq!(choose(&[], &a, false, false, 4), Choice::Wait);
    }

    /// Runs one fake generation: the context counts its uses, the tokens become the prompt.
    fn fake_call(pool: &Pool<usize>, p: &[u32], created: &AtomicUsize) -> usize {
        let mut lease = pool
            .checkout(p, || Ok(created.fetch_add(1, Ordering::SeqCst)))
            .unwrap();
        let keep = lease.keep;
        let slot = lease.slot();
        assert_eq!(
            &slot.tokens[..keep],
            &p[..keep],
            "kept tokens are the prompt's"
        );
        slot.tokens.truncate(keep);
        slot.tokens.extend_from_slice(&p[keep..]);
        keep
    }

    #[test]
    fn sequential_calls_reuse_the_system_prompt() {
        let pool = Pool::new(2, true, 4);
        let created = AtomicUsize::new(0);
        assert_eq!(fake_call(&pool, &prompt(&[20, 21]), &created), 0);
        assert_eq!(fake_call(&pool, &prompt(&[30, 31]), &created), SYSTEM.len());
        assert_eq!(
            fake_call(&pool, &prompt(&[30, 31]), &created),
            SYSTEM.len() + 1
        );
        // An unrelated prompt opens a second context instead of evicting the first family...
        assert_eq!(fake_call(&pool, &[7, 8, 9, 10, 11], &created), 0);
        assert_eq!(pool.counts(), (2, 2));
        // ...which is still there for the next call of that family.
        assert_eq!(fake_call(&pool, &prompt(&[40]), &created), SYSTEM.len());
        assert_eq!(created.load(Ordering::SeqCst), 2);
        // At the limit, the least recently used context is taken over.
        assert_eq!(fake_call(&pool, &[3, 3, 3], &created), 0);
        assert_eq!(created.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_tokens(), vec![prompt(&[40]), vec![3, 3, 3]]);
    }

    #[test]
    fn a_failed_creation_frees_its_place() {
        let pool: Pool<usize> = Pool::new(1, true, 4);
        let err = pool
            .checkout(&[1, 2], || Err(Error::InvalidInput("no memory".into())))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
        assert_eq!(pool.counts(), (0, 0));
        let lease = pool.checkout(&[1, 2], || Ok(7)).unwrap();
        assert_eq!(lease.keep, 0);
        drop(lease);
        assert_eq!(pool.counts(), (1, 1));
    }

    #[test]
    fn a_panic_forgets_the_cached_tokens() {
        let pool: Pool<usize> = Pool::new(1, true, 1);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut lease = pool.checkout(&[1, 2, 3], || Ok(0)).unwrap();
            lease.slot().tokens = vec![1, 2, 3];
            panic!("decode interrupted");
        }));
        assert_eq!(pool.idle_tokens(), vec![Vec::<u32>::new()]);
        let lease = pool.checkout(&[1, 2, 3], || Ok(1)).unwrap();
        assert_eq!(lease.keep, 0);
    }

    #[test]
    fn concurrent_callers_never_share_a_context() {
        let pool: Arc<Pool<usize>> = Arc::new(Pool::new(2, true, 1));
        let created = Arc::new(AtomicUsize::new(0));
        let in_use: Arc<Vec<AtomicUsize>> = Arc::new((0..2).map(|_| AtomicUsize::new(0)).collect());
        let handles: Vec<_> = (0..6u32)
            .map(|t| {
                let (pool, created, in_use) = (pool.clone(), created.clone(), in_use.clone());
                std::thread::spawn(move || {
                    for i in 0..20u32 {
                        let p = prompt(&[t % 2, i]);
                        let mut lease = pool
                            .checkout(&p, || Ok(created.fetch_add(1, Ordering::SeqCst)))
                            .unwrap();
                        let id = lease.slot().ctx;
                        assert_eq!(in_use[id].fetch_add(1, Ordering::SeqCst), 0, "shared");
                        std::thread::sleep(Duration::from_micros(200));
                        let keep = lease.keep;
                        let slot = lease.slot();
                        assert_eq!(&slot.tokens[..keep], &p[..keep]);
                        slot.tokens.truncate(keep);
                        slot.tokens.extend_from_slice(&p[keep..]);
                        in_use[id].fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let created = created.load(Ordering::SeqCst);
        assert!((1..=2).contains(&created), "{created} contexts");
        assert_eq!(pool.counts(), (created, created));
    }

    #[test]
    fn computations_never_take_more_cores_than_there_are() {
        let cores = Arc::new(Cores::new(2));
        let busy = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = [2, 1, 1, 3, 2, 1]
            .into_iter()
            .map(|threads| {
                let (cores, busy, most) = (cores.clone(), busy.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _taken = cores.take(threads);
                        let held = threads.min(2);
                        let now = busy.fetch_add(held, Ordering::SeqCst) + held;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(100));
                        busy.fetch_sub(held, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(*cores.free.lock().unwrap(), 2);
    }
}
