//! `scripts/gpu/session lease`, the one device call a 15-minute GPU lease runs: its order, its
//! budget, its files. Run here over stand-ins (a copy of the script in a temporary tree whose
//! `infermeter`, test executables and Python scripts are shell stubs that log their arguments), so a
//! lease is not the first place its control flow runs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How a stub test executable behaves.
#[derive(Clone, Copy)]
enum TestStub {
    Pass,
    /// prints a GPU test's skip line and passes, as the tests do where no GPU is found
    Skip,
    /// never ends by itself
    Hang,
}

fn write_exec(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A tree with the session script and stubs for everything it runs; `kernels` names the test
/// executable that behaves as `kernels_stub` (every other one passes).
fn stub_tree(kernels_stub: TestStub) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/gpu/session");
    fs::create_dir_all(script.parent().unwrap()).unwrap();
    fs::copy(repo.join("scripts/gpu/session"), &script).unwrap();
    let log = root.join("calls.log");
    // every stub logs its name and arguments; `--out FILE` gets a file, as the real ones write
    let record = format!(
        r#"echo "$(basename "$0") $*" >>"{}"
prev=
for a in "$@"; do [[ $prev == --out ]] && echo '{{}}' >"$a"; prev=$a; done"#,
        log.display()
    );
    write_exec(&root.join("target/release/infermeter"), &record);
    for py in [
        "decode_roofline",
        "hf_generate",
        "sdpa_compare",
        "attention_ratios",
        "split_sweep",
    ] {
        // run as `python3 scripts/gpu/NAME.py`: a Python stub that logs like the others
        fs::write(
            root.join(format!("scripts/gpu/{py}.py")),
            format!(
                "import sys\nopen({:?}, 'a').write('{py}.py ' + ' '.join(sys.argv[1:]) + '\\n')\n",
                log.display().to_string()
            ),
        )
        .unwrap();
    }
    for t in ["cuda_kernels", "cuda_model", "cuda_cli", "kernels_cli"] {
        let behaviour = if t == "cuda_kernels" {
            kernels_stub
        } else {
            TestStub::Pass
        };
        let body = match behaviour {
            TestStub::Pass => "echo 'test result: ok. 3 passed; 0 failed'",
            TestStub::Skip => {
                "echo 'skipped: no CUDA device: libcuda.so.1 not found'\n\
                 echo 'test result: ok. 3 passed; 0 failed'"
            }
            TestStub::Hang => "exec sleep 60",
        };
        write_exec(
            &root.join(format!("gpu-carry/bin/test-{t}")),
            &format!("{record}\n{body}"),
        );
    }
    fs::write(root.join("gpu-carry/COMMIT"), "0123abc\n").unwrap();
    dir
}

struct Lease {
    code: Option<i32>,
    stdout: String,
    summary: String,
    calls: String,
    /// the files the device tool would bring back
    out_files: Vec<String>,
    /// lease.tar.gz's files
    packed: Vec<String>,
    took: Duration,
}

fn lease(tree: &Path, env: &[(&str, &str)]) -> Lease {
    let out = tree.join("out");
    let t0 = Instant::now();
    let o = Command::new("bash")
        .arg(tree.join("scripts/gpu/session"))
        .arg("lease")
        .env("OUT", &out)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let took = t0.elapsed();
    let mut out_files: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out_files.sort();
    let unpacked = tree.join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&unpacked)
        .arg("-xzf")
        .arg(out.join("lease.tar.gz"))
        .status()
        .unwrap();
    assert!(tar.success(), "lease.tar.gz does not unpack");
    let mut packed = Vec::new();
    collect_files(&unpacked, &unpacked, &mut packed);
    packed.sort();
    Lease {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        summary: fs::read_to_string(out.join("summary.txt")).unwrap(),
        calls: fs::read_to_string(tree.join("calls.log")).unwrap_or_default(),
        out_files,
        packed,
        took,
    }
}

fn collect_files(base: &Path, dir: &Path, into: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p: PathBuf = e.unwrap().path();
        if p.is_dir() {
            collect_files(base, &p, into);
        } else {
            into.push(p.strip_prefix(base).unwrap().display().to_string());
        }
    }
}

/// The summary line of one part, e.g. `engine             exit 0 in 0 s`.
fn summary_line<'a>(l: &'a Lease, part: &str) -> &'a str {
    l.summary
        .lines()
        .find(|line| line.split_whitespace().next() == Some(part))
        .unwrap_or_else(|| panic!("no summary line for {part}:\n{}", l.summary))
}

