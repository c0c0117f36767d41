//! Pagination tokens (spec 6.3), to be written.
