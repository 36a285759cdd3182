//! A small fork-join pool for the decode path: a matrix-vector product takes tens of
//! microseconds, so waking a sleeping thread for each one (rayon, a condvar) costs as much as
//! the work. Workers spin on an epoch counter for a while after each job (as llama.cpp's OpenMP
//! threads do), then sleep until the next one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for every job; workers run a job when they see a new value.
    epoch: AtomicUsize,
    /// The current job: a task with its lifetime erased (see `Pool::run`) and its number of
    /// indices.
    job: Mutex<Option<(usize, usize, usize)>>,
    /// Workers that took the current job and have not finished with it.
    active: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Workers waiting on `wake`: `run` only signals (a system call) when there are some.
    sleepers: AtomicUsize,
    stop: AtomicBool,
    /// A task panicked: `run` panics too once the job is over, on the caller's thread.
    panicked: AtomicBool,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Serializes `run` (one job at a time).
    busy: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` in all: the caller of [`Pool::run`] is one of them.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            active: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("candle-kernel-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawn a kernel thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i` in `0..n`, spread over the pool; returns when all are done.
    pub fn run(&self, n: usize, f: Task<'_>) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || n == 1 {
            (0..n).for_each(f);
            return;
        }
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: a worker can only take the erased reference while `job` holds it, and counts
        // itself in `active` under the same lock; this function clears `job` and waits for
        // `active` to reach zero before it returns, so no use outlives `f`.
        let raw: (usize, usize) = unsafe { std::mem::transmute::<Task<'_>, (usize, usize)>(f) };
        s.next.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((raw.0, raw.1, n));
        s.epoch.fetch_add(1, Ordering::SeqCst);
        // A worker counts itself in `sleepers` (SeqCst) before it re-reads the epoch under the
        // lock, so either it sees the new epoch or this sees it asleep.
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        work(s, f, n);
        while s.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        while s.active.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a kernel task panicked");
        }
    }
}

fn work(s: &Shared, f: Task<'_>, n: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spun = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            // Reading the clock costs more than a spin: look at it now and then.
            if !spins.is_multiple_of(1024) || spun.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            let g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::Relaxed) {
                let _g = s.wake.wait_timeout(g, Duration::from_millis(100));
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            spun = Instant::now();
        }
        let job = {
            let g = s.job.lock().unwrap_or_else(|e| e.into_inner());
            if g.is_some() {
                s.active.fetch_add(1, Ordering::AcqRel);
            }
            *g
        };
        if let Some((a, b, n)) = job {
            // SAFETY: see `Pool::run`: counted in `active`, so the task outlives this use.
            let f: Task<'_> = unsafe { std::mem::transmute::<(usize, usize), Task<'_>>((a, b)) };
            work(s, f, n);
            s.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
