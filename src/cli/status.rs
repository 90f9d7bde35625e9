//! `mllp-proxy status`: the admin server's `/status` as a table an interface analyst reads at
//! a glance — who is connected to each route, from where, since when, how many messages and
//! when the last one came; which targets are up, and why not; certificates' days left; the
//! last reload.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::TlsArgs;
use crate::client::{ClientError, http_get_from};
use crate::status::{RouteStatus, SCHEMA, Status};

/// Options of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The admin server: `host:port`, `http://host:port` or `https://host:port` (https needs
    /// --ca; a mutual-TLS admin port also --cert and --key).
    #[arg(long, default_value = "127.0.0.1:9575")]
    pub admin: String,
    /// Only this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Print the JSON document as the proxy served it.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw every this many seconds until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// TLS to the admin server.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Prints the status once, or redraws it with `--watch`.
pub async fn run(args: StatusArgs) -> Result<bool, ClientError> {
    let (addr, https) = match args.admin.split_once("://") {
        Some(("https", rest)) => (rest.trim_end_matches('/'), true),
        Some(("http", rest)) => (rest.trim_end_matches('/'), false),
        Some((scheme, _)) => return Err(ClientError(format!("--admin: unknown scheme {scheme}"))),
        None => (args.admin.as_str(), args.tls.ca.is_some()),
    };
    if https && args.tls.ca.is_none() {
        return Err(ClientError(
            "--admin https://… needs --ca (and --cert/--key for a mutual-TLS admin port)".into(),
        ));
    }
    let target = args.tls.target(addr)?;
    loop {
        let body = http_get_from(&target, "/status").await?;
        if args.json {
            println!("{}", body.trim_end());
            return Ok(true);
        }
        let status: Status = serde_json::from_str(&body)
            .map_err(|e| ClientError(format!("{addr}/status is not a status document: {e}")))?;
        if status.schema != SCHEMA {
            return Err(ClientError(format!(
                "{addr}/status has schema {}, this mllp-proxy reads {SCHEMA}",
                status.schema
            )));
        }
        let table = render(&status, args.route.as_deref(), SystemTime::now());
        let Some(every) = args.watch else {
            print!("{table}");
            return Ok(true);
        };
        // Clear the screen and home the cursor, as `watch` does.
        print!("\x1b[2J\x1b[H{table}");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(true),
        }
    }
}

/// The status as text: one block per route.
pub fn render(status: &Status, only: Option<&str>, now: SystemTime) -> String {
    let mut out = String::new();
    let ready = if status.ready { "ready" } else { "NOT READY" };
    let _ = writeln!(
        out,
        "mllp-proxy {}  {ready}  at {}",
        status.version, status.generated
    );
    match &status.last_reload {
        None => out.push_str("last reload: none since start\n"),
        Some(r) => {
            let _ = write!(out, "last reload: {} {} ago", r.result, ago(&r.at, now));
            if let Some(e) = &r.error {
                let _ = write!(out, "  ({e})");
            }
            out.push('\n');
        }
    }
    for route in &status.routes {
        if only.is_some_and(|n| n != route.name) {
            continue;
        }
        route_block(&mut out, route, now);
    }
    out
}

fn route_block(out: &mut String, r: &RouteStatus, now: SystemTime) {
    let upstream = if r.upstream_transport == "tls" {
        "partner over TLS"
    } else {
        "engine"
    };
    let _ = writeln!(
        out,
        "\nroute {}  listen {} ({} → {upstream})  sessions {}  queued {}",
        r.name,
        r.listen,
        r.transport,
        r.sessions.len(),
        r.queued
    );
    let rows: Vec<Vec<String>> = r
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.conn.to_string(),
                s.identity.clone().unwrap_or_else(|| "(plain)".into()),
                s.peer.clone(),
                ago(&s.connected, now),
                s.messages.to_string(),
                s.last_message
                    .as_deref()
                    .map_or("-".into(), |t| format!("{} ago", ago(t, now))),
                if s.in_flight { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let head = [
        "CONN",
        "IDENTITY",
        "PEER",
        "CONNECTED",
        "MESSAGES",
        "LAST",
        "IN FLIGHT",
    ];
    if rows.is_empty() {
        out.push_str("  no sessions\n");
    } else {
        table(out, &head, &rows);
    }
    let rows: Vec<Vec<String>> = r
        .targets
        .iter()
        .map(|t| {
            vec![
                t.target.clone(),
                if t.up { "up" } else { "DOWN" }.into(),
                ago(&t.since, now),
                t.busy.to_string(),
                t.idle.to_string(),
                t.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        out,
        &["TARGET", "STATE", "FOR", "BUSY", "IDLE", "REASON"],
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .certificates
        .iter()
        .map(|c| {
            vec![
                c.role.clone(),
                c.subject.clone().unwrap_or_else(|| "-".into()),
                format!("{:.1} days", c.days_left),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(out, &["CERTIFICATE", "SUBJECT", "EXPIRES IN"], &rows);
    }
}

/// Left-aligned columns, two spaces apart, indented two.
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from(" ");
        for (cell, w) in cells.iter().zip(&width) {
            let _ = write!(text, " {cell:<w$} ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// How long before `now` the RFC 3339 time `at` was, in the largest two units.
fn ago(at: &str, now: SystemTime) -> String {
    let Some(then) = parse_rfc3339(at) else {
        return at.to_string();
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let secs = (now - then).max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// Unix seconds of `YYYY-MM-DDTHH:MM:SSZ` (what `/status` writes).
fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !t.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from 1970-01-01 to y-m-d (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_times_read_back_and_print_as_ages() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_645_672);
        let text = crate::status::rfc3339(t);
        assert_eq!(parse_rfc3339(&text), Some(1_796_645_672));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
        let later = |s| t + Duration::from_secs(s);
        assert_eq!(ago(&text, later(42)), "42s");
        assert_eq!(ago(&text, later(192)), "3m12s");
        assert_eq!(ago(&text, later(3 * 3600 + 120)), "3h02m");
        assert_eq!(ago(&text, later(2 * 86_400 + 3600)), "2d01h");
    }
}
