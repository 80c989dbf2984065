//! The audit log: append-only, hash-chained records of every admin action and admission
//! decision. Each record carries the hash of the one before, so [`verify`] detects an edited,
//! inserted, reordered or removed record. (Records are chained by the store, atomically with
//! the chain head; see [`crate::store::AuditRecord::chain`].)

use crate::store::{AuditEntry, AuditRecord, Decision, Store, StoreError, GENESIS_HASH};
use serde::Serialize;
use std::time::SystemTime;
use ztmesh_common::time::UnixMillis;

/// The wall clock in the store's unit.
pub fn now() -> UnixMillis {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(d.as_millis() as u64)
}

/// Append one record now. Callers that must not fail because of the audit log still log the error.
pub fn record(
    store: &dyn Store,
    actor: &str,
    action: &str,
    subject: &str,
    decision: Decision,
    reason: &str,
) -> Result<AuditRecord, StoreError> {
    store.append_audit(AuditEntry {
        at: now(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        decision,
        reason: reason.to_owned(),
    })
}

/// Result of [`verify`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: u64,
    /// Hash of the newest record: write it down elsewhere to detect a truncated log later.
    pub head_hash: Option<String>,
    /// Every problem found, one sentence each; empty when the chain is intact.
    pub problems: Vec<String>,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check the whole chain: sequence without gaps, every `prev_hash` links to the previous
/// record, every `hash` matches the record's contents, and the last record is the recorded head.
pub fn verify(store: &dyn Store) -> Result<Verification, StoreError> {
    let records = match store.audit_records() {
        Ok(r) => r,
        Err(StoreError::Corrupt { detail, .. }) => {
            return Ok(Verification {
                records: 0,
                head_hash: None,
                problems: vec![format!("an audit record does not decode: {detail}")],
            })
        }
        Err(e) => return Err(e),
    };
    let head = store.audit_head_seq()?;
    Ok(check_chain(&records, head))
}

/// The pure part of [`verify`].
pub fn check_chain(records: &[AuditRecord], head_seq: Option<u64>) -> Verification {
    let mut problems = Vec::new();
    let mut prev_hash = GENESIS_HASH.to_owned();
    for (i, rec) in records.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if rec.seq != expected_seq {
            problems.push(format!(
                "record {} found where record {expected_seq} belongs: records were removed or reordered",
                rec.seq
            ));
        }
        if rec.prev_hash != prev_hash {
            problems.push(format!(
                "record {} does not link to the record before it (prev_hash mismatch)",
                rec.seq
            ));
        }
        if rec.compute_hash() != rec.hash {
            problems.push(format!(
                "record {} was modified (its hash does not match its contents)",
                rec.seq
            ));
        }
        prev_hash = rec.hash.clone();
    }
    let last = records.last().map(|r| r.seq);
    if last != head_seq {
        problems.push(format!(
            "the log ends at record {} but its head is record {}: records were removed or added",
            last.map_or("none".into(), |s| s.to_string()),
            head_seq.map_or("none".into(), |s| s.to_string())
        ));
    }
    Verification {
        records: records.len() as u64,
        head_hash: records.last().map(|r| r.hash.clone()),
        problems,
    }
}

/// One line per record, for `audit tail`.
pub fn format_line(r: &AuditRecord) -> String {
    let reason = if r.reason.is_empty() {
        String::new()
    } else {
        format!(" reason={:?}", r.reason)
    };
    format!(
        "#{} {} actor={} action={} subject={} decision={}{reason}",
        r.seq,
        format_time(r.at),
        r.actor,
        r.action,
        r.subject,
        r.decision
    )
}

/// RFC 3339 UTC with milliseconds.
pub fn format_time(t: UnixMillis) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        ),
        Err(_) => format!("{}ms", t.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let e = AuditEntry {
                at: UnixMillis(i),
                actor: "a".into(),
                action: "x".into(),
                subject: format!("s{i}"),
                decision: Decision::Allow,
                reason: String::new(),
            };
            let r = AuditRecord::chain(e, out.last());
            out.push(r);
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        assert!(check_chain(&c, Some(5)).is_ok());
        assert!(check_chain(&[], None).is_ok());
    }

    #[test]
    fn edits_and_removals_are_found() {
        let mut c = chain(5);
        c[2].decision = Decision::Deny;
        assert!(!check_chain(&c, Some(5)).is_ok());

        let mut c = chain(5);
        c.remove(2);
        assert!(!check_chain(&c, Some(5)).is_ok());

        let mut c = chain(5);
        c.pop();
        assert!(!check_chain(&c, Some(5)).is_ok());

        // Rehashing an edited record still breaks the link from the next one.
        let mut c = chain(5);
        c[1].subject = "other".into();
        c[1].hash = c[1].compute_hash();
        let v = check_chain(&c, Some(5));
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].contains("record 3"));
    }

    #[test]
    fn time_formats_as_rfc3339() {
        assert_eq!(format_time(UnixMillis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time(UnixMillis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
