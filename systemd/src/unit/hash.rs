//! The unit hash: SHA1 of the canonical text (Documentation/compatibility.md, "Unit files
//! and the unit hash").

use std::fmt;
use std::str::FromStr;

/// SHA1 of a unit's canonical text. Displays as 40 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitHash(pub [u8; 20]);

impl UnitHash {
    /// The first 7 hex characters, as fleetctl shows it.
    pub fn short(&self) -> String {
        self.to_string()[..7].to_owned()
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({self})")
    }
}

/// A hash that is not 40 hex characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid unit hash {0:?}: expected 40 hex characters")]
pub struct InvalidUnitHash(pub String);

impl FromStr for UnitHash {
    type Err = InvalidUnitHash;
    fn from_str(s: &str) -> Result<UnitHash, InvalidUnitHash> {
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidUnitHash(s.to_owned()))?;
        Ok(UnitHash(bytes))
    }
}
