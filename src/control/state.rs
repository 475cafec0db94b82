//! Durable users (`-state FILE`): a log of applied changes, one JSON record per line,
//! each written and flushed to disk (fdatasync) before the controller replies, and
//! replayed before the listeners open. When the log has grown to several times the size
//! of the table it describes, it is rewritten as a single snapshot record (temporary file,
//! fsync, rename, fsync of the directory), so its size stays proportional to the users.
//!
//! Beside the users, the log keeps their limits (the quota as the bytes left when the
//! record was written) and the billing ledger ([`crate::control::billing`]), written whole
//! after each collection that changed it, so a restart repeats an unacknowledged report
//! and never loses one. Files written before limits existed load unchanged.
//!
//! A crash can leave the last record torn (written in part, never acknowledged): that tail
//! is dropped with a warning. Anything else that does not parse stops the start with the
//! file and line named; a state file is never silently replaced by an empty table.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::billing::Ledger;
use crate::control::command::valid_dst;
use crate::control::policy::Limits;
use crate::control::routes::{RouteChange, RouteTable};

/// Rewrite the log once it is this many times larger than a snapshot would be...
const COMPACT_RATIO: u64 = 4;
/// ...and at least this large.
const COMPACT_MIN: u64 = 1 << 20;

/// One user as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredUser {
    pub path: String,
    pub dst: String,
    /// Its limits as last set (all zero: none).
    pub limits: Limits,
    /// Bytes left of its quota when last written, if it has one.
    pub quota_left: Option<u64>,
}

/// One line of the log: applied in the order clear, upsert (with `limits` for the users
/// upserted that have any), remove, `quota_left`, `billing`.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    clear: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upsert: Vec<(String, String)>,
    /// Limits of users in `upsert`; a user upserted without an entry here has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    limits: BTreeMap<String, Limits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    remove: Vec<String>,
    /// Bytes left of existing users' quotas, as of this record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    quota_left: BTreeMap<String, u64>,
    /// The whole billing ledger, replacing any before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    billing: Option<Ledger>,
}

impl Record {
    fn of(change: &RouteChange) -> Record {
        let pairs = |routes: &[crate::control::routes::Route]| {
            routes
                .iter()
                .map(|r| (r.path().to_string(), r.dst().to_string()))
                .collect()
        };
        match change {
            RouteChange::Upsert(routes) => Record {
                upsert: pairs(routes),
                ..Record::default()
            },
            RouteChange::Remove(paths) => Record {
                remove: paths.iter().map(|p| p.to_string()).collect(),
                ..Record::default()
            },
            RouteChange::Clear => Record {
                clear: true,
                ..Record::default()
            },
            RouteChange::Sync { upsert, remove } => Record {
                upsert: pairs(upsert),
                remove: remove.iter().map(|p| p.to_string()).collect(),
                ..Record::default()
            },
        }
    }

