//! Matching runs: whether compared files used the same workload, model and hardware.
//!
//! Each kind's module fills [`MatchKeys`] for its file:
//! - `workload`: the file's workload section, the workload parameters of its measured phases or steps
//!   (warmups and repeat numbers left out) and a fingerprint of the request prompt lengths;
//! - `model`: what was served (the architecture config, weights and dtype for the reference engine;
//!   the model name the server reported for an HTTP target);
//! - `hardware`: the host's CPU model, logical CPUs and architecture, and the GPUs' names.
//!
//! Files of the same kind match when these keys are equal. Files of different kinds describe their
//! workload and model differently, so they match on what both record: the same prompt lengths in
//! the same order, and the same model name; the hardware key is the same for every kind.
//!
//! Each file joins the first group (`W1`, `M1`, `H1`, numbered in file order) whose first file it
//! matches. Every file that does not match the first file is described by how it differs from it,
//! field by field, so the report says what differs instead of comparing silently.

use serde_json::Value;

use super::model::{Comparability, Groups, Source};

/// Most differing fields named per file and key before "and N more".
const MAX_FIELDS: usize = 6;

#[derive(Clone, Copy)]
enum Aspect {
    Workload,
    Model,
    Hardware,
}

/// How `a` differs from `b` in `aspect`, or `None` when they match.
fn differs(aspect: Aspect, a: &Source, b: &Source) -> Option<String> {
    let (ka, kb) = (&a.matched_on, &b.matched_on);
    let same_kind = a.kind == b.kind;
    match aspect {
        Aspect::Workload if same_kind => {
            (ka.workload != kb.workload).then(|| describe(&ka.workload, &kb.workload))
        }
        Aspect::Workload => {
            (ka.request_lengths.is_empty() || ka.request_lengths != kb.request_lengths).then(|| {
                format!(
                    "a {} file and a {} file, whose prompt lengths differ: {} vs {}",
                    a.kind, b.kind, a.workload, b.workload
                )
            })
        }
        Aspect::Model if same_kind => {
            (ka.model != kb.model).then(|| describe(&ka.model, &kb.model))
        }
        Aspect::Model => (name(&ka.model_name) != name(&kb.model_name))
            .then(|| format!("{} vs {} (compared by name across kinds)", a.model, b.model)),
        Aspect::Hardware => {
            (ka.hardware != kb.hardware).then(|| describe(&ka.hardware, &kb.hardware))
        }
    }
}

/// A model name for comparison across kinds: the last path segment, lower case.
fn name(n: &str) -> String {
    n.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_lowercase()
}

/// Assign groups to `sources` and describe how they differ from the first.
pub fn compare(sources: &mut [Source]) -> Comparability {
    let workload = group(sources, Aspect::Workload);
    let model = group(sources, Aspect::Model);
    let hardware = group(sources, Aspect::Hardware);
    for (i, s) in sources.iter_mut().enumerate() {
        s.groups = Groups {
            workload: format!("W{}", workload[i] + 1),
            model: format!("M{}", model[i] + 1),
            hardware: format!("H{}", hardware[i] + 1),
        };
    }
    let mut differences = Vec::new();
    if let Some(first) = sources.first() {
        for s in &sources[1..] {
            for (what, aspect) in [
                ("workload", Aspect::Workload),
                ("model", Aspect::Model),
                ("hardware", Aspect::Hardware),
            ] {
                if let Some(d) = differs(aspect, s, first) {
                    differences.push(format!(
                        "{} vs {}: {what} differs: {d}",
                        s.label, first.label
                    ));
                }
            }
        }
    }
    let same = |g: &[usize]| g.iter().all(|&x| x == 0);
    Comparability {
        same_workload: same(&workload),
        same_model: same(&model),
        same_hardware: same(&hardware),
        differences,
    }
}

/// Group index of each source: the first group whose first member it matches, else a new one.
fn group(sources: &[Source], aspect: Aspect) -> Vec<usize> {
    let mut heads: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        match heads
            .iter()
            .position(|&h| differs(aspect, s, &sources[h]).is_none())
        {
            Some(g) => out.push(g),
            None => {
                heads.push(i);
                out.push(heads.len() - 1);
            }
        }
    }
    out
}

/// "seed: 1 vs 0; phases[0].rate: 20 vs null" — the leaves of `a` and `b` that differ, shallow
/// ones first.
pub fn describe(a: &Value, b: &Value) -> String {
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    let get = |f: &[(String, String)], k: &str| {
        f.iter()
            .find(|(p, _)| p == k)
            .map_or_else(|| "absent".to_string(), |(_, v)| v.clone())
    };
    // Shallow fields first ("workload.mode" before "phases[0].rate"), then by name.
    let depth = |p: &str| p.matches(['.', '[']).count();
    let mut paths: Vec<&String> = fa.iter().chain(&fb).map(|(p, _)| p).collect();
    paths.sort_by(|a, b| depth(a).cmp(&depth(b)).then(a.cmp(b)));
    paths.dedup();
    let diffs: Vec<String> = paths
        .into_iter()
        .filter_map(|p| {
            let (x, y) = (get(&fa, p), get(&fb, p));
            (x != y).then(|| format!("{p}: {x} vs {y}"))
        })
        .collect();
    let n = diffs.len();
    let mut text = diffs
        .into_iter()
        .take(MAX_FIELDS)
        .collect::<Vec<_>>()
        .join("; ");
    if n > MAX_FIELDS {
        text.push_str(&format!("; and {} more", n - MAX_FIELDS));
    }
    text
}

