//! Box (or a proxy in front of it) answering strangely: absurd `Retry-After`, garbage bodies.
