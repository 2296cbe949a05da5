//! Tests that need a program from outside the repository (a real llama.cpp server, chromium) skip
//! with a printed reason where it is missing — unless `INFERMETER_REQUIRE_EXTERNAL=1` is set, as
//! `.ci/run` does after installing them: there a missing program is a failure, not a silent pass.

/// Skip (print why) or, when the environment requires the external programs, fail.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("INFERMETER_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") {
        panic!("{test}: {why} (INFERMETER_REQUIRE_EXTERNAL=1: required here)");
    }
    eprintln!("skipping {test}: {why}");
}
