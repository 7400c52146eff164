//! The cleanup report, computed from a results file alone so that
//! `simverify batch report` can rebuild it at any time.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use serde::Serialize;

use crate::domain::msisdn::Msisdn;

/// Results columns, in order. `id_ref` (added after the columns the operator
/// reads) groups lines of the same person without revealing the ID.
pub const OUTPUT_COLUMNS: [&str; 15] = [
    "row",
    "msisdn",
    "request_id",
    "decision",
    "id_number_result",
    "full_name_result",
    "date_of_birth_result",
    "sex_result",
    "name_tier",
    "name_score",
    "recommended_action",
    "reasons",
    "audit_id",
    "error",
    "id_ref",
];

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct PrefixCount {
    pub carrier: String,
    pub rows: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SharedId {
    pub lines: usize,
    pub rows: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_number: Option<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub rows: u64,
    pub decisions: BTreeMap<String, u64>,
    /// Rows where the field was checked and did not match.
    pub failed_fields: BTreeMap<String, u64>,
    pub recommended_actions: BTreeMap<String, u64>,
    /// By national prefix (e.g. "098"); "invalid" for unusable numbers.
    pub msisdn_prefixes: BTreeMap<String, PrefixCount>,
    /// Lines whose name differs from the mirror only in diacritics: records
    /// to fix, not lines to lock.
    pub diacritics_only_rows: Vec<u64>,
    pub max_lines_per_id: usize,
    /// Identities on more than `max_lines_per_id` lines.
    pub shared_ids: Vec<SharedId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the results: {0}")]
    Csv(#[from] csv::Error),
    #[error("the results file lacks the column `{0}`")]
    MissingColumn(&'static str),
}

const FIELDS: [(&str, &str); 4] = [
    ("id_number_result", "id_number"),
    ("full_name_result", "full_name"),
    ("date_of_birth_result", "date_of_birth"),
    ("sex_result", "sex"),
];

/// One results row, as [`Tally::add`] reads it: the columns the report uses.
pub struct RowView<'a> {
    pub row: u64,
    pub msisdn: &'a str,
    pub decision: &'a str,
    /// `id_number_result`, `full_name_result`, `date_of_birth_result`,
    /// `sex_result`, in that order.
    pub fields: [&'a str; 4],
    pub name_tier: &'a str,
    pub recommended_action: &'a str,
    /// The `id_ref` column's fingerprint; `None` for rows without a valid ID.
    pub id_ref: Option<u64>,
}

/// The report's counts, added to one row at a time: by the job as it
/// writes its results, or by [`build`] reading a results file. Both read
/// the same columns the same way, so a job's report and one rebuilt from
/// its output agree. Memory grows by 16 bytes per row (the `id_ref`
/// fingerprints with their rows, sorted at the end to find shared
/// identities).
#[derive(Debug, Default)]
pub struct Tally {
    report: Report,
    refs: Vec<(u64, u64)>,
}

impl Tally {
    /// Counts one row. Counters are bumped without a key allocation each:
    /// a job counts millions of rows.
    pub fn add(&mut self, v: &RowView<'_>) {
        let r = &mut self.report;
        r.rows += 1;
        bump(&mut r.decisions, v.decision);
        for (result, (_, field)) in v.fields.iter().zip(FIELDS) {
            if *result == "MISMATCH" {
                bump(&mut r.failed_fields, field);
            }
        }
        if !v.recommended_action.is_empty() {
            bump(&mut r.recommended_actions, v.recommended_action);
        }
        let parsed = Msisdn::parse(v.msisdn)
            .ok()
            .map(|m| (m.national_prefix(), m.prefix_carrier().as_str()));
        let (prefix, carrier) = match &parsed {
            Some((p, carrier)) => (std::str::from_utf8(p).expect("ASCII digits"), *carrier),
            None => ("invalid", "-"),
        };
        match r.msisdn_prefixes.get_mut(prefix) {
            Some(entry) => entry.rows += 1,
            None => {
                r.msisdn_prefixes.insert(
                    prefix.to_owned(),
                    PrefixCount {
                        carrier: carrier.into(),
                        rows: 1,
                    },
                );
            }
        }
        if v.name_tier == "DIACRITICS_ONLY" {
            r.diacritics_only_rows.push(v.row);
        }
        if let Some(fp) = v.id_ref {
            self.refs.push((fp, v.row));
        }
    }

    /// Rows counted so far.
    pub fn rows(&self) -> u64 {
        self.report.rows
    }

    /// Rows counted so far, by decision.
    pub fn decisions(&self) -> &BTreeMap<String, u64> {
        &self.report.decisions
    }

    /// The report, with identities on more than `max_lines_per_id` lines.
    pub fn finish(mut self, max_lines_per_id: usize) -> Report {
        let mut r = std::mem::take(&mut self.report);
        r.max_lines_per_id = max_lines_per_id;
        self.refs.sort_unstable();
        for group in self.refs.chunk_by(|a, b| a.0 == b.0) {
            if group.len() > max_lines_per_id {
                r.shared_ids.push(SharedId {
                    lines: group.len(),
                    rows: group.iter().map(|&(_, row)| row).collect(),
                    id_number: None,
                });
            }
        }
        r.shared_ids
            .sort_by(|a, b| b.lines.cmp(&a.lines).then(a.rows.cmp(&b.rows)));
        r
    }
}

/// Counts every row of a results CSV.
pub fn tally<R: Read>(results: R) -> Result<Tally, ReportError> {
    let mut rdr = csv::Reader::from_reader(results);
    let header = rdr.headers()?.clone();
    let col = |name: &'static str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or(ReportError::MissingColumn(name))
    };
    let (c_row, c_msisdn, c_decision, c_tier, c_action, c_ref) = (
        col("row")?,
        col("msisdn")?,
        col("decision")?,
        col("name_tier")?,
        col("recommended_action")?,
        col("id_ref")?,
    );
    let mut c_fields = [0; 4];
    for (c, (name, _)) in c_fields.iter_mut().zip(FIELDS) {
        *c = col(name)?;
    }
    let mut t = Tally::default();
    // One record reused for every row.
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec)? {
        t.add(&RowView {
            row: rec[c_row].parse().unwrap_or(t.rows() + 1),
            msisdn: &rec[c_msisdn],
            decision: &rec[c_decision],
            fields: c_fields.map(|c| &rec[c]),
            name_tier: &rec[c_tier],
            recommended_action: &rec[c_action],
            id_ref: u64::from_str_radix(&rec[c_ref], 16).ok(),
        });
    }
    Ok(t)
}

/// Builds the report from a results CSV.
pub fn build<R: Read>(results: R, max_lines_per_id: usize) -> Result<Report, ReportError> {
    Ok(tally(results)?.finish(max_lines_per_id))
}

/// Counts one more `key`, allocating the key only the first time it is seen.
fn bump(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_owned(), 1);
        }
    }
}

