//! docs/configuration.md checked against the code: every key of a binary's
//! serialized default configuration has a row in that binary's section,
//! with its environment variable and its default.

use std::path::Path;

use crate::compose::workspace_root;

/// Every leaf key of a serialized config as a dotted path
/// (`http.port`, `consumer.lease_ttl`); maps with dynamic keys (e.g. relay
/// sources) appear with their actual keys.
pub fn config_keys(value: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// The environment variable figment reads for a dotted key
/// (`consumer.lease_ttl` -> `APP__CONSUMER__LEASE_TTL`).
pub fn env_name(key: &str) -> String {
    format!("APP__{}", key.replace('.', "__").to_uppercase())
}

/// How a default appears in the table: `` `value` ``, `unset` for none,
/// `empty` for an empty string or list.
pub fn render_default(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "unset".into(),
        serde_json::Value::String(s) if s.is_empty() => "empty".into(),
        serde_json::Value::Array(items) if items.is_empty() => "empty".into(),
        serde_json::Value::String(s) => format!("`{s}`"),
        serde_json::Value::Array(items) => format!(
            "`{}`",
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), String::from))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => format!("`{other}`"),
    }
}

/// The lines of docs/configuration.md under the heading that starts with
/// ``## `binary` ``, up to the next `## ` heading.
fn section(doc: &str, binary: &str) -> Vec<String> {
    let heading = format!("## `{binary}`");
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(&heading));
    assert!(
        lines.next().is_some(),
        "docs/configuration.md has a section `{heading}`"
    );
    lines
        .take_while(|l| !l.starts_with("## "))
        .map(String::from)
        .collect()
}

/// Asserts docs/configuration.md documents every key of `defaults` (the
/// binary's `Default` config, serialized) in the section of `binary`: a row
/// `` | `key` | `ENV_NAME` | default | ... | ``. Keys in `unchecked_defaults`
/// (values that vary per run, or that the doc explains in words) need the
/// row but not the literal default. Also fails on rows for keys the code
/// does not have (a stale doc). On failure prints the missing rows.
pub fn assert_config_documented(
    binary: &str,
    defaults: &serde_json::Value,
    unchecked_defaults: &[&str],
) {
    let path = workspace_root().join("docs/configuration.md");
    let doc = read(&path);
    let section = section(&doc, binary);
    let keys = config_keys(defaults);
    let mut problems = Vec::new();
    for key in &keys {
        let value = key.split('.').fold(defaults, |v, k| &v[k]);
        let env = env_name(key);
        let default = render_default(value);
        let row_start = format!("| `{key}` |");
        let Some(row) = section.iter().find(|l| l.starts_with(&row_start)) else {
            problems.push(format!("missing: | `{key}` | `{env}` | {default} | |"));
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.get(2) != Some(&format!("`{env}`").as_str()) {
            problems.push(format!("{key}: env cell should be `{env}`: {row}"));
        }
        if !unchecked_defaults.contains(&key.as_str()) && cells.get(3) != Some(&default.as_str()) {
            problems.push(format!("{key}: default cell should be {default}: {row}"));
        }
    }
    for line in &section {
        if let Some(rest) = line.strip_prefix("| `")
            && let Some((key, _)) = rest.split_once("` |")
            && !keys.iter().any(|k| k == key)
        {
            problems.push(format!("documented but not in the code: {key}"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md, section `{binary}`:\n{}",
        problems.join("\n")
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_dotted_leaves() {
        let keys = config_keys(&serde_json::json!({"http": {"port": 1}, "a": null, "m": {}}));
        assert_eq!(keys, vec!["a", "http.port", "m"]);
        assert_eq!(env_name("consumer.lease_ttl"), "APP__CONSUMER__LEASE_TTL");
        assert_eq!(render_default(&serde_json::json!(null)), "unset");
        assert_eq!(render_default(&serde_json::json!(["a", "b"])), "`a,b`");
        assert_eq!(render_default(&serde_json::json!(true)), "`true`");
        assert_eq!(render_default(&serde_json::json!("")), "empty");
    }
}
