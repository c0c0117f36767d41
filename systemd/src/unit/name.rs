//! Unit names: validation (Documentation/compatibility.md, "Unit names") and template
//! decomposition.

use std::fmt;
use std::str::FromStr;

/// A unit name fleet accepts (`name[@instance].type`), checked once at the edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName(String);

/// Why a unit name is invalid; the messages are the original's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUnitName {
    #[error("unit name cannot be empty")]
    Empty,
    #[error("unit name exceeds maximum length (256)")]
    TooLong,
    #[error("unit name must contain \".\"")]
    NoDot,
    #[error("unit name cannot end in \".\"")]
    EndsInDot,
    #[error("invalid unit type: {0:?}")]
    InvalidType(String),
    #[error("invalid unit type for template: {0:?}")]
    InvalidTemplateType(String),
    #[error("invalid character '{0}' in unit name")]
    InvalidCharacter(char),
    #[error("unit name cannot start in \"@\"")]
    StartsWithAt,
}

/// Unit types the API accepts, as the original did.
const VALID_TYPES: &[&str] = &[
    "automount",
    "busname",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "snapshot",
    "socket",
    "swap",
    "target",
    "timer",
];

/// Unit types a name with `@` may have, as in the original.
const VALID_TEMPLATE_TYPES: &[&str] = &["path", "service", "socket", "target", "timer"];

/// The narrower set fleetctl and the agent recognize, the original's.
const RECOGNIZED_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "device",
    "mount",
    "automount",
];

/// The original's `unitNameMax`.
const UNIT_NAME_MAX: usize = 256;

/// Whether `suffix` (`service`, without the dot) is one of the types fleetctl
/// and the agent recognize: service socket timer path device mount automount.
/// Quirk kept from the original: `target`, `slice`, `swap`, ... are valid names but not
/// recognized here, so fleetctl names `foo.target` `foo.target.service` as scripts expect
/// (Documentation/compatibility.md, "Unit names").
pub fn recognized_type(suffix: &str) -> bool {
    RECOGNIZED_TYPES.contains(&suffix)
}

/// fleetctl's mangling of a unit argument (`unitNameMangle`): the base name
/// of the path, with `.service` appended unless it already ends in a
/// recognized type. `foo` -> `foo.service`, `foo.1` -> `foo.1.service`,
/// `foo/bar.socket` -> `bar.socket`, and (quirk) `foo.target` ->
/// `foo.target.service`.
pub fn fleetctl_unit_name(arg: &str) -> String {
    let base = go_path_base(arg);
    // The original tests `strings.HasSuffix(name, ".<type>")`.
    let recognized = RECOGNIZED_TYPES.iter().any(|unit_type| {
        base.strip_suffix(unit_type)
            .is_some_and(|rest| rest.ends_with('.'))
    });
    if recognized {
        base.to_owned()
    } else {
        format!("{base}.service")
    }
}

/// Go's `path.Base`.
fn go_path_base(path: &str) -> &str {
    if path.is_empty() {
        return ".";
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(slash_idx) => &trimmed[slash_idx + 1..],
        None => trimmed,
    }
}

/// The original's `ValidateName`; the first problem wins.
fn check_unit_name(name: &str) -> Result<(), InvalidUnitName> {
    if name.is_empty() {
        return Err(InvalidUnitName::Empty);
    }
    if name.len() > UNIT_NAME_MAX {
        return Err(InvalidUnitName::TooLong);
    }
    let Some(dot_idx) = name.rfind('.') else {
        return Err(InvalidUnitName::NoDot);
    };
    if dot_idx == name.len() - 1 {
        return Err(InvalidUnitName::EndsInDot);
    }
    let suffix = &name[dot_idx + 1..];
    if !VALID_TYPES.contains(&suffix) {
        return Err(InvalidUnitName::InvalidType(suffix.to_owned()));
    }
    if name.contains('@') && !VALID_TEMPLATE_TYPES.contains(&suffix) {
        return Err(InvalidUnitName::InvalidTemplateType(suffix.to_owned()));
    }
    if let Some(invalid) = name[..dot_idx]
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\')))
    {
        return Err(InvalidUnitName::InvalidCharacter(invalid));
    }
    if name.starts_with('@') {
        return Err(InvalidUnitName::StartsWithAt);
    }
    Ok(())
}

