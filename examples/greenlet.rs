//! Python greenlet's first example: two greenlets switching explicitly.
//!
//! ```text
//! cargo run --example greenlet     # prints 12, 56, 34, 78, one per line
//! ```

use std::cell::OnceCell;
use std::rc::Rc;

use corostack::greenlet::Greenlet;

/// Runs the example, handing each line it prints to `emit`.
pub fn run(emit: impl Fn(String) + Clone + 'static) {
    // Each greenlet switches to the other, so each needs the other's handle.
    let gr1_cell: Rc<OnceCell<Greenlet<()>>> = Rc::default();
    let gr2_cell: Rc<OnceCell<Greenlet<()>>> = Rc::default();
    let (e1, to_gr2) = (emit.clone(), gr2_cell.clone());
    let gr1 = Greenlet::new(move |()| {
        e1("12".into());
        to_gr2.get().unwrap().switch(());
        e1("34".into());
        to_gr2.get().unwrap().switch(());
    });
    let (e2, to_gr1) = (emit, gr1_cell.clone());
    let gr2 = Greenlet::new(move |()| {
        e2("56".into());
        to_gr1.get().unwrap().switch(());
        e2("78".into());
    });
    gr1_cell.set(gr1.clone()).unwrap();
    gr2_cell.set(gr2).unwrap();
    gr1.switch(());
    // gr2 returned into its parent, the main greenlet; gr1 still waits in
    // its second switch. Break the handles' cycle so both are freed
    // (dropping the last handle of the suspended gr1 unwinds it).
    drop((gr1, gr1_cell, gr2_cell));
}

#[allow(dead_code)]
fn main() {
    run(|line| println!("{line}"));
}