#[test]
fn a_lease_runs_every_part_in_order_and_brings_back_three_files() {
    let tree = stub_tree(TestStub::Pass);
    let l = lease(tree.path(), &[]);
    assert_eq!(l.code, Some(0), "{}\n{}", l.stdout, l.summary);
    let order: Vec<&str> = l
        .summary
        .lines()
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "tests",
            "attention",
            "engine",
            "compare",
            "tests-auto",
            "splits",
            "compare-16-64",
            "bench"
        ]
    );
    for part in &order {
        assert!(
            summary_line(&l, part).contains("exit 0"),
            "{part}: {}",
            l.summary
        );
    }
    // the device tool brings back 8 files at most
    assert_eq!(l.out_files, ["env.txt", "lease.tar.gz", "summary.txt"]);
    for f in [
        "env.txt",
        "summary.txt",
        "tests/cuda-tests.txt",
        "tests-auto/cuda-tests-auto.txt",
        "attention/kernels-attention-bf16.json",
        "attention/sdpa-compare.txt",
        "engine/run-llama-3.2-1b-bf16-graphs.json",
        "engine/run-llama-3.2-1b-bf16-eager.json",
        "compare/hf.txt",
        "compare-16-64/hf.txt",
        "splits/kernels-splits-bf16.json",
        "bench/kernels-cuda-bf16.json",
    ] {
        assert!(l.packed.iter().any(|p| p == f), "{f} not in {:?}", l.packed);
    }
    // the tests passed, so the engine runs the optimised attention; HF at batch 1 first
    let runs: Vec<&str> = l.calls.lines().filter(|c| c.contains(" run ")).collect();
    assert_eq!(runs.len(), 2, "{}", l.calls);
    assert!(
        runs.iter().all(|r| r.contains("--attention auto")),
        "{runs:?}"
    );
    assert!(runs[1].contains("--no-cuda-graphs"), "{runs:?}");
    let hf: Vec<&str> = l
        .calls
        .lines()
        .filter(|c| c.starts_with("hf_generate.py"))
        .collect();
    assert!(hf[0].contains("--batch-size 1 "), "{hf:?}");
    assert!(hf[1].contains("--batch-size 16,64 "), "{hf:?}");
    // the auto tests run with the variable set
    let log =
        fs::read_to_string(tree.path().join("unpacked/tests-auto/cuda-tests-auto.txt")).unwrap();
    assert!(log.contains("INFERMETER_ATTENTION=auto"), "{log}");
}

#[test]
fn a_skipped_gpu_test_fails_the_tests_and_the_engine_runs_the_naive_kernel() {
    let tree = stub_tree(TestStub::Skip);
    let l = lease(tree.path(), &[]);
    assert_ne!(l.code, Some(0), "{}", l.summary);
    assert!(
        summary_line(&l, "tests").contains("exit 1"),
        "{}",
        l.summary
    );
    assert!(l.stdout.contains("SKIPPED tests"), "{}", l.stdout);
    let runs: Vec<&str> = l.calls.lines().filter(|c| c.contains(" run ")).collect();
    assert_eq!(runs.len(), 2, "{}", l.calls);
    assert!(
        runs.iter().all(|r| r.contains("--attention naive")),
        "{runs:?}"
    );
}

#[test]
fn a_hung_test_is_cut_at_its_cap_and_parts_past_the_budget_are_skipped() {
    let tree = stub_tree(TestStub::Hang);
    // 70 s: the tests (their hung executable cut after 2 s) and tests-auto (60 s needed) fit;
    // attention (120), engine (90), compare (120), splits (90) and bench (120) do not
    let l = lease(tree.path(), &[("BUDGET_S", "70"), ("TEST_CAP_S", "2")]);
    assert!(l.took < Duration::from_secs(30), "took {:?}", l.took);
    assert_ne!(l.code, Some(0), "{}", l.summary);
    assert!(
        summary_line(&l, "tests").contains("exit 1"),
        "{}",
        l.summary
    );
    assert!(
        summary_line(&l, "tests-auto").contains("exit 0"),
        "{}",
        l.summary
    );
    for part in [
        "attention",
        "engine",
        "compare",
        "splits",
        "compare-16-64",
        "bench",
    ] {
        let line = summary_line(&l, part);
        assert!(
            line.contains("skipped:") && line.contains("needed"),
            "{line}"
        );
    }
    assert!(!l.calls.contains(" run "), "{}", l.calls);
    let log = fs::read_to_string(tree.path().join("unpacked/tests/cuda-tests.txt")).unwrap();
    // timeout's status for a command it stopped
    assert!(log.contains("exit 124"), "{log}");
    assert_eq!(l.out_files, ["env.txt", "lease.tar.gz", "summary.txt"]);
}