impl UnitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The position of the last `.`; validation guarantees there is one.
    fn dot_idx(&self) -> usize {
        self.0.rfind('.').unwrap_or(self.0.len())
    }
    /// The position of the first `@` before the suffix, if any.
    fn at_idx(&self) -> Option<usize> {
        self.without_suffix().find('@')
    }
    /// The suffix after the last `.` (`service`).
    pub fn suffix(&self) -> &str {
        self.0.get(self.dot_idx() + 1..).unwrap_or("")
    }
    /// The text before the first `@` (or the whole name without suffix).
    pub fn prefix(&self) -> &str {
        let name = self.without_suffix();
        match self.at_idx() {
            Some(at_idx) => &name[..at_idx],
            None => name,
        }
    }
    /// The text after the first `@`, before the suffix; empty when none.
    pub fn instance(&self) -> &str {
        match self.at_idx() {
            Some(at_idx) => &self.without_suffix()[at_idx + 1..],
            None => "",
        }
    }
    /// `foo@.service`: a template (has `@`, empty instance).
    pub fn is_template(&self) -> bool {
        self.at_idx().is_some() && self.instance().is_empty()
    }
    /// `foo@bar.service`: an instance (non-empty instance).
    pub fn is_instance(&self) -> bool {
        !self.instance().is_empty()
    }
    /// For an instance or a template, the template's name `prefix@.suffix`.
    pub fn template(&self) -> Option<UnitName> {
        self.at_idx()?;
        // Valid: the prefix is non-empty (no leading `@`) and made of valid
        // characters, and a name with `@` already has a template type.
        Some(UnitName(format!("{}@.{}", self.prefix(), self.suffix())))
    }
    /// The instance `prefix@instance.suffix` of this template (or of this
    /// instance's template), if the result is a valid name.
    pub fn instantiate(&self, instance: &str) -> Option<UnitName> {
        format!("{}@{}.{}", self.prefix(), instance, self.suffix())
            .parse()
            .ok()
    }
    /// The name without its suffix (`%N`).
    pub fn without_suffix(&self) -> &str {
        &self.0[..self.dot_idx()]
    }
    /// Whether the suffix is one fleetctl and the agent recognize.
    pub fn is_recognized_type(&self) -> bool {
        recognized_type(self.suffix())
    }
}

impl FromStr for UnitName {
    type Err = InvalidUnitName;
    fn from_str(s: &str) -> Result<UnitName, InvalidUnitName> {
        check_unit_name(s).map(|()| UnitName(s.to_owned()))
    }
}

impl TryFrom<String> for UnitName {
    type Error = InvalidUnitName;
    fn try_from(s: String) -> Result<UnitName, InvalidUnitName> {
        check_unit_name(&s).map(|()| UnitName(s))
    }
}

impl From<UnitName> for String {
    fn from(name: UnitName) -> String {
        name.0
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Result<(), &str>) {
        let actual = name
            .parse::<UnitName>()
            .map(|_| ())
            .map_err(|error| error.to_string());
        assert_eq!(
            actual,
            expected.map_err(str::to_owned),
            "validating {name:?}"
        );
    }

    /// `(prefix, instance, template, without_suffix, suffix, is_template, is_instance)`.
    fn check_parts(name: &str, expected: (&str, &str, Option<&str>, &str, &str, bool, bool)) {
        let unit_name: UnitName = name
            .parse()
            .unwrap_or_else(|error| panic!("{name:?}: {error}"));
        let template = unit_name.template();
        let actual = (
            unit_name.prefix(),
            unit_name.instance(),
            template.as_ref().map(UnitName::as_str),
            unit_name.without_suffix(),
            unit_name.suffix(),
            unit_name.is_template(),
            unit_name.is_instance(),
        );
        assert_eq!(actual, expected, "decomposing {name:?}");
    }

