//! `chaos`: the chaos suite's command line (see `scripts/chaos.sh` and
//! `Documentation/reliability.md`).
//!
//! ```text
//! chaos [--scenario NAME]... [--json FILE] [--hosts N] [--units N] [--conf LINE]... [--list]
//! ```
//! Without `--scenario` it runs every scenario. `--conf` adds a line to every host's
//! fleet.conf (e.g. `on_partition=keep-running`), after the suite's own. Exits 0 when every scenario held its
//! invariants, 1 when one did not, 2 on bad usage or when the cluster could not be set up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use functional_tests::chaos::report::{self, HEADER};
use functional_tests::chaos::run::{self, Options};
use functional_tests::chaos::scenario::{ALL, Scenario};

const USAGE: &str = "usage: chaos [--scenario NAME]... [--json FILE] [--hosts N] [--units N] [--conf LINE]... [--list]";

struct Args {
    options: Options,
    json: Option<PathBuf>,
}

/// Parses the arguments; `Ok(None)` means nothing to run (`--list`, `--help`).
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut options = Options {
        hosts: 5,
        units: 300,
        scenarios: Vec::new(),
        conf: Vec::new(),
    };
    let mut json = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--scenario" => {
                let name = value("--scenario")?;
                let scenario = Scenario::from_name(&name)
                    .ok_or(format!("unknown scenario {name:?} (see --list)"))?;
                options.scenarios.push(scenario);
            }
            "--json" => json = Some(PathBuf::from(value("--json")?)),
            "--conf" => {
                let line = value("--conf")?;
                if !line.contains('=') || line.contains('\n') {
                    return Err(format!("--conf takes one KEY=VALUE line, not {line:?}"));
                }
                options.conf.push(line);
            }
            "--hosts" => options.hosts = number("--hosts", &value("--hosts")?, 2, 20)?,
            "--units" => options.units = number("--units", &value("--units")?, 10, 2000)?,
            "--list" => {
                for scenario in ALL {
                    println!("{}", scenario.name());
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios = ALL.to_vec();
    }
    Ok(Some(Args { options, json }))
}

fn number(flag: &str, text: &str, min: usize, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{flag} must be a number from {min} to {max}, not {text:?}"
        )),
    }
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chaos: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let rows = match run::run(&args.options, &|line| eprintln!("chaos: {line}")) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("chaos: error: {error:#}");
            return ExitCode::from(2);
        }
    };
    println!("{HEADER}");
    for row in &rows {
        println!("{}", report::line(row));
    }
    for row in rows.iter().filter(|row| !row.ok) {
        for problem in row.problems.iter().take(10) {
            println!("{}: {problem}", row.name);
        }
        if row.problems.len() > 10 {
            println!("{}: ... and {} more", row.name, row.problems.len() - 10);
        }
    }
    println!("total run time {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let text = report::json(&rows).to_string();
        if let Err(error) = std::fs::write(path, text + "\n") {
            eprintln!("chaos: writing {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if rows.iter().all(|row| row.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Option<Args>, String> {
        parse(words.iter().map(|word| word.to_string()))
    }

    #[test]
    fn no_scenario_runs_them_all_on_five_hosts_with_300_units() {
        let args = parse_words(&[]).unwrap().unwrap();
        assert_eq!(args.options.scenarios, ALL.to_vec());
        assert_eq!((args.options.hosts, args.options.units), (5, 300));
        assert!(args.json.is_none());
    }

    #[test]
    fn scenarios_repeat_in_order_and_json_names_a_file() {
        let args = parse_words(&[
            "--scenario",
            "kill-host",
            "--json",
            "out.json",
            "--scenario",
            "kill-fleetd",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            args.options.scenarios,
            [Scenario::KillHost, Scenario::KillFleetd]
        );
        assert_eq!(args.json, Some(PathBuf::from("out.json")));
    }

    #[test]
    fn conf_lines_are_kept_in_order() {
        let args = parse_words(&["--conf", "on_partition=stop", "--conf", "agent_ttl=6s"])
            .unwrap()
            .unwrap();
        assert_eq!(args.options.conf, ["on_partition=stop", "agent_ttl=6s"]);
    }

    #[test]
    fn bad_usage_is_said() {
        for (words, message) in [
            (&["--scenario", "nope"][..], "unknown scenario \"nope\""),
            (&["--scenario"][..], "--scenario needs a value"),
            (
                &["--hosts", "1"][..],
                "--hosts must be a number from 2 to 20",
            ),
            (&["--units", "x"][..], "--units must be a number"),
            (&["--fast"][..], "unknown argument \"--fast\""),
            (&["--conf", "stop"][..], "--conf takes one KEY=VALUE line"),
        ] {
            let error = parse_words(words).err().unwrap();
            assert!(error.contains(message), "{words:?}: {error}");
        }
    }
}
