//! Build script: records the git commit the binary was built from (results files carry it); with
//! `--features regen-bindings`, regenerates the CUDA kernels' parameter bindings (see below).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=INFERMETER_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    #[cfg(all(feature = "cuda-12", feature = "cuda-13"))]
    panic!("features cuda-12 and cuda-13 exclude each other: build with `--no-default-features --features cuda-13`");
    #[cfg(not(any(feature = "cuda-12", feature = "cuda-13")))]
    panic!("pick a CUDA API level: the default feature cuda-12, or `--features cuda-13`");
    #[cfg(feature = "regen-bindings")]
    regen_bindings();
}

/// `--features regen-bindings`: regenerate the Rust side of the kernels' host/device ABI,
/// `src/backend/cuda/params.rs`, from `kernels/params.h` with bindgen (needs libclang; see
/// `scripts/check-bindings`). `INFERMETER_BINDINGS_OUT` redirects the output: the check script
/// writes to a temporary file and diffs it against the committed one. A plain build never runs this.
#[cfg(feature = "regen-bindings")]
fn regen_bindings() {
    println!("cargo:rerun-if-changed=kernels/params.h");
    println!("cargo:rerun-if-env-changed=INFERMETER_BINDINGS_OUT");
    let out = std::env::var("INFERMETER_BINDINGS_OUT")
        .unwrap_or_else(|_| "src/backend/cuda/params.rs".into());
    let bindings = bindgen::Builder::default()
        .header("kernels/params.h")
        .raw_line("//! The kernels' host/device ABI: bindgen's output for `kernels/params.h`. GENERATED, do not")
        .raw_line("//! edit: change the header, then `scripts/check-bindings --write` (CI diffs the two).")
        .allowlist_type(
            "KvGeometry|KvWriteParams|RopeParams|QkNormRopeParams|PagedAttentionParams|DecodeAttentionParams|PrefillAttentionParams|SamplingRowParams",
        )
        .allowlist_var("IM_.*")
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .derive_partialeq(true)
        .layout_tests(true)
        .generate_comments(true)
        .formatter(bindgen::Formatter::Rustfmt)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen on kernels/params.h failed: {e}"));
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("writing {out}: {e}"));
}
