//! Units: records (name, content hash, desired state), contents by hash with
//! their references, and the compare-and-swap writes of the API (create, set
//! the desired state, destroy).

#[allow(clippy::wildcard_imports)] // the store's imports, shared by its parts
use super::*;

use std::collections::HashSet;

/// Parses stored content (the canonical unit text).
pub(super) fn parse_content(value: &[u8]) -> Result<UnitFile, String> {
    let text = std::str::from_utf8(value).map_err(|error| error.to_string())?;
    UnitFile::parse(text).map_err(|error| error.to_string())
}

/// How often a read-modify-write of one unit record is retried when another
/// writer changed the record in between. Contention on one unit is rare (two
/// API calls for the same name at the same moment), so a few tries suffice.
pub(super) const MAX_CAS_ATTEMPTS: usize = 8;

/// The most units one create txn carries. Each costs up to six of the
/// txn's operations (a compare, two puts, and a nested txn of a compare and
/// a put for its content), so a txn stays under 100, well below etcd's
/// default limit of 128 operations per txn.
pub const UNITS_PER_CREATE_TXN: usize = 16;

/// The most units one desired-state txn carries: a compare and a put each,
/// 120 operations, under etcd's default limit of 128. Large because the
/// first chunk's watch event is what the engine's first pass of a burst
/// places; the rest waits for the next pass.
pub const UNITS_PER_STATE_TXN: usize = 60;

/// The put of a unit record (`value`, at `key`) with `desired_state`: the
/// same content hash, the new state.
fn desired_state_put(
    key: &str,
    value: &[u8],
    desired_state: TargetState,
) -> Result<TxnOp, RegistryError> {
    let (hash, _) = wire::decode_unit(value).map_err(|message| RegistryError::Decode {
        key: key.to_owned(),
        message,
    })?;
    Ok(TxnOp::put(
        key,
        wire::encode_unit(&hash, desired_state),
        None,
    ))
}

/// `units` cut into create txns (see [`distinct_chunks`]).
fn create_chunks(
    units: &[(UnitName, UnitFile, TargetState)],
) -> Vec<&[(UnitName, UnitFile, TargetState)]> {
    distinct_chunks(units, UNITS_PER_CREATE_TXN, |(name, _, _)| name)
}

/// `items` cut into txns: at most `per_txn` each, and a new chunk where a
/// unit's name repeats (etcd refuses a txn putting a key twice; the repeat
/// is then written after the first, as one by one).
fn distinct_chunks<T>(items: &[T], per_txn: usize, name_of: impl Fn(&T) -> &UnitName) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut names = HashSet::new();
    for (index, name) in items.iter().map(name_of).enumerate() {
        if index - start == per_txn || !names.insert(name) {
            chunks.push(&items[start..index]);
            start = index;
            names.clear();
            names.insert(name);
        }
    }
    if start < items.len() {
        chunks.push(&items[start..]);
    }
    chunks
}

/// Units as listed: the usable ones, and those whose record or content is
/// not (see [`Registry::unit_listing`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitListing {
    /// Sorted by name.
    pub units: Vec<Unit>,
    /// Sorted by name.
    pub unusable: Vec<UnusableUnit>,
}

/// A unit whose stored record or content cannot be used: written by
/// someone else, or damaged. It is reported, never taken as destroyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusableUnit {
    pub name: UnitName,
    /// What is wrong, for an operator.
    pub problem: String,
}

impl Registry {
    /// Parses every content blob once, keyed by hash.
    pub(super) fn decode_contents(
        &self,
        contents: &[KeyValue],
    ) -> HashMap<UnitHash, Arc<UnitFile>> {
        contents
            .iter()
            .filter_map(|kv| {
                let (hash, file) = self.decode_content(kv.key_str().ok()?, kv.value())?;
                Some((hash, Arc::new(file)))
            })
            .collect()
    }

    pub(super) fn decode_units(&self, records: &[KeyValue], contents: &[KeyValue]) -> Vec<Unit> {
        self.decode_unit_listing(records, contents).units
    }

