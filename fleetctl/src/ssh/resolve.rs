//! Which machine `fleetctl ssh` talks to, and the address to dial.
//!
//! Pure functions over the machine list and the looked-up unit, so every
//! branch of the original's resolution is tested without a cluster. The
//! command fetches the inputs; nothing here does I/O.

use fleet_api::entities::Machine;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// `--machine ID`: a machine ID prefix.
    Machine(&'a str),
    /// `--unit NAME`: the machine the unit is scheduled on.
    Unit(&'a str),
    /// The first argument, tried as both.
    Either(&'a str),
}

/// The unit a lookup found in the registry, as far as resolution cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundUnit {
    /// `Global=true` units run everywhere; `ssh` does not pick one.
    pub global: bool,
    /// The machine the unit is scheduled on; empty if it is not.
    pub machine_id: String,
}

/// The machine to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub machine_id: String,
    /// The machine's public IP; resolution never returns an empty one.
    pub public_ip: String,
}

/// Why no machine could be chosen. The texts are the original's, except
/// where noted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("Both machine and unit flags provided, please specify only one")]
    BothFlags,
    #[error("one machine or unit must be provided")]
    NothingGiven,
    #[error("found more than one machine")]
    MoreThanOneMachine,
    #[error("machine does not exist")]
    MachineNotFound,
    #[error("unit does not exist")]
    UnitNotFound,
    #[error("global units unsupported")]
    GlobalUnit,
    /// The original names flags `-m`/`-u` that it does not have; we name the
    /// real ones.
    #[error(
        "ambiguous argument, both machine and unit found for `{0}`.\nPlease use flag `--machine` or `--unit` to refine the search"
    )]
    Ambiguous(String),
    #[error("could not find matching unit or machine")]
    NoMatch,
    /// The original printed "Could not determine address of machine.".
    #[error("could not determine the address of machine {0}")]
    NoAddress(String),
}

/// The original's `findAddressInMachineList`: the one machine whose ID
/// starts with `prefix`.
///
/// # Errors
/// [`ResolveError::MoreThanOneMachine`] or [`ResolveError::MachineNotFound`].
pub fn machine_by_prefix<'a>(
    machines: &'a [Machine],
    prefix: &str,
) -> Result<&'a Machine, ResolveError> {
    let mut matching = machines.iter().filter(|m| m.id.starts_with(prefix));
    let first = matching.next().ok_or(ResolveError::MachineNotFound)?;
    if matching.next().is_some() {
        return Err(ResolveError::MoreThanOneMachine);
    }
    Ok(first)
}

/// The original's `findAddressInRunningUnits`: the machine of a non-global,
/// scheduled unit. `Ok(None)` when the unit is not scheduled on a known
/// machine with an address (the original's "not found, no error").
///
/// # Errors
/// [`ResolveError::UnitNotFound`] or [`ResolveError::GlobalUnit`].
pub fn machine_of_unit<'a>(
    machines: &'a [Machine],
    unit: Option<&FoundUnit>,
) -> Result<Option<&'a Machine>, ResolveError> {
    let unit = unit.ok_or(ResolveError::UnitNotFound)?;
    if unit.global {
        return Err(ResolveError::GlobalUnit);
    }
    if unit.machine_id.is_empty() {
        return Ok(None);
    }
    Ok(machines
        .iter()
        .find(|m| m.id == unit.machine_id && !m.primary_ip.is_empty()))
}

/// Resolves the lookup to a machine with an address. `unit` is what the
/// registry returned for the unit name (after name mangling); it is ignored
/// for [`Lookup::Machine`].
///
/// Unlike the original, an ambiguous machine prefix that is not a unit says
/// "found more than one machine" instead of the generic "could not find
/// matching unit or machine".
///
/// # Errors
/// A [`ResolveError`] saying why no machine was chosen.
pub fn resolve(
    lookup: Lookup<'_>,
    machines: &[Machine],
    unit: Option<&FoundUnit>,
) -> Result<Target, ResolveError> {
    let machine = match lookup {
        Lookup::Machine(prefix) => machine_by_prefix(machines, prefix)?,
        Lookup::Unit(_) => machine_of_unit(machines, unit)?.ok_or(ResolveError::NoMatch)?,
        Lookup::Either(name) => {
            let by_machine = machine_by_prefix(machines, name);
            let by_unit = machine_of_unit(machines, unit);
            match (by_machine, by_unit) {
                (Ok(_), Ok(Some(_))) => return Err(ResolveError::Ambiguous(name.to_owned())),
                (Ok(machine), _) | (_, Ok(Some(machine))) => machine,
                (Err(ResolveError::MoreThanOneMachine), _) => {
                    return Err(ResolveError::MoreThanOneMachine);
                }
                _ => return Err(ResolveError::NoMatch),
            }
        }
    };
    if machine.primary_ip.is_empty() {
        return Err(ResolveError::NoAddress(machine.id.clone()));
    }
    Ok(Target {
        machine_id: machine.id.clone(),
        public_ip: machine.primary_ip.clone(),
    })
}

/// The address to dial (the original's `findSSHPort`): `--ssh-port` is
/// appended only when it is not 22 and the address has no port yet.
pub fn ssh_address(public_ip: &str, ssh_port: u16) -> String {
    if ssh_port != 22 && !public_ip.contains(':') {
        format!("{public_ip}:{ssh_port}")
    } else {
        public_ip.to_owned()
    }
}

