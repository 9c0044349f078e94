//! The shared harness of conclave's bounded fuzz targets (`*/tests/fuzz_*.rs`): case counts
//! and a fixed seed from the environment, a per-thread hang watchdog, and a counting global
//! allocator that bounds one case's peak heap growth.
//!
//! A test file describes itself once as a [`Target`] (its name, seed and summary words) and
//! runs each property through [`Target::fuzz`], counting its inputs with [`count_input`] (and
//! [`count_hit`] for the ones that parse, decode, ...). It installs the allocator itself:
//! `#[global_allocator] static ALLOC: conclave_fuzz::CountingAlloc = conclave_fuzz::CountingAlloc;`
//!
//! The summary line of each property goes to stderr (`eprintln!`, seen with `--nocapture`),
//! and so does a hang report right before the abort: this is a test harness, where no
//! `tracing` subscriber is installed to carry either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseResult, TestRunner};

/// Cases per property: `CONCLAVE_FUZZ_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("CONCLAVE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A runner with a fixed seed (`CONCLAVE_FUZZ_SEED` overrides `default_seed`), no failure
/// persistence, and `cases(default_cases)` cases.
pub fn runner(default_cases: u32, default_seed: u64) -> TestRunner {
    let seed = std::env::var("CONCLAVE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default_seed);
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_time: 60_000,
        ..Config::default()
    })
}

/// One fuzz test file: the prefix of its summary lines and hang reports, its fixed seed, and
/// the words of its summary line.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The file's name, e.g. `fuzz_frames`.
    pub file: &'static str,
    /// The seed of every property's runner (`CONCLAVE_FUZZ_SEED` overrides it).
    pub seed: u64,
    /// What the file does with an input, e.g. `decoded`: "N inputs decoded".
    pub verb: &'static str,
    /// What [`count_hit`] counts, e.g. `accepted`: "N inputs parsed (M accepted)". `None`
    /// when the file counts no hits.
    pub hits: Option<&'static str>,
}

impl Target {
    /// A runner with this file's seed (see [`runner`]).
    pub fn runner(&self, default_cases: u32) -> TestRunner {
        runner(default_cases, self.seed)
    }

    /// Arms the hang watchdog (see [`watchdog_arm`]) under `file::name`.
    pub fn watchdog_arm(&self, name: &str, input: Arc<dyn Debug + Send + Sync>) -> Disarm {
        watchdog_arm(&format!("{}::{name}", self.file), input)
    }

    /// Runs one property under the watchdog, prints how many inputs it executed and how long
    /// it took, and panics with proptest's (shrunk) failure.
    pub fn fuzz<S>(
        &self,
        name: &str,
        default_cases: u32,
        strategy: S,
        test: impl Fn(S::Value) -> TestCaseResult,
    ) where
        S: Strategy,
        S::Value: Clone + Send + Sync + 'static,
    {
        let (inputs_before, hits_before) = (inputs(), hits());
        let started = Instant::now();
        let mut runner = self.runner(default_cases);
        let result = runner.run(&strategy, |value| {
            let _guard = self.watchdog_arm(name, Arc::new(value.clone()));
            test(value)
        });
        let hits = match self.hits {
            Some(what) => format!(" ({} {what})", hits() - hits_before),
            None => String::new(),
        };
        eprintln!(
            "{}::{name}: {} cases, {} inputs {}{hits}, {:.2?}",
            self.file,
            cases(default_cases),
            inputs() - inputs_before,
            self.verb,
            started.elapsed()
        );
        if let Err(error) = result {
            panic!("{name}: {error}");
        }
    }
}

thread_local! {
    /// Inputs run by this thread (each property runs on its own test thread).
    static INPUTS: Cell<u64> = const { Cell::new(0) };
    /// Of those, the ones [`count_hit`] counted.
    static HITS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one input run by this thread.
pub fn count_input() {
    INPUTS.with(|n| n.set(n.get() + 1));
}

/// Counts one input that this file's [`Target::hits`] names (decoded to a message, accepted).
pub fn count_hit() {
    HITS.with(|n| n.set(n.get() + 1));
}

/// The inputs this thread has run so far.
pub fn inputs() -> u64 {
    INPUTS.with(Cell::get)
}

fn hits() -> u64 {
    HITS.with(Cell::get)
}

type Armed = (&'static str, Instant, Arc<dyn Debug + Send + Sync>);

fn armed() -> &'static Mutex<HashMap<ThreadId, Armed>> {
    static ARMED: OnceLock<Mutex<HashMap<ThreadId, Armed>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let limit = Duration::from_secs(
            std::env::var("CONCLAVE_FUZZ_HANG_SECS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(30),
        );
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let map = armed().lock().unwrap_or_else(|e| e.into_inner());
                for (name, since, input) in map.values() {
                    if since.elapsed() > limit {
                        let text = format!("{input:?}");
                        let cut = text.char_indices().nth(8000).map_or(text.len(), |(i, _)| i);
                        eprintln!(
                            "HANG: {name}: one case ran for more than {limit:?}; \
                             input:\n{}",
                            &text[..cut]
                        );
                        std::process::abort();
                    }
                }
            }
        });
        Mutex::new(HashMap::new())
    })
}

/// Disarms the watchdog for this thread when dropped.
pub struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        armed()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&std::thread::current().id());
    }
}

/// Arms the hang watchdog for this thread: if the case runs longer than
/// `CONCLAVE_FUZZ_HANG_SECS` (default 30), the input is printed and the process aborts.
/// `name` is printed as given (e.g. `fuzz_frames::decode_mutated`).
pub fn watchdog_arm(name: &str, input: Arc<dyn Debug + Send + Sync>) -> Disarm {
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    armed()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(std::thread::current().id(), (name, Instant::now(), input));
    Disarm
}

/// Counts heap bytes per thread, so one decode's peak growth can be bounded.
pub struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Runs `f` and returns its result with the peak heap growth (bytes) of this thread during it.
pub fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, usize::try_from(peak - start).unwrap_or(0))
}
