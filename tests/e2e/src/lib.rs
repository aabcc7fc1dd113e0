//! End-to-end tests of kubenurse-rs live in `tests/`; this crate has no code of its own.