/// The original's `pkg.TrimToDashes`: the arguments after the first `--`,
/// or all of them when there is none.
pub fn trim_to_dashes(args: &[String]) -> &[String] {
    match args.iter().position(|arg| arg == "--") {
        Some(idx) => &args[idx + 1..],
        None => args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, ip: &str) -> Machine {
        Machine {
            id: id.to_owned(),
            primary_ip: ip.to_owned(),
            ..Machine::default()
        }
    }

    fn machines() -> Vec<Machine> {
        vec![
            machine("aaaa1111", "10.0.0.1"),
            machine("aaaa2222", "10.0.0.2"),
            machine("bbbb3333", "10.0.0.3"),
            machine("cccc4444", ""),
        ]
    }

    fn unit_on(machine_id: &str) -> FoundUnit {
        FoundUnit {
            global: false,
            machine_id: machine_id.to_owned(),
        }
    }

    fn check(lookup: Lookup<'_>, unit: Option<FoundUnit>, expected: Result<&str, ResolveError>) {
        let got = resolve(lookup, &machines(), unit.as_ref()).map(|t| t.public_ip);
        assert_eq!(got, expected.map(str::to_owned), "{lookup:?}");
    }

    #[test]
    fn machine_prefixes_must_be_unique() {
        check(Lookup::Machine("aaaa1"), None, Ok("10.0.0.1"));
        check(Lookup::Machine("bbbb3333"), None, Ok("10.0.0.3"));
        check(
            Lookup::Machine("aaaa"),
            None,
            Err(ResolveError::MoreThanOneMachine),
        );
        check(
            Lookup::Machine("zz"),
            None,
            Err(ResolveError::MachineNotFound),
        );
        check(
            Lookup::Machine("cccc"),
            None,
            Err(ResolveError::NoAddress("cccc4444".to_owned())),
        );
    }

    #[test]
    fn units_resolve_to_their_machine() {
        check(
            Lookup::Unit("web"),
            Some(unit_on("bbbb3333")),
            Ok("10.0.0.3"),
        );
        check(Lookup::Unit("web"), None, Err(ResolveError::UnitNotFound));
        check(
            Lookup::Unit("web"),
            Some(FoundUnit {
                global: true,
                machine_id: String::new(),
            }),
            Err(ResolveError::GlobalUnit),
        );
        // Not scheduled, or on a machine that is gone or has no address.
        check(
            Lookup::Unit("web"),
            Some(unit_on("")),
            Err(ResolveError::NoMatch),
        );
        check(
            Lookup::Unit("web"),
            Some(unit_on("gone")),
            Err(ResolveError::NoMatch),
        );
        check(
            Lookup::Unit("web"),
            Some(unit_on("cccc4444")),
            Err(ResolveError::NoMatch),
        );
    }

    #[test]
    fn a_bare_argument_is_tried_as_machine_and_unit() {
        check(Lookup::Either("bbbb"), None, Ok("10.0.0.3"));
        check(
            Lookup::Either("web"),
            Some(unit_on("aaaa2222")),
            Ok("10.0.0.2"),
        );
        check(
            Lookup::Either("bbbb"),
            Some(unit_on("aaaa1111")),
            Err(ResolveError::Ambiguous("bbbb".to_owned())),
        );
        check(Lookup::Either("zz"), None, Err(ResolveError::NoMatch));
        check(
            Lookup::Either("aaaa"),
            None,
            Err(ResolveError::MoreThanOneMachine),
        );
        // An ambiguous prefix that is also a unit: the unit wins, like the original.
        check(
            Lookup::Either("aaaa"),
            Some(unit_on("bbbb3333")),
            Ok("10.0.0.3"),
        );
        // A global unit does not make a machine match ambiguous.
        check(
            Lookup::Either("bbbb"),
            Some(FoundUnit {
                global: true,
                machine_id: String::new(),
            }),
            Ok("10.0.0.3"),
        );
    }

    #[test]
    fn messages_are_the_originals() {
        assert_eq!(
            ResolveError::Ambiguous("web".to_owned()).to_string(),
            "ambiguous argument, both machine and unit found for `web`.\nPlease use flag `--machine` or `--unit` to refine the search"
        );
        assert_eq!(
            ResolveError::NoMatch.to_string(),
            "could not find matching unit or machine"
        );
        assert_eq!(
            ResolveError::MoreThanOneMachine.to_string(),
            "found more than one machine"
        );
    }

    #[test]
    fn ssh_port_is_appended_only_when_needed() {
        assert_eq!(ssh_address("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(ssh_address("10.0.0.1", 2222), "10.0.0.1:2222");
        assert_eq!(ssh_address("10.0.0.1:23", 2222), "10.0.0.1:23");
    }

    #[test]
    fn arguments_after_the_first_double_dash() {
        let args = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(trim_to_dashes(&args(&["a", "b"])), args(&["a", "b"]));
        assert_eq!(
            trim_to_dashes(&args(&["--", "a", "--", "b"])),
            args(&["a", "--", "b"])
        );
        assert_eq!(trim_to_dashes(&args(&["x", "--"])), args(&[]));
    }
}
