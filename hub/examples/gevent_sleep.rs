//! gevent's first example: three coroutines that sleep, and the order in
//! which their lines come out. `sleep(0)` lets the others run first; the
//! two timed sleeps wake in deadline order.
//!
//! ```text
//! cargo run -p corostack-hub --example gevent_sleep
//! ```
//!
//! prints, as gevent does:
//!
//! ```text
//! Running in foo
//! Explicit context to bar
//! running func3
//! running func3 again
//! Implicit context switch back to bar
//! Explicit context switch to foo again
//! ```

use std::time::Duration;

use corostack_hub as hub;

/// Runs the example, handing each line it prints to `emit`.
// The names are gevent's.
#[allow(clippy::disallowed_names)]
pub fn run(emit: impl Fn(String) + Clone + 'static) {
    hub::run(move || {
        let e = emit.clone();
        let foo = move || {
            e("Running in foo".to_string());
            hub::sleep(Duration::from_millis(200));
            e("Explicit context switch to foo again".to_string());
        };
        let e = emit.clone();
        let bar = move || {
            e("Explicit context to bar".to_string());
            hub::sleep(Duration::from_millis(100));
            e("Implicit context switch back to bar".to_string());
        };
        let e = emit.clone();
        let func3 = move || {
            e("running func3".to_string());
            hub::sleep(Duration::ZERO);
            e("running func3 again".to_string());
        };
        let handles = vec![hub::spawn(foo), hub::spawn(bar), hub::spawn(func3)];
        for r in hub::join_all(handles) {
            r.expect("the example's coroutines do not fail");
        }
    });
}

#[allow(dead_code)]
fn main() {
    run(|line| println!("{line}"));
}
