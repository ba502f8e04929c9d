//! Bodies in tiny HTTP chunks, raw and multipart: memory stays within the budget plus a fixed bound.
