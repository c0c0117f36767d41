//! The API router (to be written).
