//! The policy language: HuJSON parsing, validation, tests, compilation to per-node views,
//! and explanation of decisions. (Being built: see issue 2.)
