//! Issue 12, item 12 (the hub's part): every stack size that
//! `Builder::stack_size` accepts runs tasks, down to `MIN_STACK_SIZE`.
//! It depends on the core's `place_closure` (being changed so that every
//! size a constructor accepts runs a coroutine): kept in a file of its own
//! so that it can fail alone until that change is merged.

mod util;

use std::time::Duration;

use corostack::stack::MIN_STACK_SIZE;
use corostack_hub as hub;

#[test]
fn the_smallest_accepted_stack_size_runs_tasks_that_sleep() {
    let sum = hub::Builder::new().stack_size(MIN_STACK_SIZE).run(|| {
        let tasks: Vec<_> = (1..=4u64)
            .map(|i| {
                hub::spawn(move || {
                    hub::sleep(Duration::from_millis(i));
                    hub::yield_now();
                    i
                })
            })
            .collect();
        hub::sleep(Duration::from_millis(1));
        hub::join_all(tasks)
            .into_iter()
            .map(Result::unwrap)
            .sum::<u64>()
    });
    assert_eq!(sum, 10);
}
