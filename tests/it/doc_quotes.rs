//! Every log line quoted in README.md and docs/ is one the binary prints: its target is a
//! module of the crate (or a target the code names), its message is written by the code, and
//! an audit record's event is one the audit trail writes. A renamed message or a moved module
//! would otherwise leave operators grepping for a line that never comes.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with its module path (`mllp_proxy::upstream::health`).
fn sources(dir: &Path, module: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if path.is_dir() {
            sources(&path, &format!("{module}::{name}"), out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let m = match name.as_str() {
                "lib" | "main" => module.to_string(),
                "mod" => module.to_string(),
                _ => format!("{module}::{name}"),
            };
            out.push((m, std::fs::read_to_string(&path).unwrap_or_default()));
        }
    }
}

/// The string literals of `code` (plain `"…"` ones, escapes kept as written).
fn literals(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '/' && chars.peek().is_some_and(|(_, n)| *n == '/') {
            // A comment: to the end of the line.
            for (_, n) in chars.by_ref() {
                if n == '\n' {
                    break;
                }
            }
            continue;
        }
        if c == '\'' {
            // A char literal ('"') or a lifetime: skip a quoted char.
            let rest: String = chars.clone().take(3).map(|(_, c)| c).collect();
            if rest.starts_with("\"'") || rest.starts_with("\\\"") {
                chars.next();
                chars.next();
            }
            continue;
        }
        if c != '"' {
            continue;
        }
        let mut lit = String::new();
        while let Some((_, n)) = chars.next() {
            match n {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        lit.push('\\');
                        lit.push(e);
                    }
                }
                '"' => break,
                _ => lit.push(n),
            }
        }
        out.push(lit);
    }
    out
}

/// Whether `text` is what the format string `pattern` writes (`{}` and `{name}` match anything).
fn formats(pattern: &str, text: &str) -> bool {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        parts.push(&rest[..open]);
        rest = rest[open..]
            .find('}')
            .map_or("", |close| &rest[open + close + 1..]);
    }
    parts.push(rest);
    if parts.len() == 1 {
        return pattern == text;
    }
    // Mostly placeholders (`"{e}"`, `"{}: {}"`) would match any message.
    if parts.iter().map(|p| p.len()).sum::<usize>() * 2 < text.len() {
        return false;
    }
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        let found = if i == 0 {
            text.starts_with(part).then_some(0)
        } else if i == parts.len() - 1 {
            (text.len() >= at + part.len() && text.ends_with(part)).then(|| text.len() - part.len())
        } else {
            text[at..].find(part).map(|p| at + p)
        };
        match found {
            Some(p) => at = p + part.len(),
            None => return false,
        }
    }
    true
}

/// A quoted log line: its level, target and message (text format, or JSON).
struct Quoted {
    file: String,
    target: String,
    message: String,
    line: String,
}

fn quoted_lines() -> Vec<Quoted> {
    let mut files = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs"))
        .expect("docs")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "md") {
            files.push(e.path());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read doc");
        let file = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for line in text.lines() {
            if let Some(q) = text_line(line).or_else(|| json_line(line)) {
                out.push(Quoted {
                    file: file.clone(),
                    target: q.0,
                    message: q.1,
                    line: line.to_string(),
                });
            }
        }
    }
    out
}

/// `[TIMESTAMP] LEVEL target: message field=…` → (target, message).
fn text_line(line: &str) -> Option<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let level_at = words
        .iter()
        .take(2)
        .position(|w| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(w))?;
    let after_level = line.split_once(words[level_at])?.1.trim_start();
    let (target, rest) = after_level.split_once(": ")?;
    if !(target == "audit" || target.starts_with("mllp_proxy")) {
        return None;
    }
    // The message ends where the first `key=` field begins.
    let mut message = rest;
    for (i, _) in rest.match_indices(' ') {
        let next = &rest[i + 1..];
        let key_len = next.find('=').filter(|&k| {
            k > 0
                && next[..k]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
        });
        if key_len.is_some() {
            message = &rest[..i];
            break;
        }
    }
    if target == "audit" || rest.starts_with("event=") {
        // An audit record: no message, its event is what is checked.
        let event = rest.split_once("event=\"")?.1.split('"').next()?;
        return Some((target.to_string(), format!("event:{event}")));
    }
    Some((target.to_string(), message.trim().to_string()))
}

/// A JSON log line → (target, message), or ("audit", "event:…") for an audit record.
fn json_line(line: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if let Some(event) = v["event"].as_str() {
        return Some(("audit".into(), format!("event:{event}")));
    }
    Some((
        v["target"].as_str()?.to_string(),
        v["message"].as_str()?.to_string(),
    ))
}

#[test]
fn every_log_line_quoted_in_the_docs_is_one_the_binary_prints() {
    let mut src = Vec::new();
    sources(&repo().join("src"), "mllp_proxy", &mut src);
    let quoted = quoted_lines();
    assert!(
        quoted.len() > 20,
        "only {} quoted lines found",
        quoted.len()
    );
    let audit: Vec<String> = src
        .iter()
        .filter(|(m, _)| m.starts_with("mllp_proxy::audit"))
        .flat_map(|(_, code)| literals(code))
        .collect();
    let mut wrong = Vec::new();
    for q in &quoted {
        // The code that writes under this target: its module; the modules that name it
        // explicitly; and, when its module names it for a macro (`target:
        // "mllp_proxy::session"`), that module's submodules. Never the whole crate.
        let named = format!("target: \"{}\"", q.target);
        let macro_target = src
            .iter()
            .any(|(m, code)| *m == q.target && code.contains(&named));
        let inside = format!("{}::", q.target);
        let code: Vec<String> = src
            .iter()
            .filter(|(m, code)| {
                *m == q.target
                    || (macro_target && m.starts_with(&inside))
                    || (q.target != "mllp_proxy" && code.contains(&named))
            })
            .flat_map(|(_, code)| literals(code))
            .collect();
        let ok = match q.message.strip_prefix("event:") {
            Some(event) => audit.iter().any(|l| l == event),
            None => code.iter().any(|l| formats(l, &q.message)),
        };
        if !ok {
            wrong.push(format!(
                "{}: {:?} is not written under target {}: {}",
                q.file, q.message, q.target, q.line
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "quoted log lines the binary does not print:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_quote_reader_splits_target_message_and_fields() {
    let (t, m) = text_line("2026-11-26T11:02:18.544264Z  WARN mllp_proxy::session: upstream failure; message not acknowledged by the engine route=lab peer=1.2.3.4:5").expect("line");
    assert_eq!(
        (t.as_str(), m.as_str()),
        (
            "mllp_proxy::session",
            "upstream failure; message not acknowledged by the engine"
        )
    );
    let (t, m) = text_line("INFO audit: event=\"session_end\" route=\"lab\"").expect("audit");
    assert_eq!((t.as_str(), m.as_str()), ("audit", "event:session_end"));
    assert!(formats("{} material reloaded", "TLS material reloaded"));
    assert!(formats(
        "{what} reload refused; previous material stays in service",
        "TLS reload refused; previous material stays in service"
    ));
    assert!(!formats("engine target up", "engine target down"));
    assert!(!formats("{e}", "configuration reloaded"));
    assert_eq!(
        literals(
            r#"let a = "x\"y"; // "not"
'"' "z""#
        ),
        ["x\\\"y", "z"]
    );
}
