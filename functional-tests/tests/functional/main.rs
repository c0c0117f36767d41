//! Functional tests (being written).
