//! All integration tests, in one test binary (one link, one place for the helpers).
//! They run the real binary against real tools; see `support` for the world each test builds.

mod support;

mod cli;
mod packaging;
