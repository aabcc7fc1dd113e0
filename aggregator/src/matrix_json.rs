//! `/api/v1/matrix` written straight into a byte buffer: at 10,000 nodes × 10 neighbours the
//! answer has 100,000 cells, and building 300,000 intermediate strings and values first would
//! triple its cost. The output is the same document as `views::matrix` (tested below).

use std::io::Write;

use crate::cell::Cell;
use crate::state::ClusterState;
use crate::views::{rfc3339_into, window_slots, Stat};

fn opt_ms(buf: &mut Vec<u8>, micros: Option<f64>) {
    match micros {
        Some(v) => finite(buf, round_ms(v)),
        None => buf.extend_from_slice(b"null"),
    }
}

/// µs → ms with µs precision, as `views` does.
fn round_ms(micros: f64) -> f64 {
    (micros / 1000.0 * 1000.0).round() / 1000.0
}

fn string(buf: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// A float exactly as serde_json writes it (non-finite as null).
fn finite(buf: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *buf, &v);
}

/// The whole `/api/v1/matrix` document as JSON bytes.
pub fn matrix_bytes(state: &ClusterState, now: i64, window_micros: i64, stat: Stat) -> Vec<u8> {
    let slots = window_slots(state, window_micros);
    let slot = state.settings.slot_micros();
    let mut cells: Vec<(&str, &str, &Cell, i64)> = Vec::with_capacity(state.matrix.values().map(|r| r.len()).sum());
    for (src, row) in &state.matrix {
        let stale_after = state.stale_after(src);
        cells.extend(row.iter().map(|(dst, c)| (src.as_str(), dst.as_str(), c, stale_after)));
    }
    cells.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));

    let mut buf = Vec::with_capacity(64 + cells.len() * 300);
    buf.extend_from_slice(b"{\"window_seconds\":");
    finite(&mut buf, window_micros as f64 / 1e6);
    buf.extend_from_slice(b",\"stat\":");
    string(&mut buf, stat.name());
    buf.extend_from_slice(b",\"nodes\":[");
    for (i, (name, n)) in state.nodes.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"name\":");
        string(&mut buf, name);
        buf.extend_from_slice(b",\"zone\":");
        string(&mut buf, n.hello.as_ref().map_or("", |h| h.zone.as_str()));
        let _ = write!(buf, ",\"connected\":{},\"gone\":{}}}", n.connected(), state.gone(n, now));
    }
    buf.extend_from_slice(b"],\"cells\":[");
    for (i, (src, dst, c, stale_after)) in cells.iter().enumerate() {
        let st = c.stats(now, slot, slots);
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"{\"src\":");
        string(&mut buf, src);
        buf.extend_from_slice(b",\"dst\":");
        string(&mut buf, dst);
        buf.extend_from_slice(b",\"count\":");
        let _ = serde_json::to_writer(&mut buf, &st.count);
        buf.extend_from_slice(b",\"errors\":");
        let _ = serde_json::to_writer(&mut buf, &st.errors);
        buf.extend_from_slice(b",\"error_ratio\":");
        finite(&mut buf, st.error_ratio());
        buf.extend_from_slice(b",\"p50_ms\":");
        opt_ms(&mut buf, st.p50_micros);
        buf.extend_from_slice(b",\"p90_ms\":");
        opt_ms(&mut buf, st.p90_micros);
        buf.extend_from_slice(b",\"p99_ms\":");
        opt_ms(&mut buf, st.p99_micros);
        buf.extend_from_slice(b",\"last_ms\":");
        finite(&mut buf, round_ms(c.last_micros as f64));
        buf.extend_from_slice(b",\"last_error\":");
        match &c.last_error {
            Some(e) => string(&mut buf, e),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"last_seen\":\"");
        rfc3339_into(&mut buf, c.last_seen);
        let flag = |b: bool| if b { &b"true"[..] } else { &b"false"[..] };
        buf.extend_from_slice(b"\",\"stale\":");
        buf.extend_from_slice(flag(now - c.last_seen > *stale_after));
        buf.extend_from_slice(b",\"failing\":");
        buf.extend_from_slice(flag(c.health.bad));
        buf.extend_from_slice(b",\"slow\":");
        buf.extend_from_slice(flag(c.latency.bad));
        buf.extend_from_slice(b",\"value\":");
        match stat {
            Stat::P50 => opt_ms(&mut buf, st.p50_micros),
            Stat::P90 => opt_ms(&mut buf, st.p90_micros),
            Stat::P99 => opt_ms(&mut buf, st.p99_micros),
            Stat::ErrorRatio => finite(&mut buf, st.error_ratio()),
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;
    use crate::views::matrix;
    use kubenurse_proto::v1::{CheckResult, Hello, Outcome, ResultBatch};

    #[test]
    fn same_document_as_the_typed_view() {
        let mut s = ClusterState::new(Settings::default());
        for (n, targets) in [("a", vec!["b", "c"]), ("b", vec!["a"]), ("c\"quoted", vec![])] {
            let hello = Hello {
                protocol: kubenurse_proto::PROTOCOL_REVISION,
                node: n.replace('"', ""),
                zone: "z\"1".into(),
                interval_micros: 1_000_000,
                targets: targets.iter().map(|t| t.to_string()).collect(),
                ..Hello::default()
            };
            s.hello(hello, 0, true).unwrap();
        }
        let results = vec![
            CheckResult {
                check_type: "path_b".into(),
                target_node: "b".into(),
                duration_micros: 333,
                outcome: Outcome::Ok.into(),
                ..Default::default()
            },
            CheckResult {
                check_type: "path_c".into(),
                target_node: "c".into(),
                duration_micros: 0,
                outcome: Outcome::Failed.into(),
                error: "dial tcp: \"refused\"\n".into(),
                ..Default::default()
            },
        ];
        s.batch("a", &ResultBatch { results, round_ends: vec![] }, 1_000_000);
        s.tick(1_500_000);
        for stat in [Stat::P50, Stat::P90, Stat::P99, Stat::ErrorRatio] {
            let fast: serde_json::Value =
                serde_json::from_slice(&matrix_bytes(&s, 2_000_000, 300_000_000, stat)).unwrap();
            let typed = serde_json::to_value(matrix(&s, 2_000_000, 300_000_000, stat)).unwrap();
            assert_eq!(fast, typed);
        }
    }
}
