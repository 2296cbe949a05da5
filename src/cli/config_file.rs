//! `run --config FILE`: options from a TOML or JSON file. The file's entries become command-line
//! options inserted right after the subcommand, so options given on the command line (which come
//! later) override them.

use std::path::Path;

use anyhow::{bail, Context};

/// Expand `--config FILE` of the `run` subcommand in `argv`.
pub fn expand(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(sub) = argv.iter().position(|a| a == "run") else {
        return Ok(argv);
    };
    let mut file = None;
    let mut i = sub + 1;
    while i < argv.len() {
        if argv[i] == "--config" {
            file = argv.get(i + 1).cloned();
            break;
        }
        if let Some(v) = argv[i].strip_prefix("--config=") {
            file = Some(v.to_string());
            break;
        }
        i += 1;
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let options = options_from_file(Path::new(&file))?;
    let mut out = argv[..=sub].to_vec();
    out.extend(options);
    out.extend_from_slice(&argv[sub + 1..]);
    Ok(out)
}

/// The file's entries as `--name=value` arguments.
pub fn options_from_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: malformed TOML", path.display()))?;
        serde_json::to_value(table)?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed JSON", path.display()))?
    };
    let Some(obj) = value.as_object() else {
        bail!("{}: expected a table of options", path.display());
    };
    let mut args = Vec::new();
    for (key, v) in obj {
        if key == "config" {
            bail!(
                "{}: `config` cannot name another config file",
                path.display()
            );
        }
        let name = format!("--{}", key.replace('_', "-"));
        let text = match v {
            serde_json::Value::Bool(true) => {
                args.push(name);
                continue;
            }
            serde_json::Value::Bool(false) | serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Number(n) => Ok(n.to_string()),
                    other => bail!(
                        "{}: `{key}`: list item {other} is not a number or string",
                        path.display()
                    ),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            serde_json::Value::Object(_) => {
                bail!("{}: `{key}`: nested tables are not options", path.display())
            }
        };
        args.push(format!("{name}={text}"));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn toml_and_json_files_become_options_before_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("c.toml");
        std::fs::write(
            &toml_path,
            "batch_size = [1, 4]\nno_prefix_caching = true\nseed = 3\nwarmup = false\n",
        )
        .unwrap();
        let out = expand(argv(&format!(
            "infermeter run --config {} --seed 5",
            toml_path.display()
        )))
        .unwrap();
        assert_eq!(out[..2], argv("infermeter run")[..]);
        assert!(out.contains(&"--batch-size=1,4".to_string()));
        assert!(out.contains(&"--no-prefix-caching".to_string()));
        let seed_file = out.iter().position(|a| a == "--seed=3").unwrap();
        let seed_cli = out.iter().position(|a| a == "--seed").unwrap();
        assert!(seed_file < seed_cli);
        let json_path = dir.path().join("c.json");
        std::fs::write(
            &json_path,
            r#"{"input_len": "uniform:1:8", "num_requests": 4}"#,
        )
        .unwrap();
        let out = expand(argv(&format!(
            "infermeter run --config={}",
            json_path.display()
        )))
        .unwrap();
        assert!(out.contains(&"--input-len=uniform:1:8".to_string()));
        assert!(out.contains(&"--num-requests=4".to_string()));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, r#"{"engine": {"x": 1}}"#).unwrap();
        let e = options_from_file(&p).unwrap_err().to_string();
        assert!(e.contains("engine") && e.contains("nested"), "{e}");
        std::fs::write(&p, "{").unwrap();
        assert!(format!("{:#}", options_from_file(&p).unwrap_err()).contains("malformed JSON"));
        let e = format!(
            "{:#}",
            options_from_file(&dir.path().join("none.toml")).unwrap_err()
        );
        assert!(e.contains("none.toml"), "{e}");
    }

    #[test]
    fn other_commands_are_untouched() {
        let a = argv("infermeter generate --config x");
        assert_eq!(expand(a.clone()).unwrap(), a);
    }
}
