//! Exports for reports: CSV, one file per record kind, and GeoJSON of
//! patrol observations with a GPS fix. Pure functions over records already
//! read and access-checked; the review API decides what goes in and audits
//! it.

use baraza_records::{FieldSpec, FieldType, Header, Kind};

/// A record as an export reads it.
#[derive(Debug, Clone)]
pub struct ExportRecord {
    /// Record id.
    pub id: String,
    /// Its header.
    pub header: Header,
    /// Review state.
    pub review_state: String,
    /// Field values as JSON (the header left out).
    pub fields: serde_json::Value,
    /// A feedback record's contact details, only when asked for.
    pub contact: Option<serde_json::Value>,
}

/// The contact columns a feedback export gains when contacts are asked for.
const CONTACT_COLUMNS: &[&str] = &["name", "phone", "email", "address"];

/// One column per scalar field; a list becomes its item count, a map one
/// column per part (`headcount.women`).
fn columns(kind: Kind) -> Vec<(String, Vec<&'static str>)> {
    let mut out = Vec::new();
    for spec in kind.fields() {
        match spec.ty {
            FieldType::List(_) => out.push((format!("{}_count", spec.name), vec![spec.name])),
            FieldType::Map(parts) => {
                for part in parts.iter().map(|p: &FieldSpec| p.name) {
                    out.push((format!("{}.{part}", spec.name), vec![spec.name, part]));
                }
            }
            _ => out.push((spec.name.to_string(), vec![spec.name])),
        }
    }
    out
}

fn cell_of(value: &serde_json::Value, path: &[&str], count: bool) -> String {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(items) if count => items.len().to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Quotes a CSV cell when needed, and defuses text a spreadsheet would run
/// as a formula (`=`, `+`, `-`, `@` first): exports are opened in Excel.
fn escape(cell: &str) -> String {
    let cell = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// A CSV of records of one kind: a header row, then one row per record.
pub fn csv(kind: Kind, records: &[ExportRecord], contacts: bool) -> String {
    let cols = columns(kind);
    let with_contacts = contacts && kind == Kind::Feedback;
    let mut head: Vec<String> = ["id", "area", "created_by", "created_at", "review_state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    head.extend(cols.iter().map(|(name, _)| name.clone()));
    if with_contacts {
        head.extend(CONTACT_COLUMNS.iter().map(|c| format!("contact.{c}")));
    }
    let mut out = String::new();
    out.push_str(&head.iter().map(|h| escape(h)).collect::<Vec<_>>().join(","));
    out.push_str("\r\n");
    for r in records.iter().filter(|r| r.header.kind == kind) {
        let mut row = vec![
            r.id.clone(),
            r.header.area.clone(),
            r.header.created_by_user.clone(),
            r.header.created_at.to_string(),
            r.review_state.clone(),
        ];
        for (name, path) in &cols {
            row.push(cell_of(&r.fields, path, name.ends_with("_count")));
        }
        if with_contacts {
            for c in CONTACT_COLUMNS {
                row.push(
                    r.contact
                        .as_ref()
                        .map(|v| cell_of(v, &[c], false))
                        .unwrap_or_default(),
                );
            }
        }
        out.push_str(&row.iter().map(|c| escape(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// Patrol observations with a usable GPS fix, as a GeoJSON FeatureCollection.
pub fn geojson(records: &[ExportRecord]) -> serde_json::Value {
    let mut features = Vec::new();
    for r in records.iter().filter(|r| r.header.kind == Kind::PatrolNote) {
        let Some(observations) = r.fields["observations"].as_array() else {
            continue;
        };
        for (i, o) in observations.iter().enumerate() {
            let coord = |k: &str| {
                o["gps"][k]
                    .as_str()
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            let (Some(lat), Some(lon)) = (coord("lat"), coord("lon")) else {
                continue;
            };
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                continue;
            }
            features.push(serde_json::json!({
                "type": "Feature",
                // GeoJSON orders coordinates longitude first.
                "geometry": { "type": "Point", "coordinates": [lon, lat] },
                "properties": {
                    "record": r.id,
                    "observation": i,
                    "area": r.header.area,
                    "officer": r.fields["officer"],
                    "beat": r.fields["beat"],
                    "at": o["at"],
                    "text": o["text"],
                    "tags": o["tags"],
                    "accuracy_m": o["gps"]["accuracy_m"],
                    "review_state": r.review_state,
                }
            }));
        }
    }
    serde_json::json!({ "type": "FeatureCollection", "features": features })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a, b"), "\"a, b\"");
        assert_eq!(escape("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(escape("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(escape("-1"), "'-1");
    }

    #[test]
    fn lists_count_and_maps_spread_into_columns() {
        let names: Vec<String> = columns(Kind::Meeting).into_iter().map(|c| c.0).collect();
        assert!(names.contains(&"attendees_count".to_string()));
        assert!(names.contains(&"headcount.women".to_string()));
        assert!(names.contains(&"place".to_string()));
    }
}
