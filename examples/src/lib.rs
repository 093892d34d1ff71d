//! Runnable examples for perfmon: see `examples/`.
