//! Unit tests of the pipeline paths.
