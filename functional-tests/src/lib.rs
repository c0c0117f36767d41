//! The functional-test harness (being written).
