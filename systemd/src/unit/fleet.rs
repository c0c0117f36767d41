//! The `[X-Fleet]` section: requirements of one unit
//! (Documentation/compatibility.md, "[X-Fleet] options").
//!
//! Values of `[X-Fleet]` options go through the original's multi-value
//! parsing (`"a=b" "c=d"` is two values) and, when the unit has a name,
//! specifier substitution (`%n %N %p %i`). Deprecated aliases are merged in
//! the original's order. Nothing here knows about machines beyond their id
//! and metadata: placement decisions belong to the engine.

use std::collections::{BTreeMap, BTreeSet};

use crate::unit::{UnitFile, UnitName, glob_match};

/// The section fleet reads its scheduling options from.
pub const X_FLEET: &str = "X-Fleet";

const MACHINE_ID: &str = "MachineID";
const X_CONDITION_MACHINE_ID: &str = "X-ConditionMachineID";
const X_CONDITION_MACHINE_BOOT_ID: &str = "X-ConditionMachineBootID";
const MACHINE_OF: &str = "MachineOf";
const X_CONDITION_MACHINE_OF: &str = "X-ConditionMachineOf";
const MACHINE_METADATA: &str = "MachineMetadata";
const X_CONDITION_MACHINE_METADATA: &str = "X-ConditionMachineMetadata";
const CONFLICTS: &str = "Conflicts";
const X_CONFLICTS: &str = "X-Conflicts";
const GLOBAL: &str = "Global";
const REPLACES: &str = "Replaces";
/// What the unit's copy on a machine cut off from etcd does (fleet's own
/// option; the original had none).
pub const ON_PARTITION: &str = "OnPartition";
const RETRIES: &str = "Retries";

/// The most `Retries=` accepts: a bound, so that a typo cannot make a failing
/// unit run for ever.
pub const MAX_RETRIES: u32 = 100;

/// Every `[X-Fleet]` key the original accepts (`validRequirements`).
const KNOWN_KEYS: &[&str] = &[
    MACHINE_ID,
    X_CONDITION_MACHINE_ID,
    X_CONDITION_MACHINE_BOOT_ID,
    X_CONDITION_MACHINE_OF,
    MACHINE_OF,
    X_CONFLICTS,
    CONFLICTS,
    X_CONDITION_MACHINE_METADATA,
    MACHINE_METADATA,
    GLOBAL,
    REPLACES,
    ON_PARTITION,
    // How often a failed run-to-completion unit is run again.
    RETRIES,
    // Declared health checks, run by the agent (rolling updates wait for them).
    "HealthCheckExec",
    "HealthCheckHTTP",
    "HealthCheckInterval",
    "HealthCheckTimeout",
];

/// Length of a machine's short id (`MachineState.ShortID`).
const SHORT_ID_LEN: usize = 8;

/// The scheduling requirements of one named unit, specifiers (`%n %N %p %i`)
/// resolved, aliases merged. Built once per unit and reused by the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID` (first value): a full machine id or its 8-character short form.
    pub machine_id: Option<String>,
    /// `MachineOf`: units that must run on the same machine (exact names).
    pub machine_of: Vec<String>,
    /// `MachineMetadata`: key -> allowed values (AND across keys, OR within one).
    pub machine_metadata: BTreeMap<String, BTreeSet<String>>,
    /// `Conflicts`: Go `path.Match` globs, one per whitespace-separated item.
    pub conflicts: Vec<String>,
    /// `Global` (last value, truthy as the original parses booleans).
    pub global: bool,
    /// `Replaces`: globs of units this one displaces.
    pub replaces: Vec<String>,
    /// `OnPartition` (last value): whether a machine that lost etcd stops
    /// this unit before the engine may start it elsewhere.
    pub on_partition: OnPartition,
    /// `Retries` (last value, default 0): how many times a run-to-completion
    /// unit whose run failed is run again, on another machine when one fits.
    pub retries: u32,
    /// The unit runs once and exits (`Type=oneshot` without
    /// `RemainAfterExit=yes`): see [`runs_to_completion`].
    pub runs_to_completion: bool,
}

/// `[X-Fleet] OnPartition=`: what a copy of the unit does on a machine that
/// cannot reach etcd for so long that the engine may move the unit away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnPartition {
    /// `stop` (the default): the machine stops the unit in time, so it never
    /// runs twice (uniqueness over availability).
    #[default]
    Stop,
    /// `keep-running`: the unit keeps running; it may run twice for as long
    /// as the partition lasts (availability over uniqueness).
    KeepRunning,
}