    /// The units of `records` with their `contents`, and the units whose
    /// record does not decode or whose content is missing or does not
    /// parse (by name, with what is wrong; logged at WARN).
    fn decode_unit_listing(&self, records: &[KeyValue], contents: &[KeyValue]) -> UnitListing {
        let contents = self.decode_contents(contents);
        let mut listing = UnitListing::default();
        for kv in records {
            let Ok(key) = kv.key_str() else { continue };
            let Some(RegistryKey::Unit(name)) = self.keys.parse(key) else {
                continue;
            };
            let (hash, desired_state) = match wire::decode_unit(kv.value()) {
                Ok(decoded) => decoded,
                Err(message) => {
                    warn!(unit = %name, key, %message, "The unit's record in etcd is corrupt (not a unit record); listing the unit with the error.");
                    listing.unusable.push(UnusableUnit {
                        name,
                        problem: format!("the unit's record in etcd is corrupt: {message}"),
                    });
                    continue;
                }
            };
            let Some(file) = contents.get(&hash) else {
                warn!(unit = %name, %hash, "The unit's content is missing or does not parse; listing the unit with the error.");
                listing.unusable.push(UnusableUnit {
                    name,
                    problem: format!(
                        "the unit's content {hash} is missing from etcd or does not parse"
                    ),
                });
                continue;
            };
            listing.units.push(Unit {
                name,
                file: Arc::clone(file),
                hash,
                desired_state,
            });
        }
        listing.units.sort_by(|a, b| a.name.cmp(&b.name));
        listing.unusable.sort_by(|a, b| a.name.cmp(&b.name));
        listing
    }

    /// Every unit, and every unit whose record or content is unusable (the
    /// API lists those with an error instead of hiding them). One read per
    /// prefix, both at one revision.
    pub async fn unit_listing(&self) -> Result<UnitListing, RegistryError> {
        let (records, contents) = self.unit_records_and_contents().await?;
        Ok(self.decode_unit_listing(records.kvs(), contents.kvs()))
    }

    /// Every unit record and every content, read at one revision.
    async fn unit_records_and_contents(
        &self,
    ) -> Result<(PrefixListing, PrefixListing), RegistryError> {
        let records = self
            .get_prefix("list units", self.keys.units(), None)
            .await?;
        let revision = records.revision();
        let contents = self
            .get_prefix(
                "list unit contents",
                self.keys.all_content(),
                Some(revision),
            )
            .await?;
        Ok((records, contents))
    }

    /// All units sorted by name, each with its content (one read per prefix,
    /// both at one revision; each content parsed once and shared).
    pub async fn units(&self) -> Result<Vec<Unit>, RegistryError> {
        let (records, contents) = self.unit_records_and_contents().await?;
        Ok(self.decode_units(records.kvs(), contents.kvs()))
    }

