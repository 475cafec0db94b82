//! Billing that loses nothing (opt 7, report; opt 8, acknowledge): the controller's
//! ledger of per-user counts that panels have not yet acknowledged.
//!
//! Every collection of the workers' counters (they hand them over and restart from zero in
//! one step) is added to [`Ledger::fresh`]. A report moves everything fresh into the
//! pending report, gives it a new id and returns the whole pending report: a reply that
//! never arrived is simply reported again, with whatever came since, under the next id.
//! Acknowledging the newest id clears the pending report (only it: counts collected after
//! the report stay fresh); any other id is refused and changes nothing. The ledger is kept
//! in the state file (see [`crate::control::state`]), so a restart repeats an
//! unacknowledged report rather than losing it.
//!
//! Plain data: no threads, no IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One user's counts in the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub tunnels_opened: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.tunnels_opened += other.tunnels_opened;
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// One user's line of a billing report, as the panel gets it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLine {
    pub path: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Counts not yet acknowledged by the panel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The id of the newest report issued (0: none yet). Ids only grow, across restarts
    /// too, so an id from before a restart cannot acknowledge a later report.
    #[serde(default)]
    pub last_id: u64,
    /// The newest report, until it is acknowledged (empty once it is).
    #[serde(default)]
    pub pending: BTreeMap<String, Counts>,
    /// Whether the newest report still waits for its acknowledgement.
    #[serde(default)]
    pub unacknowledged: bool,
    /// Collected since the newest report.
    #[serde(default)]
    pub fresh: BTreeMap<String, Counts>,
}

/// Why an acknowledgement changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// Not the newest report's id (unknown, older, or not a number we issued).
    NotNewest { given: String, newest: u64 },
    /// The newest report was acknowledged already.
    AlreadyAcknowledged(u64),
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::NotNewest { given, newest: 0 } => {
                write!(f, "ack: unknown report_id {given:?}: no report was issued")
            }
            AckError::NotNewest { given, newest } => write!(
                f,
                "ack: report_id {given:?} is unknown or not the newest ({newest}): nothing acknowledged"
            ),
            AckError::AlreadyAcknowledged(id) => {
                write!(f, "ack: report_id \"{id}\" is acknowledged already")
            }
        }
    }
}

impl Ledger {
    /// Adds one collection's counts (users with nothing are skipped).
    pub fn record(&mut self, path: &str, counts: &Counts) {
        if counts.is_zero() {
            return;
        }
        match self.fresh.get_mut(path) {
            Some(entry) => entry.add(counts),
            None => {
                self.fresh.insert(path.to_string(), *counts);
            }
        }
    }

    /// Issues a new report: the unacknowledged one plus everything fresh, under a new id.
    pub fn report(&mut self) -> (u64, Vec<BillLine>) {
        if !self.unacknowledged {
            self.pending.clear();
        }
        for (path, counts) in std::mem::take(&mut self.fresh) {
            self.pending.entry(path).or_default().add(&counts);
        }
        self.last_id += 1;
        self.unacknowledged = true;
        let lines = self
            .pending
            .iter()
            .map(|(path, counts)| BillLine {
                path: path.clone(),
                counts: *counts,
            })
            .collect();
        (self.last_id, lines)
    }

    /// Acknowledges the newest report (and so every one before it).
    pub fn acknowledge(&mut self, id: &str) -> Result<(), AckError> {
        if id.parse::<u64>().ok() != Some(self.last_id) || self.last_id == 0 {
            return Err(AckError::NotNewest {
                given: id.to_string(),
                newest: self.last_id,
            });
        }
        if !self.unacknowledged {
            return Err(AckError::AlreadyAcknowledged(self.last_id));
        }
        self.pending.clear();
        self.unacknowledged = false;
        Ok(())
    }

    /// Users in the ledger, for sizing the state file.
    pub fn len(&self) -> usize {
        self.pending.len() + self.fresh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(up: u64) -> Counts {
        Counts {
            bytes_up: up,
            bytes_down: 0,
            tunnels_opened: 1,
        }
    }

    #[test]
    fn a_lost_reply_is_reported_again_and_an_ack_clears_only_what_was_reported() {
        let mut ledger = Ledger::default();
        ledger.record("/a", &bytes(10));
        let (first, lines) = ledger.report();
        assert_eq!(lines[0].counts.bytes_up, 10);
        // The reply was lost: the next report repeats it, plus what came since.
        ledger.record("/a", &bytes(5));
        ledger.record("/b", &bytes(7));
        let (second, lines) = ledger.report();
        assert!(second > first);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].counts.bytes_up, 15);
        assert_eq!(lines[0].counts.tunnels_opened, 2);
        // Counts after the report stay for the next one.
        ledger.record("/a", &bytes(1));
        assert!(ledger.acknowledge(&first.to_string()).is_err());
        assert!(ledger.acknowledge("nonsense").is_err());
        ledger.acknowledge(&second.to_string()).unwrap();
        assert_eq!(
            ledger.acknowledge(&second.to_string()),
            Err(AckError::AlreadyAcknowledged(second))
        );
        let (_, lines) = ledger.report();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].counts.bytes_up, 1);
    }

    #[test]
    fn no_report_yet_means_nothing_to_acknowledge() {
        let mut ledger = Ledger::default();
        assert!(ledger.acknowledge("0").is_err());
        assert!(ledger.acknowledge("1").is_err());
        let (id, lines) = ledger.report();
        assert_eq!((id, lines.len()), (1, 0));
    }
}
