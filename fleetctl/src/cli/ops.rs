//! The arguments of the commands fleet adds to the original's: cordon,
//! uncordon, drain, plan and why (they talk to the `/fleet/x1/` API).

use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct CordonArgs {
    /// Why (stored with the cordon and logged)
    #[arg(long, default_value = "")]
    pub reason: String,
    /// The machine: its ID or a unique prefix of it
    #[arg(value_name = "MACHINE")]
    pub machine: String,
}

#[derive(Debug, Args)]
pub struct UncordonArgs {
    /// The machine: its ID or a unique prefix of it
    #[arg(value_name = "MACHINE")]
    pub machine: String,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Why (stored with the drain and logged)
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Start the drain and return without waiting for it
    #[arg(long = "no-block")]
    pub no_block: bool,
    /// Give up waiting after this long (e.g. 90s, 5m, 1h; default: wait as long as it takes)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The machine: its ID or a unique prefix of it
    #[arg(value_name = "MACHINE")]
    pub machine: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Unit files (or instances of templates) to plan
    #[arg(value_name = "UNIT", required = true)]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    #[arg(value_name = "UNIT")]
    pub unit: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["machines", "metadata", "all"])))]
pub struct ExecArgs {
    /// The machines: IDs or unique prefixes, separated by commas
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub machines: Vec<String>,
    /// The machines whose metadata has KEY=VALUE (repeat: all must match)
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Every machine
    #[arg(long)]
    pub all: bool,
    /// How many machines run the command at once
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Port of sshd on the machines
    #[arg(long = "ssh-port", value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// The command and its arguments (after `--`)
    #[arg(value_name = "COMMAND", required = true, last = true)]
    pub command: Vec<String>,
}

/// `90`, `90s`, `5m`, `1h`, `250ms`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {value:?}: expected e.g. 90s, 5m, 1h or 250ms");
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(number),
        "ms" => Duration::from_millis(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 m").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
    }
}