    /// One unit with its content.
    ///
    /// # Errors
    /// [`RegistryError::Decode`] when the record or its content is unusable.
    pub async fn unit(&self, name: &UnitName) -> Result<Option<Unit>, RegistryError> {
        let key = self.keys.unit(name);
        let response = self.get("get unit", key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let (hash, desired_state) =
            wire::decode_unit(kv.value()).map_err(|message| RegistryError::Decode {
                key: key.clone(),
                message: format!("the record of {name} is corrupt (not a unit record): {message}"),
            })?;
        // The content as of the record's revision: a replace right after our
        // read may already have released it.
        let content_key = self.keys.content(&hash);
        let content = self
            .get(
                "get unit content",
                content_key.clone(),
                Some(GetOptions::new().with_revision(header_revision(&response).get())),
            )
            .await?;
        let Some(content) = content.kvs().first() else {
            return Err(RegistryError::Decode {
                key: content_key,
                message: format!("the content of {name} is missing"),
            });
        };
        let file = parse_content(content.value()).map_err(|message| RegistryError::Decode {
            key: content_key,
            message,
        })?;
        Ok(Some(Unit {
            name: name.clone(),
            file: Arc::new(file),
            hash,
            desired_state,
        }))
    }

    /// The content stored for `hash`, parsed; `Ok(None)` when there is none
    /// (the agent fetches what it must load by hash and caches it).
    ///
    /// # Errors
    /// [`RegistryError::Decode`] when the stored text does not parse.
    pub async fn unit_content(&self, hash: &UnitHash) -> Result<Option<UnitFile>, RegistryError> {
        let key = self.keys.content(hash);
        let response = self.get("get unit content", key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let file =
            parse_content(kv.value()).map_err(|message| RegistryError::Decode { key, message })?;
        Ok(Some(file))
    }

    /// Releases `unit`'s reference to `hash` and, in the same txn, deletes the
    /// content when that was the last reference: the refs before and after
    /// ours must both be empty ranges (an empty range compares as a zero
    /// version in etcd).
    pub(crate) fn release_content(&self, hash: &UnitHash, unit: &UnitName) -> Txn {
        self.release_content_ref(hash, &self.keys.content_ref(hash, unit))
    }

    /// [`Registry::release_content`] for any reference key `own` under the
    /// hash's refs (a unit's, or a rollout's).
    pub(crate) fn release_content_ref(&self, hash: &UnitHash, own: &str) -> Txn {
        let refs = self.keys.content_refs(hash);
        let own = own.to_owned();
        let mut after_own = own.clone().into_bytes();
        after_own.push(0);
        Txn::new()
            .when([
                Compare::version(refs.as_str(), CompareOp::Equal, 0).with_range(own.as_str()),
                Compare::version(after_own, CompareOp::Equal, 0).with_range(prefix_end(&refs)),
            ])
            .and_then([
                TxnOp::delete(own.as_str(), None),
                TxnOp::delete(self.keys.content(hash), None),
            ])
            .or_else([TxnOp::delete(own.as_str(), None)])
    }

    /// Deletes the content of `hash` if no unit refers to it. Repairs content
    /// leaked by hand edits; the normal paths release content atomically.
    pub async fn collect_content(&self, hash: &UnitHash) -> Result<bool, RegistryError> {
        let refs = self.keys.content_refs(hash);
        let txn = Txn::new()
            .when([
                Compare::version(refs.as_str(), CompareOp::Equal, 0).with_range(prefix_end(&refs))
            ])
            .and_then([TxnOp::delete(self.keys.content(hash), None)]);
        Ok(self.txn("collect unit content", txn).await?.succeeded())
    }

    /// The record of `name` and the compare that holds while it is unchanged.
    pub(super) async fn unit_record(
        &self,
        op: &'static str,
        name: &UnitName,
    ) -> Result<Option<(Compare, Vec<u8>)>, RegistryError> {
        let key = self.keys.unit(name);
        let response = self.get(op, key.clone(), None).await?;
        Ok(response.kvs().first().map(|kv| {
            (
                Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                kv.value().to_vec(),
            )
        }))
    }

    pub(super) fn cas_exhausted(op: &'static str) -> RegistryError {
        RegistryError::Etcd {
            op,
            message: format!(
                "the unit record kept changing under us; gave up after {MAX_CAS_ATTEMPTS} attempts"
            ),
        }
    }

    /// Creates or replaces `name` with `file` and `desired_state`, storing the
    /// content once per hash; releases the old content when replaced. One txn.
    pub async fn create_unit(
        &self,
        name: &UnitName,
        file: &UnitFile,
        desired_state: TargetState,
    ) -> Result<(), RegistryError> {
        const OP: &str = "create unit";
        let text = file.serialize();
        let hash = file.hash();
        let key = self.keys.unit(name);
        let content_key = self.keys.content(&hash);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            // Most creates are of new units: the first attempt assumes there is
            // no record, which the guard checks, and saves a read per unit.
            let record = if attempt == 0 {
                None
            } else {
                self.unit_record(OP, name).await?
            };
            let (guard, old_hash) = match &record {
                None => (
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    None,
                ),
                Some((guard, value)) => {
                    let old_hash = match wire::decode_unit(value) {
                        Ok((old_hash, _)) => Some(old_hash),
                        Err(message) => {
                            warn!(unit = %name, %message, "Replacing an undecodable unit record; its content may leak.");
                            None
                        }
                    };
                    (guard.clone(), old_hash)
                }
            };
            let mut ops = self.unit_record_ops(name, &hash, desired_state);
            ops.push(Self::put_content_if_absent(&content_key, &text));
            if let Some(old_hash) = old_hash.filter(|old_hash| *old_hash != hash) {
                ops.push(TxnOp::txn(self.release_content(&old_hash, name)));
            }
            if self
                .txn(OP, Txn::new().when([guard]).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(());
            }
            if attempt > 0 {
                debug!(unit = %name, "The unit record changed while we wrote it; retrying.");
            }
        }
        Err(Self::cas_exhausted(OP))
    }

    /// The writes of `name`'s record (`hash`, `desired_state`) and of its
    /// reference to the content: what every create of a unit puts, alone or
    /// in a batch.
    fn unit_record_ops(
        &self,
        name: &UnitName,
        hash: &UnitHash,
        desired_state: TargetState,
    ) -> Vec<TxnOp> {
        vec![
            TxnOp::put(
                self.keys.unit(name),
                wire::encode_unit(hash, desired_state),
                None,
            ),
            TxnOp::put(self.keys.content_ref(hash, name), "", None),
        ]
    }

    /// A nested txn storing `text` at `content_key` unless some unit stored
    /// it already: content is kept once per hash.
    fn put_content_if_absent(content_key: &str, text: &str) -> TxnOp {
        TxnOp::txn(
            Txn::new()
                .when([Compare::version(content_key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(content_key, text, None)]),
        )
    }

    /// Which of `names` have a unit record, read in txns of
    /// [`GETS_PER_TXN`] keys-only gets.
    ///
    /// # Errors
    /// etcd's.
    pub async fn existing_unit_names(
        &self,
        names: &[UnitName],
    ) -> Result<HashSet<UnitName>, RegistryError> {
        let mut existing = HashSet::new();
        for chunk in names.chunks(GETS_PER_TXN) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|name| {
                    TxnOp::get(
                        self.keys.unit(name),
                        Some(GetOptions::new().with_keys_only()),
                    )
                })
                .collect();
            let response = self
                .txn("read unit names", Txn::new().and_then(gets))
                .await?;
            for (name, range) in chunk.iter().zip(txn_ranges(&response)) {
                if !range.kvs().is_empty() {
                    existing.insert(name.clone());
                }
            }
        }
        Ok(existing)
    }

