//! Cross-crate integration tests for perfmon: see the files in `tests/`.
