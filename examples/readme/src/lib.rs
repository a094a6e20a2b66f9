//! The README's Rust snippets, compiled (and run where they can) as doctests of a crate whose
//! dependencies are exactly the README's `[dependencies]` block, as a new user would have.
//! `cargo test -p fhir-bulk-readme --doc`.

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
