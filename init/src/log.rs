//! Logging: a small `tracing` subscriber writing to the console or /dev/kmsg.
