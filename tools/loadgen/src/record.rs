//! Results: each measurement prints one human line and, with `--record FILE`, appends one
//! JSON line `{"target","measure","value","unit"}` to FILE. `loadgen report FILE` turns
//! such a file into a table of medians per target, with each target's ratio to a reference
//! target measured in the same run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Where one subcommand's results go.
#[derive(Clone)]
pub struct Recorder {
    /// The label of the relay under test (`haproxy`, `ours-uring`, ...).
    pub target: String,
    pub file: Option<PathBuf>,
}

impl Recorder {
    pub fn record(&self, measure: &str, value: f64, unit: &str) {
        println!(
            "{:<14} {:<44} {:>12.4} {}",
            self.target, measure, value, unit
        );
        if let Some(path) = &self.file {
            let line = serde_json::json!({
                "target": self.target,
                "measure": measure,
                "value": value,
                "unit": unit,
            });
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                eprintln!("loadgen: recording to {}: {e}", path.display());
            }
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// Prints the Markdown table of the results in `path`: one row per measure, per target the
/// median (and the number of runs when it is not 3), and `target/reference` ratios.
pub fn report(path: &PathBuf, reference: &str) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut measures: Vec<(String, String)> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}: {e}: {line}", path.display()))?;
        let target = v["target"].as_str().unwrap_or("?").to_string();
        let measure = v["measure"].as_str().unwrap_or("?").to_string();
        let unit = v["unit"].as_str().unwrap_or("").to_string();
        let Some(value) = v["value"].as_f64() else {
            continue;
        };
        if !measures.iter().any(|(m, _)| *m == measure) {
            measures.push((measure.clone(), unit));
        }
        if !targets.contains(&target) {
            targets.push(target.clone());
        }
        values.entry((measure, target)).or_default().push(value);
    }
    // The reference first, then the others as they appeared.
    targets.sort_by_key(|t| t != reference);
    let mut header = String::from("| measure | unit |");
    let mut rule = String::from("|---|---|");
    for t in &targets {
        header.push_str(&format!(" {t} |"));
        rule.push_str("---:|");
        if t != reference {
            header.push_str(&format!(" {t} / {reference} |"));
            rule.push_str("---:|");
        }
    }
    println!("{header}\n{rule}");
    for (measure, unit) in &measures {
        let mut row = format!("| {measure} | {unit} |");
        let mut medians = BTreeMap::new();
        for t in &targets {
            if let Some(v) = values.get_mut(&(measure.clone(), t.clone())) {
                let m = median(v);
                medians.insert(t.clone(), m);
                let runs = if v.len() == 3 {
                    String::new()
                } else {
                    format!(" (n={})", v.len())
                };
                row.push_str(&format!(" {}{runs} |", fmt(m)));
            } else {
                row.push_str(" |");
            }
            if t != reference {
                match (medians.get(t), medians.get(reference)) {
                    (Some(v), Some(r)) if *r != 0.0 => row.push_str(&format!(" {:.2} |", v / r)),
                    _ => row.push_str(" |"),
                }
            }
        }
        println!("{row}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
