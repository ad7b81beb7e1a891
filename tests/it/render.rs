//! render tests
