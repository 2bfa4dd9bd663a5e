//! S2, cold start: an empty tablet pulls every record the server holds
//! (S2), and again after S1's edits (S2b: records whose latest write moved
//! their feed entries past records created later, which a long catch-up
//! must still deliver whole). Both are measured during S1's run, which
//! builds the records they pull ([`super::s1_reconnect`]); this file says
//! what they report.

use std::time::Duration;

use baraza_client::{ClientError, SyncReport};
use serde_json::json;

use super::{report_json, Measured, Options, Outcome};
use crate::proxy::Traffic;
use crate::stats::{ms, round3};

/// S2's result: `cold` is the empty client's measured first sync, after
/// which it held `b_records` records.
pub(super) fn cold_start(o: &Options, cold: &Measured, b_records: usize) -> Outcome {
    Outcome {
        name: "s2_cold_start",
        json: json!({
            "scenario": "s2_cold_start",
            "docs": o.docs,
            "records_after": b_records,
            "wall_ms": round3(ms(cold.wall)),
            "bytes_up": cold.traffic.up,
            "bytes_down": cold.traffic.down,
            "bytes_down_per_record": round3(cold.traffic.down as f64 / o.docs as f64),
            "connections": cold.traffic.connections,
            "records_per_sec": round3(o.docs as f64 / cold.wall.as_secs_f64()),
            "report": report_json(&cold.report),
            "via_proxy": true,
        }),
        summary: format!(
            "S2 cold start: empty client pulled {b_records} of {} records in {:.2} s \
             ({:.0} records/s); {} B down ({:.0} B/record), {} B up; report {:?}",
            o.docs,
            cold.wall.as_secs_f64(),
            o.docs as f64 / cold.wall.as_secs_f64(),
            cold.traffic.down,
            cold.traffic.down as f64 / o.docs as f64,
            cold.traffic.up,
            cold.report
        ),
    }
}

/// S2b's result: a third, empty client's first sync after the edits
/// (`cold2`, which may have failed), with its figures, the records it
/// then held and its feed cursor.
pub(super) fn cold_start_after_edits(
    o: &Options,
    cold2: &Result<SyncReport, ClientError>,
    cold2_wall: Duration,
    cold2_traffic: &Traffic,
    c_records: usize,
    cursor: u64,
) -> Outcome {
    Outcome {
        name: "s2b_cold_start_after_edits",
        json: json!({
            "scenario": "s2b_cold_start_after_edits",
            "docs": o.docs,
            "edited_records": 2 * o.edits,
            "records_after": c_records,
            "ok": cold2.is_ok(),
            "error": cold2.as_ref().err().map(|e| e.to_string()),
            "wall_ms": round3(ms(cold2_wall)),
            "bytes_up": cold2_traffic.up,
            "bytes_down": cold2_traffic.down,
            "connections": cold2_traffic.connections,
            "report": cold2.as_ref().ok().map(report_json),
            "cursor_after": cursor,
            "via_proxy": true,
        }),
        summary: match &cold2 {
            Ok(report) => format!(
                "S2b cold start after {} edits: pulled {c_records} of {} records in {:.2} s; \
                 {} B down; report {report:?}",
                2 * o.edits,
                o.docs,
                cold2_wall.as_secs_f64(),
                cold2_traffic.down
            ),
            Err(e) => format!(
                "S2b cold start after {} edits: FAILED after {:.1} s holding {c_records} of {} \
                 records (cursor {}): {e}",
                2 * o.edits,
                cold2_wall.as_secs_f64(),
                o.docs,
                cursor
            ),
        },
    }
}