    #[test]
    fn valid_names() {
        let long = format!("{}.service", "a".repeat(256 - ".service".len()));
        assert_eq!(long.len(), 256);
        for name in [
            "foo.service",
            "hello.mount",
            "foo@123.service",
            "foo@.service",
            "yo.yo.service",
            "hello@world.path",
            "hello:world.service",
            "yes@no\\.service",
            "foo-bar.mount",
            long.as_str(),
            "foo@1.path",
            "foo@1.service",
            "foo@1.socket",
            "foo@1.target",
            "foo@1.timer",
            "foo.1@2.service",
            "a_b.swap",
        ] {
            check(name, Ok(()));
        }
    }

    #[test]
    fn invalid_names() {
        let too_long = format!("{}.service", "a".repeat(257 - ".service".len()));
        check("", Err("unit name cannot be empty"));
        check(&too_long, Err("unit name exceeds maximum length (256)"));
        check(
            &"a".repeat(300),
            Err("unit name exceeds maximum length (256)"),
        );
        check("fooservice", Err("unit name must contain \".\""));
        check("bar@foo", Err("unit name must contain \".\""));
        check("foo.", Err("unit name cannot end in \".\""));
        check("foo.bar", Err("invalid unit type: \"bar\""));
        check("foo.servICE", Err("invalid unit type: \"servICE\""));
        check("foo%.service", Err("invalid character '%' in unit name"));
        check("yes/no.service", Err("invalid character '/' in unit name"));
        check("this+that.mount", Err("invalid character '+' in unit name"));
        check("@foo.service", Err("unit name cannot start in \"@\""));
        for suffix in [
            "automount",
            "busname",
            "device",
            "mount",
            "scope",
            "slice",
            "snapshot",
            "swap",
        ] {
            check(
                &format!("foo@1.{suffix}"),
                Err(&format!("invalid unit type for template: \"{suffix}\"")),
            );
        }
    }

    #[test]
    fn decomposition() {
        check_parts(
            "foo.service",
            ("foo", "", None, "foo", "service", false, false),
        );
        check_parts(
            "foo@bar@baz.service",
            (
                "foo",
                "bar@baz",
                Some("foo@.service"),
                "foo@bar@baz",
                "service",
                false,
                true,
            ),
        );
        check_parts(
            "foo.1@2.service",
            (
                "foo.1",
                "2",
                Some("foo.1@.service"),
                "foo.1@2",
                "service",
                false,
                true,
            ),
        );
        check_parts(
            "foo@.service",
            (
                "foo",
                "",
                Some("foo@.service"),
                "foo@",
                "service",
                true,
                false,
            ),
        );
        check_parts(
            "foo@bar.timer",
            (
                "foo",
                "bar",
                Some("foo@.timer"),
                "foo@bar",
                "timer",
                false,
                true,
            ),
        );
        check_parts(
            "yo.yo.service",
            ("yo.yo", "", None, "yo.yo", "service", false, false),
        );
        let template: UnitName = "hello@.service".parse().unwrap();
        assert_eq!(
            template.instantiate("1").map(String::from),
            Some("hello@1.service".to_owned())
        );
        assert_eq!(template.instantiate("a/b"), None);
    }

    #[test]
    fn fleetctl_mangling() {
        for (arg, expected) in [
            ("foo", "foo.service"),
            ("foo.1", "foo.1.service"),
            ("foo/bar.socket", "bar.socket"),
            ("foo.service", "foo.service"),
            ("/etc/units/hello@.service", "hello@.service"),
            ("foo.target", "foo.target.service"),
            ("foo.automount", "foo.automount"),
            ("dir/", "dir.service"),
        ] {
            assert_eq!(fleetctl_unit_name(arg), expected, "mangling {arg:?}");
        }
    }

    #[test]
    fn recognized_types() {
        for suffix in [
            "service",
            "socket",
            "timer",
            "path",
            "device",
            "mount",
            "automount",
        ] {
            assert!(recognized_type(suffix), "{suffix}");
        }
        for suffix in [
            "target", "slice", "swap", "scope", "busname", "snapshot", "", "Service",
        ] {
            assert!(!recognized_type(suffix), "{suffix}");
        }
    }
}