impl OnPartition {
    /// Parses a value of the option; `None` for anything else.
    pub fn parse(value: &str) -> Option<OnPartition> {
        match value {
            "stop" => Some(OnPartition::Stop),
            "keep-running" => Some(OnPartition::KeepRunning),
            _ => None,
        }
    }
}

/// The original's `parseMultivalueLine`: a value that starts and
/// ends with `"` is split on spaces outside quotes, quotes dropped, with no
/// escapes; any other value is the only value.
pub fn parse_multivalue_line(line: &str) -> Vec<String> {
    if !(line.starts_with('"') && line.ends_with('"')) {
        return vec![line.to_owned()];
    }
    let mut values = Vec::new();
    let mut value = Vec::new();
    let mut in_quotes = false;
    for &byte in line.as_bytes() {
        match byte {
            b'"' => in_quotes = !in_quotes,
            b' ' if !in_quotes => values.push(std::mem::take(&mut value)),
            _ => value.push(byte),
        }
    }
    values.push(value);
    // Splitting only at ASCII bytes keeps every piece valid UTF-8.
    values
        .into_iter()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect()
}

/// The original's `isTruthyValue`: `true yes 1 on t`, any case.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.to_lowercase().as_str(),
        "true" | "yes" | "1" | "on" | "t"
    )
}

/// The original's `unitPrintf`: plain, sequential replacement, no `%%`.
fn substitute_specifiers(value: &str, name: &UnitName) -> String {
    value
        .replace("%n", name.as_str())
        .replace("%N", name.without_suffix())
        .replace("%p", name.prefix())
        .replace("%i", name.instance())
}

/// `[X-Fleet]` values per key, multi-value parsed and (with a name)
/// specifiers substituted (the original's `Job.requirements`).
struct RawRequirements {
    values: BTreeMap<String, Vec<String>>,
}

impl RawRequirements {
    fn of(unit: &UnitFile, name: Option<&UnitName>) -> RawRequirements {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for option in unit.options().iter().filter(|o| o.section == X_FLEET) {
            let parsed = parse_multivalue_line(&option.value)
                .into_iter()
                .map(|value| match name {
                    Some(name) => substitute_specifiers(&value, name),
                    None => value,
                });
            values
                .entry(option.name.clone())
                .or_default()
                .extend(parsed);
        }
        RawRequirements { values }
    }

    fn get(&self, key: &str) -> &[String] {
        self.values.get(key).map_or(&[], Vec::as_slice)
    }

    /// Values of the deprecated key, then of the modern one.
    fn merged(&self, deprecated: &str, modern: &str) -> Vec<String> {
        self.get(deprecated)
            .iter()
            .chain(self.get(modern))
            .cloned()
            .collect()
    }

    fn requirements(&self) -> Requirements {
        let machine_id = [
            MACHINE_ID,
            X_CONDITION_MACHINE_ID,
            X_CONDITION_MACHINE_BOOT_ID,
        ]
        .iter()
        .find_map(|key| self.get(key).first().cloned());
        let mut machine_metadata: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for pair in self.merged(X_CONDITION_MACHINE_METADATA, MACHINE_METADATA) {
            // Exactly one `=`, both sides non-empty; anything else is ignored.
            let parts: Vec<&str> = pair.split('=').collect();
            if let [key, value] = parts[..]
                && !key.is_empty()
                && !value.is_empty()
            {
                machine_metadata
                    .entry(key.to_owned())
                    .or_default()
                    .insert(value.to_owned());
            }
        }
        let conflicts = self
            .merged(X_CONFLICTS, CONFLICTS)
            .iter()
            .flat_map(|value| value.split_whitespace())
            .map(str::to_owned)
            .collect();
        Requirements {
            machine_id,
            machine_of: self.merged(X_CONDITION_MACHINE_OF, MACHINE_OF),
            machine_metadata,
            conflicts,
            global: self
                .get(GLOBAL)
                .last()
                .is_some_and(|value| is_truthy(value)),
            replaces: self.get(REPLACES).to_vec(),
            // An invalid value (refused by validation; stored by someone
            // else) keeps the safe default.
            on_partition: self
                .get(ON_PARTITION)
                .last()
                .and_then(|value| OnPartition::parse(value))
                .unwrap_or_default(),
            retries: self
                .get(RETRIES)
                .last()
                .and_then(|value| parse_retries(value).ok())
                .unwrap_or(0),
            runs_to_completion: false,
        }
    }
}

