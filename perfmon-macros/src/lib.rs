//! Attribute macros for perfmon. The macros land with the macros issue; see `perfmon`.
