//! Coordination between coroutines.