/// A `Retries=` value: a whole number from 0 to [`MAX_RETRIES`].
fn parse_retries(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(retries) if retries <= MAX_RETRIES => Ok(retries),
        _ => Err(format!(
            "invalid Retries value {value:?}: expected a whole number from 0 to {MAX_RETRIES}"
        )),
    }
}

/// Whether `unit` runs to completion: a service with `Type=oneshot` and
/// without `RemainAfterExit=yes` (the last value of each wins, as in
/// systemd). Such a unit is started once; when its run ends, it stays
/// ended: it is not started again by fleet, and it is not moved when its
/// machine is lost afterwards. With `RemainAfterExit=yes` systemd keeps it
/// `active` after the run, so fleet treats it as any other unit.
pub fn runs_to_completion(unit: &UnitFile) -> bool {
    let last = |name| unit.values("Service", name).last().map(str::trim);
    last("Type") == Some("oneshot") && !last("RemainAfterExit").is_some_and(is_systemd_true)
}

/// systemd's boolean words for true (`parse_boolean`): `1 yes y true t on`.
fn is_systemd_true(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "yes" | "y" | "true" | "t" | "on"
    )
}

impl Requirements {
    /// The `[X-Fleet]` requirements of `unit` named `name`.
    pub fn of(unit: &UnitFile, name: &UnitName) -> Requirements {
        let mut requirements = RawRequirements::of(unit, Some(name)).requirements();
        requirements.runs_to_completion = runs_to_completion(unit);
        requirements
    }

    /// The requirements without specifier substitution, as the original
    /// sees a unit that has no (valid) name, e.g. during validation.
    pub fn of_unnamed(unit: &UnitFile) -> Requirements {
        let mut requirements = RawRequirements::of(unit, None).requirements();
        requirements.runs_to_completion = runs_to_completion(unit);
        requirements
    }

    /// Whether a machine with this full id satisfies `MachineID` (full or
    /// short). True when the unit has no `MachineID`.
    // Quirk of the original, kept: the 8-character short id is accepted too.
    pub fn machine_id_matches(&self, machine_id: &str) -> bool {
        let Some(required) = &self.machine_id else {
            return true;
        };
        let short_id = machine_id.get(..SHORT_ID_LEN).unwrap_or(machine_id);
        required == machine_id || required == short_id
    }

    /// Whether a machine with this merged metadata satisfies `MachineMetadata`:
    /// for every key, the machine has it with one of the allowed values.
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.machine_metadata.iter().all(|(key, allowed)| {
            metadata
                .get(key)
                .is_some_and(|value| allowed.contains(value))
        })
    }

    /// Symmetric conflict test between this unit (`name`) and another unit.
    /// A unit never conflicts with itself.
    pub fn conflicts_with(&self, name: &str, other_name: &str, other: &Requirements) -> bool {
        if name == other_name {
            return false;
        }
        self.conflicts
            .iter()
            .any(|glob| glob_match(glob, other_name))
            || other.conflicts.iter().any(|glob| glob_match(glob, name))
    }

    /// Whether one of this unit's `Replaces` globs matches `other_name`.
    pub fn replaces(&self, other_name: &str) -> bool {
        self.replaces
            .iter()
            .any(|glob| glob_match(glob, other_name))
    }

    /// Whether the unit has any placement constraint besides `Global`.
    pub fn is_constrained(&self) -> bool {
        self.machine_id.is_some()
            || !self.machine_of.is_empty()
            || !self.machine_metadata.is_empty()
            || !self.conflicts.is_empty()
            || !self.replaces.is_empty()
    }
}

/// Distinct values in order of first appearance (the original used sets).
fn distinct(values: &[String]) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    values
        .iter()
        .filter(|value| seen.insert(value.as_str()))
        .collect()
}

/// How many (MachineOf value, Conflicts or Replaces pattern) pairs
/// [`validate_options`] matches at most; more is an error, not seconds of work.
pub const MAX_REQUIREMENT_PAIRS: usize = 100_000;

