//! Results files (versioned schema) and, later, reports built from them.

pub mod results;