/// Leaves of `v` as (dotted path, short JSON text); long arrays count as one leaf.
fn flatten(path: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        // An empty object at the root has no leaves; deeper, it is a value (`{}`).
        Value::Object(m) if !m.is_empty() || path.is_empty() => {
            for (k, x) in m {
                flatten(&join(k), x, out);
            }
        }
        Value::Array(a) if !a.is_empty() && a.len() <= 16 => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), x, out);
            }
        }
        _ => {
            let mut text = v.to_string();
            if text.len() > 48 {
                text = format!("{}…", text.chars().take(47).collect::<String>());
            }
            out.push((
                if path.is_empty() {
                    "(value)".into()
                } else {
                    path.into()
                },
                text,
            ));
        }
    }
}

/// A 64-bit FNV-1a fingerprint of a sequence of numbers, as hex (for request lengths).
pub fn fingerprint(values: impl Iterator<Item = u64>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::MatchKeys;
    use serde_json::json;

    fn source(label: &str, workload: Value, hardware: Value) -> Source {
        Source {
            path: format!("{label}.json"),
            label: label.into(),
            kind: "run".into(),
            started_at: String::new(),
            complete: true,
            tool: String::new(),
            command: String::new(),
            model: String::new(),
            framework: String::new(),
            hardware: String::new(),
            workload: String::new(),
            matched_on: MatchKeys {
                workload,
                model: json!("m"),
                hardware,
                request_lengths: "f".into(),
                model_name: "org/Tiny".into(),
            },
            groups: Groups::default(),
        }
    }

    #[test]
    fn groups_and_differences() {
        let mut s = vec![
            source("a", json!({"seed": 0, "mode": "grid"}), json!({"cpu": "x"})),
            source("b", json!({"seed": 1, "mode": "grid"}), json!({"cpu": "x"})),
            source("c", json!({"seed": 0, "mode": "grid"}), json!({"cpu": "y"})),
        ];
        let c = compare(&mut s);
        assert!(!c.same_workload && c.same_model && !c.same_hardware);
        let groups: Vec<_> = s.iter().map(|s| s.groups.workload.as_str()).collect();
        assert_eq!(groups, ["W1", "W2", "W1"]);
        assert_eq!(s[2].groups.hardware, "H2");
        assert_eq!(
            c.differences,
            [
                "b vs a: workload differs: seed: 1 vs 0",
                "c vs a: hardware differs: cpu: \"y\" vs \"x\""
            ]
        );
    }

    #[test]
    fn different_kinds_match_on_lengths_and_name() {
        let mut a = source("a", json!({"mode": "stream"}), json!({}));
        let mut b = source("b", json!({"source": "random"}), json!({}));
        b.kind = "load".into();
        b.matched_on.model = json!({"served_model": "tiny"});
        b.matched_on.model_name = "/models/tiny/".into();
        let mut s = vec![a.clone(), b.clone()];
        let c = compare(&mut s);
        assert!(c.same_workload && c.same_model && c.same_hardware, "{c:?}");
        b.matched_on.request_lengths = "g".into();
        a.matched_on.model_name = "other".into();
        let mut s = vec![a, b];
        let c = compare(&mut s);
        assert!(!c.same_workload && !c.same_model);
        assert!(
            c.differences[0].contains("a load file and a run file"),
            "{:?}",
            c.differences
        );
        assert!(c.differences[1].contains("compared by name across kinds"));
    }

    #[test]
    fn describe_names_missing_fields_and_caps_the_list() {
        let d = describe(&json!({"a": 1, "p": [1, 2]}), &json!({"b": 1, "p": [1, 3]}));
        assert_eq!(d, "a: 1 vs absent; b: absent vs 1; p[1]: 2 vs 3");
        let d = describe(
            &json!({"z": 1, "x": {"y": 1}}),
            &json!({"z": 2, "x": {"y": 2}}),
        );
        assert_eq!(d, "z: 1 vs 2; x.y: 1 vs 2");
        let many_a = serde_json::Value::Object(
            (0..10)
                .map(|i| (format!("k{i}"), json!(i)))
                .collect::<serde_json::Map<_, _>>(),
        );
        assert!(describe(&many_a, &json!({})).ends_with("; and 4 more"));
    }

    #[test]
    fn fingerprints_differ_by_order() {
        assert_ne!(
            fingerprint([1, 2].into_iter()),
            fingerprint([2, 1].into_iter())
        );
        assert_eq!(fingerprint([7].into_iter()), fingerprint([7].into_iter()));
    }
}