/// The original's `ValidateOptions`, on raw values without
/// specifier substitution. The error text is the original's message.
///
/// # Errors
/// The first problem found: a parse error of the re-parsed canonical text, a
/// peer that a conflict or replace glob matches, or a forbidden combination.
pub fn validate_options(unit: &UnitFile) -> Result<(), String> {
    // A sanity check through the parser, which e.g. rejects long lines.
    let stored = UnitFile::parse(&unit.serialize()).map_err(|error| error.to_string())?;
    check_reads_back(unit, &stored)?;

    let raw = RawRequirements::of(unit, None);
    if let Some(value) = raw
        .get(ON_PARTITION)
        .iter()
        .find(|value| OnPartition::parse(value).is_none())
    {
        return Err(format!(
            "invalid value {value:?} of {ON_PARTITION}: expected \"stop\" or \"keep-running\""
        ));
    }
    if let Some(retries) = raw.get(RETRIES).last() {
        parse_retries(retries)?;
    }
    let requirements = Requirements::of_unnamed(unit);
    let peers = distinct(&requirements.machine_of);
    let conflicts = distinct(&requirements.conflicts);
    let replaces = distinct(&requirements.replaces);
    // Every peer is matched against every pattern; bound that work, which a
    // 1.5 MiB request could otherwise make some 10^8 glob matches.
    let pairs = peers
        .len()
        .saturating_mul(conflicts.len().saturating_add(replaces.len()));
    if pairs > MAX_REQUIREMENT_PAIRS {
        return Err(format!(
            "too many [X-Fleet] requirements: {} MachineOf values against {} Conflicts and Replaces \
             patterns (at most {MAX_REQUIREMENT_PAIRS} pairs are checked)",
            peers.len(),
            conflicts.len() + replaces.len()
        ));
    }
    // The original walked sets in Go's random map order; we use file order so
    // that the message is deterministic.
    for peer in &peers {
        if let Some(conflict) = conflicts.iter().find(|conflict| glob_match(conflict, peer)) {
            return Err(format!(
                "unresolvable requirements: peer {peer:?} matches conflict {conflict:?}"
            ));
        }
        if let Some(replace) = replaces.iter().find(|replace| glob_match(replace, peer)) {
            return Err(format!(
                "unresolvable requirements: peer {peer:?} matches replace {replace:?}"
            ));
        }
    }

    let has_machine_id = requirements.machine_id.is_some();
    let has_peers = !peers.is_empty();
    let has_conflicts = !conflicts.is_empty();
    let has_replaces = !replaces.is_empty();
    let global = requirements.global;
    let message = if has_machine_id && has_peers {
        "MachineID cannot be used with Peers"
    } else if has_machine_id && has_conflicts {
        "MachineID cannot be used with Conflicts"
    } else if has_machine_id && global {
        "MachineID cannot be used with Global"
    } else if has_machine_id && has_replaces {
        "MachineID cannot be used with Replaces"
    } else if global && has_peers {
        "Global cannot be used with Peers"
    } else if global && has_replaces {
        "Global cannot be used with Replaces"
    } else if has_conflicts && has_replaces {
        "Conflicts cannot be used with Replaces"
    } else {
        return Ok(());
    };
    Err(message.to_owned())
}

/// Content is stored as its canonical text and identified by that text's
/// hash, so it must read back as the same options: otherwise every reader
/// (the agent's unit file, the API) would see a unit whose hash is not its
/// key. A value that ends in a backslash (a continuation at the end of the
/// file) or holds a line break that is not a continuation does not.
fn check_reads_back(unit: &UnitFile, stored: &UnitFile) -> Result<(), String> {
    let canonical = unit.canonical_options();
    if stored.options() == canonical.as_slice() {
        return Ok(());
    }
    let differing = canonical
        .iter()
        .zip(stored.options())
        .find(|(given, read)| given != read)
        .map(|(given, _)| given)
        .or_else(|| canonical.get(stored.options().len()))
        .or_else(|| canonical.last());
    Err(match differing {
        Some(option) => format!(
            "option {} in [{}] cannot be stored: it would read back differently (a name may \
             not hold `=` or a line break, a value may not end in a backslash nor hold a line \
             break other than a continuation)",
            option.name, option.section
        ),
        None => "unit cannot be stored: its text reads back as other options".to_owned(),
    })
}

