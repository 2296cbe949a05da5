//! Results files (versioned schema) and, later, reports built from them.

pub mod kernels_results;
pub mod load_results;
pub mod results;

// Reports built from results files (`infermeter report`).
pub mod build;
pub mod compare;
pub mod format;
pub mod html;
pub mod kind;
pub mod markdown;
pub mod model;
pub mod output;
pub mod plots;
