//! Clients that trickle, and uploads that wait for the budget or the spool.
