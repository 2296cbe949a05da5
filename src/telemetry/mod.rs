//! Telemetry: what the machine is and (later) what it draws while it works.

pub mod host;
