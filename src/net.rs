//! Sockets for the hub.
