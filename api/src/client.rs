//! The typed API client (to be written).
