//! The decide/update path allocates nothing in steady state: counted with a global allocator wrapper, on the
//! test's own thread only (the test harness's main thread allocates now and then while a test runs, which made
//! a process-wide count fail about one run in eight with 4 allocations that were not the policy's).

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use safebet_engine::{ActionSet, Algorithm, BaselineReward, Layout, Policy, PolicyConfig, Round};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (a const initialiser: no lazy set-up that would allocate).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decide_and_update_allocate_nothing_after_warm_up() {
    COUNTED.with(|counted| counted.set(true));
    let layouts = [Layout::Shared { dim: 8 }, Layout::Disjoint { dim: 8, actions: 5 }];
    for algorithm in
        [Algorithm::Linucb, Algorithm::Clucb, Algorithm::Clucb2, Algorithm::Lints, Algorithm::EpsilonGreedy]
    {
        for layout in layouts {
            for baseline_reward in [BaselineReward::Known, BaselineReward::Unknown] {
                let mut config = PolicyConfig::new(algorithm, layout);
                config.baseline_reward = baseline_reward;
                config.refactor_every = 1_000_000;
                let mut policy = Policy::new(config).unwrap();
                let features: Vec<f64> = (0..40).map(|i| ((i * 7919) % 13) as f64 / 13.0 - 0.5).collect();
                let actions = match layout {
                    Layout::Shared { .. } => ActionSet::PerAction { features: &features, num_actions: 5 },
                    _ => ActionSet::SharedContext { context: &features[..8] },
                };
                let round = Round { actions, baseline: 2, baseline_expected_reward: Some(0.5) };
                let mut step = |i: usize| {
                    let d = policy.decide(&round).unwrap();
                    policy.observe_reward(d.id, (i % 10) as f64 / 10.0).unwrap();
                };
                for i in 0..200 {
                    step(i);
                }
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                for i in 0..1_000 {
                    step(i);
                }
                let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
                assert_eq!(
                    allocations, 0,
                    "{algorithm:?} {layout:?} {baseline_reward:?} allocated {allocations} times"
                );
            }
        }
    }
}
