//! The gate of a greenlet: what a switch into it must carry (a type, and
//! its name for errors), compared by type id.

use std::any::{TypeId, type_name};
use std::marker::PhantomData;

/// What a switch into a greenlet must carry: a type, and its name for
/// errors. A suspended greenlet's `gate` points at the [`GateOf`] constant
/// of the type its pending switch (or its body) takes; a dead one's at
/// [`DEAD`], a killer's (while it waits) at `GateOf<GreenletExit>`, which
/// no value's type matches. A running greenlet's gate is whatever it was
/// (a switch to oneself is found by comparing cores). Types are compared
/// by id, not by the constant's address: one type's constant may have one
/// address per codegen unit (handles remember an address that passed, see
/// `Greenlet::seen`, so the fast path compares addresses only).
pub(super) struct Gate {
    pub(super) id: TypeId,
    pub(super) name: fn() -> &'static str,
}

/// The gate of a greenlet waiting for a `T`.
pub(super) struct GateOf<T>(PhantomData<T>);

impl<T: 'static> GateOf<T> {
    pub(super) const GATE: &'static Gate = &Gate {
        id: TypeId::of::<T>(),
        name: type_name::<T>,
    };
}

impl Gate {
    /// Whether a switch carrying a `T` may pass this gate.
    #[inline(always)]
    pub(super) fn admits<T: 'static>(&'static self) -> bool {
        self.id == TypeId::of::<T>()
    }
}

/// Types of no value: the gates of a main greenlet that has not left yet
/// and of a dead greenlet.
enum Fresh {}
enum Dead {}

/// The gate of a main greenlet before its first switch (it is running, so
/// nothing can switch to it yet).
pub(super) static FRESH: Gate = Gate {
    id: TypeId::of::<Fresh>(),
    name: || "nothing (it is running)",
};

/// The gate of a dead greenlet.
pub(super) static DEAD: Gate = Gate {
    id: TypeId::of::<Dead>(),
    name: || "nothing (it is dead)",
};

/// The type of no value: the gate of a killer waiting for its victim.
enum Killing {}

/// The gate of a greenlet that waits in `kill_core` for its victim's
/// death, the only thing that may wake it. A static, so that it has one
/// address: a suspended greenlet waits there exactly when its gate is this
/// (see [`waits_in_kill`](super::waits_in_kill)).
pub(super) static KILLING: Gate = Gate {
    id: TypeId::of::<Killing>(),
    name: || "nothing (it waits in kill() for another greenlet to die)",
};