/// Fills in the ID numbers of shared identities from the input file (only
/// for `--show-ids`).
pub fn attach_ids<R: Read>(report: &mut Report, input: R) -> Result<(), ReportError> {
    let wanted: HashSet<u64> = report.shared_ids.iter().map(|s| s.rows[0]).collect();
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let header = rdr.byte_headers()?.clone();
    let c_id = header
        .iter()
        .position(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                == "id_number"
        })
        .ok_or(ReportError::MissingColumn("id_number"))?;
    let mut ids = std::collections::HashMap::new();
    for (i, rec) in rdr.byte_records().enumerate() {
        let row = i as u64 + 1;
        if wanted.contains(&row) {
            let rec = rec?;
            ids.insert(
                row,
                String::from_utf8_lossy(rec.get(c_id).unwrap_or_default())
                    .trim()
                    .to_owned(),
            );
        }
    }
    for s in &mut report.shared_ids {
        s.id_number = ids.remove(&s.rows[0]);
    }
    Ok(())
}

fn list(rows: &[u64], max: usize) -> String {
    let mut s: Vec<String> = rows.iter().take(max).map(u64::to_string).collect();
    if rows.len() > max {
        s.push(format!("… ({} more)", rows.len() - max));
    }
    s.join(", ")
}

impl Report {
    /// The report as an operator reads it in a terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let pct = |n: u64| {
            if self.rows == 0 {
                0.0
            } else {
                n as f64 * 100.0 / self.rows as f64
            }
        };
        let _ = writeln!(o, "Cleanup report: {} lines", self.rows);
        let _ = writeln!(o, "\nDecisions");
        for (k, v) in &self.decisions {
            let _ = writeln!(o, "  {k:<26}{v:>12}  {:>5.1}%", pct(*v));
        }
        let _ = writeln!(o, "\nFields that did not match");
        if self.failed_fields.is_empty() {
            let _ = writeln!(o, "  none");
        }
        for (k, v) in &self.failed_fields {
            let _ = writeln!(o, "  {k:<26}{v:>12}  {:>5.1}%", pct(*v));
        }
        let _ = writeln!(o, "\nRecommended actions");
        for (k, v) in &self.recommended_actions {
            let _ = writeln!(o, "  {k:<26}{v:>12}  {:>5.1}%", pct(*v));
        }
        let _ = writeln!(o, "\nLines by MSISDN prefix");
        for (k, v) in &self.msisdn_prefixes {
            let _ = writeln!(o, "  {k:<5} {:<20}{:>12}", v.carrier, v.rows);
        }
        let _ = writeln!(
            o,
            "\nName differs only in diacritics (fix the record, do not lock the line): {} lines",
            self.diacritics_only_rows.len()
        );
        if !self.diacritics_only_rows.is_empty() {
            let _ = writeln!(o, "  rows {}", list(&self.diacritics_only_rows, 20));
        }
        let _ = writeln!(
            o,
            "\nIdentities on more than {} lines: {}",
            self.max_lines_per_id,
            self.shared_ids.len()
        );
        for s in self.shared_ids.iter().take(50) {
            let who = s
                .id_number
                .as_deref()
                .map(|i| format!(" id {i}"))
                .unwrap_or_default();
            let _ = writeln!(o, "  {} lines{who}: rows {}", s.lines, list(&s.rows, 20));
        }
        if self.shared_ids.len() > 50 {
            let _ = writeln!(
                o,
                "  … {} more (see the JSON summary)",
                self.shared_ids.len() - 50
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_ids_group() {
        let csv = "\
row,msisdn,request_id,decision,id_number_result,full_name_result,date_of_birth_result,sex_result,name_tier,name_score,recommended_action,reasons,audit_id,error,id_ref
1,0981234567,a,VERIFIED,MATCH,MATCH,MATCH,NOT_PROVIDED,EXACT,100,NONE,,x,,00000000000000aa
2,0981234568,b,MISMATCH,MATCH,MISMATCH,MATCH,NOT_PROVIDED,DIACRITICS_ONLY,99,UPDATE_SUBSCRIBER_RECORD,FULL_NAME_DIACRITICS_ONLY,y,,00000000000000aa
3,12,c,INVALID,,,,,,,CORRECT_INPUT,INVALID_INPUT,,msisdn: bad,
4,0881234567,d,MISMATCH,MATCH,MATCH,MISMATCH,MISMATCH,EXACT,100,SUSPEND_OUTGOING,,z,,00000000000000aa
";
        let r = build(csv.as_bytes(), 2).unwrap();
        assert_eq!(r.rows, 4);
        assert_eq!(r.decisions.values().sum::<u64>(), 4);
        assert_eq!(r.failed_fields["full_name"], 1);
        assert_eq!(r.failed_fields["sex"], 1);
        assert_eq!(r.msisdn_prefixes["098"].rows, 2);
        assert_eq!(r.msisdn_prefixes["098"].carrier, "viettel");
        assert_eq!(r.msisdn_prefixes["invalid"].rows, 1);
        assert_eq!(r.diacritics_only_rows, [2]);
        assert_eq!(r.shared_ids.len(), 1);
        assert_eq!(r.shared_ids[0].rows, [1, 2, 4]);
        assert!(r.render().contains("Identities on more than 2 lines: 1"));
    }
}