    fn line(&self) -> Vec<u8> {
        // Plain strings and booleans always serialize.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The open state file.
pub struct StateFile {
    path: PathBuf,
    /// Opened for appending.
    file: File,
    /// Bytes in the log now.
    log_bytes: u64,
    /// The billing ledger read at start, until the controller takes it.
    restored_ledger: Option<Ledger>,
}

impl StateFile {
    /// Opens (or creates) the state file and returns it with the users it holds. Errors
    /// name the file and, for a bad record, the line.
    pub fn open(path: &Path) -> Result<(StateFile, Vec<StoredUser>), String> {
        let name = path.display();
        let mut contents = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut contents)
                    .map_err(|e| format!("state file {name}: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("state file {name}: {e}")),
        }
        let complete = contents
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if complete < contents.len() {
            log::warn!(
                "state file {name}: dropping a torn last record of {} bytes (a change that was never acknowledged)",
                contents.len() - complete
            );
        }
        let mut users: HashMap<String, (String, Limits, Option<u64>)> = HashMap::new();
        let mut ledger = Ledger::default();
        for (number, line) in contents[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut record: Record = serde_json::from_slice(line)
                .map_err(|e| format!("state file {name}: line {}: {e}", number + 1))?;
            if record.clear {
                users.clear();
            }
            for (path, dst) in record.upsert {
                if !path.starts_with('/') || !valid_dst(&dst) {
                    return Err(format!(
                        "state file {name}: line {}: bad user {path:?} -> {dst:?}",
                        number + 1
                    ));
                }
                let limits = record.limits.remove(&path).unwrap_or_default();
                users.insert(path, (dst, limits, None));
            }
            for path in record.remove {
                users.remove(&path);
            }
            for (path, left) in record.quota_left {
                if let Some((_, limits, quota_left)) = users.get_mut(&path) {
                    if limits.quota > 0 {
                        *quota_left = Some(left);
                    }
                }
            }
            if let Some(restored) = record.billing {
                ledger = restored;
            }
        }
        let users: Vec<StoredUser> = users
            .into_iter()
            .map(|(path, (dst, limits, quota_left))| StoredUser {
                path,
                dst,
                limits,
                quota_left,
            })
            .collect();
        // Start from a compact file: one snapshot record.
        let file =
            write_snapshot(path, &users, &ledger).map_err(|e| format!("state file {name}: {e}"))?;
        let log_bytes = file
            .metadata()
            .map_err(|e| format!("state file {name}: {e}"))?
            .len();
        Ok((
            StateFile {
                path: path.to_path_buf(),
                file,
                log_bytes,
                restored_ledger: Some(ledger),
            },
            users,
        ))
    }

    /// The billing ledger the file held at start (once).
    pub fn take_ledger(&mut self) -> Ledger {
        self.restored_ledger.take().unwrap_or_default()
    }

    /// Makes `change` durable, with the limits of the users it upserts that have any.
    /// Nothing may be applied or acknowledged until this returns Ok.
    pub fn append(&mut self, change: &RouteChange, limits: &[(&str, Limits)]) -> io::Result<()> {
        let mut record = Record::of(change);
        record.limits = limits
            .iter()
            .filter(|(_, l)| !l.is_unlimited())
            .map(|(p, l)| (p.to_string(), *l))
            .collect();
        self.write(&record)
    }

    /// Makes the billing ledger durable, with the quotas left of the users that have one.
    pub fn save_ledger(
        &mut self,
        ledger: &Ledger,
        quota_left: BTreeMap<String, u64>,
    ) -> io::Result<()> {
        self.write(&Record {
            quota_left,
            billing: Some(ledger.clone()),
            ..Record::default()
        })
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        let line = record.line();
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.log_bytes += line.len() as u64;
        Ok(())
    }

    /// Rewrites the log as one snapshot of `table` and `ledger` once it has grown well
    /// past one.
    pub fn compact_if_large(&mut self, table: &RouteTable, ledger: &Ledger) -> io::Result<()> {
        let estimate: u64 = table
            .iter()
            .map(|r| {
                let limits = if r.policy().is_some() { 64 } else { 0 };
                r.path().len() as u64 + r.dst().len() as u64 + 8 + limits
            })
            .sum::<u64>()
            + ledger.len() as u64 * 96
            + 16;
        if self.log_bytes < COMPACT_MIN.max(estimate * COMPACT_RATIO) {
            return Ok(());
        }
        let users: Vec<StoredUser> = table
            .iter()
            .map(|r| StoredUser {
                path: r.path().to_string(),
                dst: r.dst().to_string(),
                limits: r.policy().map(|p| p.limits()).unwrap_or_default(),
                quota_left: r.policy().and_then(|p| p.quota_left()),
            })
            .collect();
        self.file = write_snapshot(&self.path, &users, ledger)?;
        self.log_bytes = self.file.metadata()?.len();
        Ok(())
    }
}

/// Replaces the file at `path` with a single snapshot record, durably, and returns it
/// opened for appending.
fn write_snapshot(path: &Path, users: &[StoredUser], ledger: &Ledger) -> io::Result<File> {
    let record = Record {
        clear: true,
        upsert: users
            .iter()
            .map(|u| (u.path.clone(), u.dst.clone()))
            .collect(),
        limits: users
            .iter()
            .filter(|u| !u.limits.is_unlimited())
            .map(|u| (u.path.clone(), u.limits))
            .collect(),
        quota_left: users
            .iter()
            .filter_map(|u| Some((u.path.clone(), u.quota_left?)))
            .collect(),
        billing: (*ledger != Ledger::default()).then(|| ledger.clone()),
        ..Record::default()
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&record.line())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::routes::Route;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mtt-state-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("users.state")
    }

    fn route(p: &str, d: &str) -> Route {
        Route::new(p, d)
    }

    fn sorted(users: Vec<StoredUser>) -> Vec<(String, String)> {
        let mut users: Vec<_> = users.into_iter().map(|u| (u.path, u.dst)).collect();
        users.sort();
        users
    }

    #[test]
    fn changes_survive_a_reopen() {
        let path = temp("reopen");
        let (mut state, users) = StateFile::open(&path).unwrap();
        assert!(users.is_empty());
        state
            .append(
                &RouteChange::Upsert(vec![route("/a", "h:1"), route("/b", "h:2")]),
                &[],
            )
            .unwrap();
        state
            .append(&RouteChange::Remove(vec!["/a".into()]), &[])
            .unwrap();
        state
            .append(
                &RouteChange::Sync {
                    upsert: vec![route("/c", "h:3")],
                    remove: vec![],
                },
                &[],
            )
            .unwrap();
        drop(state);
        let (_, users) = StateFile::open(&path).unwrap();
        assert_eq!(
            sorted(users),
            vec![("/b".into(), "h:2".into()), ("/c".into(), "h:3".into())]
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_dropped_but_corruption_stops_the_start() {
        let path = temp("torn");
        std::fs::write(
            &path,
            b"{\"upsert\":[[\"/a\",\"h:1\"]]}\n{\"upsert\":[[\"/b\",\"h",
        )
        .unwrap();
        let (_, users) = StateFile::open(&path).unwrap();
        assert_eq!(sorted(users), vec![("/a".to_string(), "h:1".to_string())]);
        std::fs::write(&path, b"{\"upsert\":[[\"/a\",\"h:1\"]]}\ngarbage\n").unwrap();
        let err = StateFile::open(&path).err().unwrap();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, b"{\"upsert\":[[\"nope\",\"h:1\"]]}\n").unwrap();
        assert!(StateFile::open(&path).is_err());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn compaction_keeps_the_table() {
        let path = temp("compact");
        let (mut state, _) = StateFile::open(&path).unwrap();
        let mut table = RouteTable::new();
        for round in 0..200 {
            let change = RouteChange::Upsert(
                (0..100)
                    .map(|i| route(&format!("/u{i}"), &format!("host-{round}:{}", i + 1)))
                    .collect(),
            );
            state.append(&change, &[]).unwrap();
            table.apply(&change);
            state.compact_if_large(&table, &Ledger::default()).unwrap();
        }
        assert!(state.log_bytes < 8 * COMPACT_MIN);
        drop(state);
        let (_, users) = StateFile::open(&path).unwrap();
        assert_eq!(users.len(), 100);
        assert!(sorted(users).contains(&("/u7".to_string(), "host-199:8".to_string())));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn limits_quota_left_and_the_ledger_survive_a_reopen() {
        use crate::control::billing::Counts;
        let path = temp("limits");
        // A file from before limits existed loads as it did.
        std::fs::write(&path, b"{\"upsert\":[[\"/a\",\"h:1\"]]}\n").unwrap();
        let (mut state, users) = StateFile::open(&path).unwrap();
        assert_eq!(users[0].limits, Limits::default());
        let limits = Limits {
            speed_limit: 1000,
            quota: 500,
            ..Limits::default()
        };
        state
            .append(
                &RouteChange::Upsert(vec![route("/a", "h:1"), route("/b", "h:2")]),
                &[("/b", limits), ("/a", Limits::default())],
            )
            .unwrap();
        let mut ledger = Ledger::default();
        ledger.record(
            "/b",
            &Counts {
                bytes_up: 7,
                ..Counts::default()
            },
        );
        let (id, _) = ledger.report();
        state
            .save_ledger(&ledger, [("/b".to_string(), 123)].into_iter().collect())
            .unwrap();
        drop(state);
        let (mut state, users) = StateFile::open(&path).unwrap();
        let b = users.iter().find(|u| u.path == "/b").unwrap();
        assert_eq!((b.limits, b.quota_left), (limits, Some(123)));
        assert_eq!(
            users.iter().find(|u| u.path == "/a").unwrap().limits,
            Limits::default()
        );
        let mut restored = state.take_ledger();
        assert_eq!(restored, ledger);
        assert!(restored.acknowledge(&id.to_string()).is_ok());
        // The quota left (zero included) survives a reopen, which rewrites the snapshot.
        state
            .save_ledger(&restored, [("/b".to_string(), 0)].into_iter().collect())
            .unwrap();
        drop(state);
        StateFile::open(&path).unwrap();
        let (_, users) = StateFile::open(&path).unwrap();
        let b = users.iter().find(|u| u.path == "/b").unwrap();
        assert_eq!((b.limits, b.quota_left), (limits, Some(0)));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
