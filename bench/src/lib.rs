//! Load generator and benchmarks for chatter (see bench/README.md).
