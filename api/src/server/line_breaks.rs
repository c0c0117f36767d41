//! Line breaks in unit options: the API's guard against option smuggling.
//!
//! A unit is stored as its text (`Name=value` lines). A value with a raw
//! line break would become more lines when stored, e.g. a
//! `Description=x\n[X-Fleet]\nMachineID=…` option that validation saw as one
//! harmless value and every agent later reads as placement rules. So a PUT
//! is refused with a 400 naming the option unless every option reads back
//! from its own text as exactly itself. What passes: values without line
//! breaks, and a value continued over lines with a trailing `\` (what a
//! unit file's continuation lines give, and what fleetctl sends for them).

use fleet_systemd::unit::{UnitFile, UnitOption};

use crate::entities;

/// The first option that does not survive being written out and read back,
/// as the 400's message.
pub fn check(options: &[entities::UnitOption]) -> Result<(), String> {
    for option in options {
        let has_break = |text: &str| text.contains(['\n', '\r']);
        if !(has_break(&option.section) || has_break(&option.name) || has_break(&option.value)) {
            continue;
        }
        let one = UnitOption {
            section: option.section.clone(),
            name: option.name.clone(),
            value: option.value.clone(),
        };
        let written = UnitFile::from_options(vec![one.clone()]).serialize();
        let reads_back = UnitFile::parse(&written)
            .map(|file| file.options() == [one])
            .unwrap_or(false);
        if !reads_back {
            return Err(format!(
                "invalid unit option [{}] {}: a line break in an option is allowed only as a line continuation (a \\ at the end of the line); it would otherwise start a new option or section",
                option.section.escape_debug(),
                option.name.escape_debug()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(section: &str, name: &str, value: &str) -> entities::UnitOption {
        entities::UnitOption {
            section: section.to_owned(),
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn a_smuggled_section_is_refused_naming_the_option() {
        let smuggled = option("Unit", "Description", "x\n[X-Fleet]\nMachineID=abc");
        let message =
            check(&[option("Service", "ExecStart", "/bin/true"), smuggled]).expect_err("smuggling");
        assert!(message.contains("[Unit] Description"), "{message}");
        for bad in [
            option("Service", "ExecStart", "a\nB=2"),
            option("Service", "ExecStart", "a\r\nB=2"),
            // A blank line ends a continuation: the next line is an option.
            option("Service", "ExecStart", "a \\\n\nB=2"),
            option("Service", "Exec\nStart", "a"),
            option("Service\n[X-Fleet]", "Global", "true"),
        ] {
            assert!(check(std::slice::from_ref(&bad)).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn plain_values_and_continuations_pass() {
        assert_eq!(
            check(&[
                option("Service", "ExecStart", "/bin/sh -c 'echo hi'"),
                option("Service", "ExecStart", "/bin/sh -c \\\n  'echo hi'"),
            ]),
            Ok(())
        );
    }
}