    /// Creates many units, expected to be new, in few txns: the same
    /// records, references and contents as [`Self::create_unit`] of each, in
    /// order. A txn carries up to [`UNITS_PER_CREATE_TXN`] units and succeeds
    /// only if none of them exists yet; when one does (or the txn fails),
    /// that chunk's units are created one by one with [`Self::create_unit`],
    /// so the outcome equals a `create_unit` per unit. One result per unit.
    pub async fn create_new_units(
        &self,
        units: &[(UnitName, UnitFile, TargetState)],
    ) -> Vec<Result<(), RegistryError>> {
        let mut results = Vec::with_capacity(units.len());
        for chunk in create_chunks(units) {
            match self.create_chunk(chunk).await {
                Ok(true) => results.extend(chunk.iter().map(|_| Ok(()))),
                Ok(false) | Err(_) => {
                    debug!(
                        units = chunk.len(),
                        "A batch of new units met an existing unit or an error; creating them one by one."
                    );
                    for (name, file, desired_state) in chunk {
                        results.push(self.create_unit(name, file, *desired_state).await);
                    }
                }
            }
        }
        results
    }

    /// One txn creating `chunk`'s units if none has a record; `Ok(false)`
    /// when one has. A content shared by several units is put once.
    async fn create_chunk(
        &self,
        chunk: &[(UnitName, UnitFile, TargetState)],
    ) -> Result<bool, RegistryError> {
        let mut guards = Vec::with_capacity(chunk.len());
        let mut ops = Vec::with_capacity(chunk.len() * 3);
        let mut contents = HashSet::new();
        for (name, file, desired_state) in chunk {
            let hash = file.hash();
            guards.push(Compare::create_revision(
                self.keys.unit(name),
                CompareOp::Equal,
                0,
            ));
            ops.extend(self.unit_record_ops(name, &hash, *desired_state));
            // etcd refuses a txn that puts one key twice, even in nested txns.
            let content_key = self.keys.content(&hash);
            if contents.insert(content_key.clone()) {
                ops.push(Self::put_content_if_absent(&content_key, &file.serialize()));
            }
        }
        let txn = Txn::new().when(guards).and_then(ops);
        Ok(self.txn("create units", txn).await?.succeeded())
    }