/// Keys in `[X-Fleet]` that fleet does not know (fleetctl warns about them),
/// each once, in file order.
pub fn unrecognized_requirements(unit: &UnitFile) -> Vec<String> {
    let mut unknown: Vec<String> = Vec::new();
    for option in unit.options().iter().filter(|o| o.section == X_FLEET) {
        if !KNOWN_KEYS.contains(&option.name.as_str()) && !unknown.contains(&option.name) {
            unknown.push(option.name.clone());
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::UnitOption;

    /// Found by the `unit-parser` fuzz target: a continuation at the end of
    /// the file leaves a value ending in a backslash, whose stored text reads
    /// back as another unit (another hash).
    #[test]
    fn content_that_would_not_read_back_is_refused() {
        let file = UnitFile::parse("[Unit]\nDescription=a \\").unwrap();
        let error = validate_options(&file).unwrap_err();
        assert!(
            error.contains("option Description in [Unit] cannot be stored"),
            "{error}"
        );
        let newline =
            UnitFile::from_options(vec![UnitOption::new("Service", "ExecStart", "/bin/a\nB=1")]);
        let error = validate_options(&newline).unwrap_err();
        assert!(error.contains("option ExecStart in [Service]"), "{error}");
        let continued = UnitFile::parse("[Unit]\nDescription=a \\\n b\n").unwrap();
        assert_eq!(validate_options(&continued), Ok(()));
    }

    /// A unit with these `[X-Fleet]` options (name, raw value).
    fn x_fleet(options: &[(&str, &str)]) -> UnitFile {
        UnitFile::from_options(
            std::iter::once(UnitOption::new("Service", "ExecStart", "/bin/true"))
                .chain(
                    options
                        .iter()
                        .map(|(name, value)| UnitOption::new(X_FLEET, *name, *value)),
                )
                .collect(),
        )
    }

    fn requirements(name: &str, options: &[(&str, &str)]) -> Requirements {
        let unit_name: UnitName = name
            .parse()
            .unwrap_or_else(|error| panic!("{name:?}: {error}"));
        Requirements::of(&x_fleet(options), &unit_name)
    }

    fn check_validation(options: &[(&str, &str)], expected: Result<(), &str>) {
        assert_eq!(
            validate_options(&x_fleet(options)),
            expected.map_err(str::to_owned),
            "validating {options:?}"
        );
    }

    fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn multivalue_lines() {
        for (line, expected) in [
            ("\"a=b\" \"c=d\"", vec!["a=b", "c=d"]),
            ("a=b c=d", vec!["a=b c=d"]),
            ("\"bar", vec!["\"bar"]),
            ("\"foo\\\"bar\"", vec!["foo\\bar"]),
            ("\"a b\" \"c\"", vec!["a b", "c"]),
            ("\"a\" \"b\" \"", vec!["a", "b", ""]),
            ("\"\"", vec![""]),
            ("\"", vec![""]),
            ("", vec![""]),
        ] {
            assert_eq!(parse_multivalue_line(line), expected, "splitting {line:?}");
        }
    }

    #[test]
    fn on_partition_is_stop_unless_keep_running_and_validated() {
        assert_eq!(
            requirements("a.service", &[]).on_partition,
            OnPartition::Stop
        );
        let keep = [("OnPartition", "keep-running")];
        assert_eq!(
            requirements("a.service", &keep).on_partition,
            OnPartition::KeepRunning
        );
        let last_wins = [("OnPartition", "keep-running"), ("OnPartition", "stop")];
        assert_eq!(
            requirements("a.service", &last_wins).on_partition,
            OnPartition::Stop
        );
        check_validation(&keep, Ok(()));
        check_validation(&[("OnPartition", "stop")], Ok(()));
        check_validation(
            &[("OnPartition", "yes")],
            Err("invalid value \"yes\" of OnPartition: expected \"stop\" or \"keep-running\""),
        );
        // A stored invalid value (validation refuses it) keeps the default.
        assert_eq!(
            requirements("a.service", &[("OnPartition", "Keep-Running")]).on_partition,
            OnPartition::Stop
        );
        assert!(unrecognized_requirements(&x_fleet(&keep)).is_empty());
    }

    #[test]
    fn truthy_values() {
        for value in ["true", "yes", "1", "on", "t", "TRUE", "Yes", "ON", "T"] {
            assert!(is_truthy(value), "{value:?}");
        }
        for value in ["false", "no", "0", "off", "f", "", "y", "2", " true"] {
            assert!(!is_truthy(value), "{value:?}");
        }
        assert!(requirements("a.service", &[("Global", "false"), ("Global", "yes")]).global);
        assert!(!requirements("a.service", &[("Global", "true"), ("Global", "no")]).global);
        assert!(!requirements("a.service", &[]).global);
    }

    #[test]
    fn specifiers() {
        // `foo@bar.waldo` is not a valid name, so use a valid type.
        let resolved = requirements("foo@bar.service", &[("MachineOf", "%n %N %p %i %% %x")]);
        assert_eq!(
            resolved.machine_of,
            vec!["foo@bar.service foo@bar foo bar %% %x"]
        );
        let resolved = requirements(
            "foo@bar.service",
            &[("Conflicts", "%p@*.service"), ("Replaces", "%N.socket")],
        );
        assert_eq!(resolved.conflicts, vec!["foo@*.service"]);
        assert_eq!(resolved.replaces, vec!["foo@bar.socket"]);
        let resolved = requirements("plain.service", &[("MachineOf", "%p-%i.service")]);
        assert_eq!(resolved.machine_of, vec!["plain-.service"]);
        // Without a name nothing is substituted.
        assert_eq!(
            Requirements::of_unnamed(&x_fleet(&[("MachineOf", "%n")])).machine_of,
            vec!["%n"]
        );
    }

    #[test]
    fn aliases_and_multi_values() {
        let resolved = requirements(
            "a.service",
            &[
                ("MachineOf", "m1.service"),
                ("X-ConditionMachineOf", "x1.service"),
                ("MachineOf", "\"m2.service\" \"m3.service\""),
                ("Conflicts", "c1.* c2.service"),
                ("X-Conflicts", "xc.service"),
                ("MachineMetadata", "\"region=us\" \"disk=ssd\""),
                ("MachineMetadata", "region=eu"),
                ("X-ConditionMachineMetadata", "role=web"),
                ("MachineMetadata", "foo="),
                ("MachineMetadata", "=x"),
                ("MachineMetadata", "a=b=c"),
                ("Replaces", "r1.service r2.service"),
                ("Replaces", "\"r3.service\" \"r4.service\""),
            ],
        );
        assert_eq!(
            resolved.machine_of,
            vec!["x1.service", "m1.service", "m2.service", "m3.service"]
        );
        assert_eq!(resolved.conflicts, vec!["xc.service", "c1.*", "c2.service"]);
        assert_eq!(
            resolved.replaces,
            vec!["r1.service r2.service", "r3.service", "r4.service"]
        );
        let expected_metadata: BTreeMap<String, BTreeSet<String>> = [
            ("disk", vec!["ssd"]),
            ("region", vec!["eu", "us"]),
            ("role", vec!["web"]),
        ]
        .into_iter()
        .map(|(k, vs)| (k.to_owned(), vs.into_iter().map(str::to_owned).collect()))
        .collect();
        assert_eq!(resolved.machine_metadata, expected_metadata);
        assert_eq!(resolved.machine_id, None);
        assert!(!resolved.global);
    }

    #[test]
    fn machine_id_lookup_order() {
        for (options, expected) in [
            (
                vec![
                    ("X-ConditionMachineBootID", "boot"),
                    ("X-ConditionMachineID", "old"),
                    ("MachineID", "new"),
                ],
                "new",
            ),
            (
                vec![
                    ("X-ConditionMachineBootID", "boot"),
                    ("X-ConditionMachineID", "old"),
                ],
                "old",
            ),
            (vec![("X-ConditionMachineBootID", "boot")], "boot"),
            (
                vec![("MachineID", "first"), ("MachineID", "second")],
                "first",
            ),
            (vec![("MachineID", "\"a\" \"b\"")], "a"),
        ] {
            assert_eq!(
                requirements("a.service", &options).machine_id.as_deref(),
                Some(expected),
                "{options:?}"
            );
        }
    }

    #[test]
    fn machine_id_matching() {
        let full = "0123456789abcdef0123456789abcdef";
        let by_full = requirements("a.service", &[("MachineID", full)]);
        let by_short = requirements("a.service", &[("MachineID", "01234567")]);
        let by_other = requirements("a.service", &[("MachineID", "0123456")]);
        assert!(by_full.machine_id_matches(full));
        assert!(by_short.machine_id_matches(full));
        assert!(!by_other.machine_id_matches(full));
        assert!(!by_full.machine_id_matches("fedcba9876543210fedcba9876543210"));
        assert!(requirements("a.service", &[]).machine_id_matches(full));
        assert!(by_short.machine_id_matches("01234567"));
    }

    #[test]
    fn metadata_matching() {
        let resolved = requirements(
            "a.service",
            &[(
                "MachineMetadata",
                "\"region=us\" \"region=eu\" \"disk=ssd\"",
            )],
        );
        assert!(resolved.metadata_matches(&metadata(&[("region", "us"), ("disk", "ssd")])));
        assert!(resolved.metadata_matches(&metadata(&[
            ("region", "eu"),
            ("disk", "ssd"),
            ("x", "y")
        ])));
        assert!(!resolved.metadata_matches(&metadata(&[("region", "asia"), ("disk", "ssd")])));
        assert!(!resolved.metadata_matches(&metadata(&[("region", "us")])));
        assert!(!resolved.metadata_matches(&metadata(&[])));
        assert!(requirements("a.service", &[]).metadata_matches(&metadata(&[])));
    }

    #[test]
    fn conflicts_are_symmetric() {
        let a = requirements("a.service", &[("Conflicts", "b*")]);
        let b = requirements("b.service", &[]);
        let c = requirements("c.service", &[]);
        assert!(a.conflicts_with("a.service", "b.service", &b));
        assert!(b.conflicts_with("b.service", "a.service", &a));
        assert!(!a.conflicts_with("a.service", "c.service", &c));
        assert!(!c.conflicts_with("c.service", "a.service", &a));
        // Never with itself, even when its own glob matches its name.
        let selfish = requirements("s@1.service", &[("Conflicts", "s@*.service")]);
        assert!(!selfish.conflicts_with("s@1.service", "s@1.service", &selfish));
        let other = requirements("s@2.service", &[("Conflicts", "s@*.service")]);
        assert!(selfish.conflicts_with("s@1.service", "s@2.service", &other));
        // A malformed glob never matches.
        let malformed = requirements("m.service", &[("Conflicts", "b[")]);
        assert!(!malformed.conflicts_with("m.service", "b.service", &b));
    }

    #[test]
    fn replaces_globs() {
        let resolved = requirements("new.service", &[("Replaces", "old*.service")]);
        assert!(resolved.replaces("old-1.service"));
        assert!(!resolved.replaces("new.service"));
        assert!(!requirements("a.service", &[]).replaces("b.service"));
    }

    #[test]
    fn option_validation() {
        check_validation(&[], Ok(()));
        assert_eq!(validate_options(&UnitFile::default()), Ok(()));
        check_validation(
            &[("MachineOf", "b.service"), ("Conflicts", "c.service")],
            Ok(()),
        );
        check_validation(
            &[("MachineOf", "b.service"), ("Conflicts", "b.*")],
            Err("unresolvable requirements: peer \"b.service\" matches conflict \"b.*\""),
        );
        check_validation(
            &[
                ("X-ConditionMachineOf", "b.service"),
                ("X-Conflicts", "a.service b.service"),
            ],
            Err("unresolvable requirements: peer \"b.service\" matches conflict \"b.service\""),
        );
        check_validation(
            &[("MachineOf", "b.service"), ("Replaces", "b*")],
            Err("unresolvable requirements: peer \"b.service\" matches replace \"b*\""),
        );
        // Pair rules, in the original's order.
        check_validation(
            &[
                ("MachineID", "m"),
                ("MachineOf", "b.service"),
                ("Global", "true"),
            ],
            Err("MachineID cannot be used with Peers"),
        );
        check_validation(
            &[
                ("X-ConditionMachineID", "m"),
                ("Conflicts", "c"),
                ("Global", "true"),
            ],
            Err("MachineID cannot be used with Conflicts"),
        );
        check_validation(
            &[
                ("X-ConditionMachineBootID", "m"),
                ("Global", "yes"),
                ("Replaces", "r"),
            ],
            Err("MachineID cannot be used with Global"),
        );
        check_validation(
            &[("MachineID", "m"), ("Replaces", "r")],
            Err("MachineID cannot be used with Replaces"),
        );
        check_validation(
            &[
                ("Global", "true"),
                ("MachineOf", "b.service"),
                ("Replaces", "r"),
            ],
            Err("Global cannot be used with Peers"),
        );
        check_validation(
            &[("Global", "true"), ("Replaces", "r")],
            Err("Global cannot be used with Replaces"),
        );
        check_validation(
            &[("Conflicts", "c"), ("Replaces", "r")],
            Err("Conflicts cannot be used with Replaces"),
        );
        // Allowed combinations.
        check_validation(
            &[
                ("Global", "true"),
                ("MachineMetadata", "a=b"),
                ("Conflicts", "c"),
            ],
            Ok(()),
        );
        check_validation(&[("Global", "false"), ("MachineID", "m")], Ok(()));
        check_validation(&[("MachineID", "m"), ("MachineMetadata", "a=b")], Ok(()));
        // Circular replacement is not the validator's business.
        check_validation(&[("Replaces", "b.service")], Ok(()));
        // No specifier substitution: `%p` does not match the peer.
        check_validation(&[("MachineOf", "x.service"), ("Conflicts", "%p*")], Ok(()));
        // An empty Conflicts value lists nothing.
        check_validation(&[("MachineID", "m"), ("Conflicts", "")], Ok(()));
    }

    #[test]
    fn validation_reparses_the_canonical_text() {
        let long = x_fleet(&[("MachineMetadata", &"x".repeat(2100))]);
        assert_eq!(
            validate_options(&long),
            Err("line too long (max 2048 bytes)".to_owned())
        );
        // A name with `=` serializes to text that re-parses as other
        // options (the original stored it; its hash then named other
        // content): refused, naming the option.
        assert!(
            validate_options(&UnitFile::from_options(vec![UnitOption::new(
                "Unit", "A=B", "c"
            )]))
            .is_err_and(|error| error.starts_with("option A=B in [Unit] cannot be stored"))
        );
    }

    #[test]
    fn unrecognized_keys() {
        let unit = x_fleet(&[
            ("MachineID", "m"),
            ("X-ConditionMachineMetadata", "a=b"),
            ("Foo", "1"),
            ("machineid", "m"),
            ("Foo", "2"),
            ("X-ConditionMachineBootID", "b"),
        ]);
        assert_eq!(unrecognized_requirements(&unit), vec!["Foo", "machineid"]);
        assert!(unrecognized_requirements(&x_fleet(&[])).is_empty());
    }

    #[test]
    fn example_units() {
        let global = UnitFile::parse(include_str!("../../../examples/global.service")).unwrap();
        assert!(Requirements::of(&global, &"global.service".parse().unwrap()).global);
        assert_eq!(validate_options(&global), Ok(()));
        let template = UnitFile::parse(include_str!("../../../examples/hello@.service")).unwrap();
        let name: UnitName = "hello@.service".parse().unwrap();
        assert!(name.is_template());
        assert_eq!(Requirements::of(&template, &name), Requirements::default());
    }

    #[test]
    fn run_to_completion_and_retries() {
        let unit = |text: &str| UnitFile::parse(text).unwrap();
        let name: UnitName = "job.service".parse().unwrap();
        let oneshot = unit("[Service]\nType=oneshot\nExecStart=/bin/true\n[X-Fleet]\nRetries=2\n");
        let requirements = Requirements::of(&oneshot, &name);
        assert!(requirements.runs_to_completion);
        assert_eq!(requirements.retries, 2);
        assert_eq!(validate_options(&oneshot), Ok(()));
        // RemainAfterExit keeps it active after its run: an ordinary unit.
        let remains = unit("[Service]\nType=oneshot\nRemainAfterExit=yes\n");
        assert!(!runs_to_completion(&remains));
        let remains_off =
            unit("[Service]\nType=oneshot\nRemainAfterExit=yes\nRemainAfterExit=no\n");
        assert!(runs_to_completion(&remains_off));
        assert!(!runs_to_completion(&unit("[Service]\nType=simple\n")));
        assert!(!runs_to_completion(&unit(
            "[Service]\nType=oneshot\nType=simple\n"
        )));
        // Retries defaults to 0; a bad value is refused by validation.
        assert_eq!(Requirements::of(&remains, &name).retries, 0);
        for bad in ["-1", "x", "101", ""] {
            let file = unit(&format!("[X-Fleet]\nRetries={bad}\n"));
            assert!(
                validate_options(&file).is_err_and(|error| error.contains("invalid Retries")),
                "{bad:?}"
            );
        }
        assert!(unrecognized_requirements(&oneshot).is_empty());
    }
}