    /// Sets the desired state of an existing unit. `Ok(false)` if it is gone.
    pub async fn set_desired_state(
        &self,
        name: &UnitName,
        desired_state: TargetState,
    ) -> Result<bool, RegistryError> {
        const OP: &str = "set desired state";
        let key = self.keys.unit(name);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((guard, value)) = self.unit_record(OP, name).await? else {
                return Ok(false);
            };
            let put = desired_state_put(&key, &value, desired_state)?;
            let txn = Txn::new().when([guard]).and_then([put]);
            if self.txn(OP, txn).await?.succeeded() {
                return Ok(true);
            }
            debug!(unit = %name, "The unit record changed while we wrote it; retrying.");
        }
        Err(Self::cas_exhausted(OP))
    }

    /// Sets the desired state of many units, as [`Self::set_desired_state`]
    /// of each in order would (`Ok(false)` for a unit that is gone), in few
    /// txns: per chunk of [`UNITS_PER_STATE_TXN`] units one read of their
    /// records, then one write guarded by every record's revision. When a
    /// record changed in between (or a txn fails), that chunk's units are
    /// set one by one.
    pub async fn set_desired_states(
        &self,
        changes: &[(UnitName, TargetState)],
    ) -> Vec<Result<bool, RegistryError>> {
        let mut results = Vec::with_capacity(changes.len());
        for chunk in distinct_chunks(changes, UNITS_PER_STATE_TXN, |(name, _)| name) {
            match self.set_desired_states_chunk(chunk).await {
                Ok(Some(set)) => results.extend(set.into_iter().map(Ok)),
                Ok(None) | Err(_) => {
                    for (name, desired_state) in chunk {
                        results.push(self.set_desired_state(name, *desired_state).await);
                    }
                }
            }
        }
        results
    }

    /// One chunk of [`Self::set_desired_states`]: whether each unit was set,
    /// or `None` when a record changed under us or could not be decoded.
    async fn set_desired_states_chunk(
        &self,
        chunk: &[(UnitName, TargetState)],
    ) -> Result<Option<Vec<bool>>, RegistryError> {
        const OP: &str = "set desired states";
        let gets: Vec<TxnOp> = chunk
            .iter()
            .map(|(name, _)| TxnOp::get(self.keys.unit(name), None))
            .collect();
        let read = self.txn(OP, Txn::new().and_then(gets)).await?;
        let (mut guards, mut puts, mut set) = (Vec::new(), Vec::new(), Vec::new());
        for ((name, desired_state), range) in chunk.iter().zip(txn_ranges(&read)) {
            let Some(kv) = range.kvs().first() else {
                set.push(false);
                continue;
            };
            let key = self.keys.unit(name);
            let Ok(put) = desired_state_put(&key, kv.value(), *desired_state) else {
                return Ok(None);
            };
            guards.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            ));
            puts.push(put);
            set.push(true);
        }
        if set.len() != chunk.len() {
            return Ok(None);
        }
        if puts.is_empty() {
            return Ok(Some(set));
        }
        let written = self.txn(OP, Txn::new().when(guards).and_then(puts)).await?;
        Ok(written.succeeded().then_some(set))
    }

    /// Removes a unit and, with its last reference, its content (one txn).
    /// `Ok(false)` if it did not exist. Placements are the engine's to remove.
    pub async fn destroy_unit(&self, name: &UnitName) -> Result<bool, RegistryError> {
        const OP: &str = "destroy unit";
        let key = self.keys.unit(name);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((guard, value)) = self.unit_record(OP, name).await? else {
                return Ok(false);
            };
            let mut ops = vec![TxnOp::delete(key.as_str(), None)];
            match wire::decode_unit(&value) {
                Ok((hash, _)) => ops.push(TxnOp::txn(self.release_content(&hash, name))),
                Err(message) => {
                    warn!(unit = %name, %message, "Destroying an undecodable unit record; its content may leak.")
                }
            }
            if self
                .txn(OP, Txn::new().when([guard]).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(true);
            }
            debug!(unit = %name, "The unit record changed while we deleted it; retrying.");
        }
        Err(Self::cas_exhausted(OP))
    }

    /// A unit record: `(name, content hash, desired state)`.
    pub(crate) fn decode_unit_record(
        &self,
        key: &str,
        value: &[u8],
    ) -> Option<(UnitName, UnitHash, TargetState)> {
        let RegistryKey::Unit(name) = self.keys.parse(key)? else {
            return None;
        };
        let (hash, desired_state) = wire::decode_unit(value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()?;
        Some((name, hash, desired_state))
    }

    /// A content blob, parsed: `(hash, file)`. Parse each hash once and share
    /// it (`Arc`) among the units that use it.
    pub(crate) fn decode_content(&self, key: &str, value: &[u8]) -> Option<(UnitHash, UnitFile)> {
        let RegistryKey::Content(hash) = self.keys.parse(key)? else {
            return None;
        };
        let file = parse_content(value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()?;
        Some((hash, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(names: &[&str]) -> Vec<(UnitName, UnitFile, TargetState)> {
        let file = UnitFile::parse("[Service]\nExecStart=/bin/true\n").expect("valid unit");
        names
            .iter()
            .map(|name| {
                let name = name.parse().expect("valid name");
                (name, file.clone(), TargetState::Inactive)
            })
            .collect()
    }

    fn sizes(units: &[(UnitName, UnitFile, TargetState)]) -> Vec<usize> {
        create_chunks(units)
            .iter()
            .map(|chunk| chunk.len())
            .collect()
    }

    #[test]
    fn create_chunks_are_bounded_and_never_repeat_a_name() {
        let names: Vec<String> = (0..40).map(|i| format!("a@{i}.service")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(sizes(&units(&names)), vec![16, 16, 8]);
        assert_eq!(
            sizes(&units(&[
                "a.service",
                "b.service",
                "a.service",
                "c.service"
            ])),
            vec![2, 2]
        );
        assert!(sizes(&units(&[])).is_empty());
    }
}
