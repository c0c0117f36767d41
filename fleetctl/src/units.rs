//! Unit creation from command-line arguments, shared by `submit`,
//! `load`, `start` and `restart`.
//!
//! For each argument: mangle it to a unit name, look the unit up, decide
//! (pure: [`decide_existing`]) whether an existing unit is kept, replaced or
//! refused, find the unit file (local file, registry template, local
//! template), validate it and `PUT` it. Then wait until every created unit
//! reports `inactive`. Messages are the original's, byte for byte.
//!
//! More than [`MAX_SINGLE_LOOKUPS`] units are sent together, as one
//! `POST /fleet/x1/units` per thousand ([`put_batched`]): the API answers each
//! as its `PUT`, and writes new units a txn per few. A server without that
//! API (the original fleetd answers 404; an older fleetd of ours with an
//! access policy, 403) gets the units `PUT` one by one.
//!
//! Arguments are handled concurrently (bounded) because batches of a
//! thousand template instances are a normal use; messages about one argument
//! keep their order, and the first error in argument order wins.

use fleet_model::TargetState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_api::client::ClientError;
use fleet_api::entities::{Unit, UnitOption as ApiOption};
use fleet_api::x1::MAX_BATCH_UNITS;
use fleet_systemd::unit::{
    UnitFile, UnitName, fleetctl_unit_name, unrecognized_requirements, validate_options,
};

use crate::context::{Ctx, concurrently, unit_file_of};
use crate::output::go_list;
use crate::wait::{Blocking, wait_for_unit_states};

/// Registry templates looked up during one batch, by template name.
type TemplateCache = Arc<tokio::sync::Mutex<HashMap<String, Option<Unit>>>>;

/// Up to this many names are looked up with one `GET` each; more with one
/// listing of all units. A thousand `GET`s cost a thousand requests (and
/// several etcd reads each); the listing costs one request for any number.
const MAX_SINGLE_LOOKUPS: usize = 4;

/// The registry's units by name, listed once, when `n_names` is large enough
/// that one listing is cheaper than a `GET` per name; `None` when it is not
/// (the caller then looks each name up by itself).
///
/// # Errors
/// The listing's error, as the per-name lookup would say it.
pub async fn listed_units(
    ctx: &Ctx,
    n_names: usize,
) -> Result<Option<Arc<HashMap<String, Unit>>>, String> {
    if n_names <= MAX_SINGLE_LOOKUPS {
        return Ok(None);
    }
    let units = ctx
        .client
        .units()
        .await
        .map_err(|error| format!("error retrieving units from Registry: {error}"))?;
    Ok(Some(Arc::new(
        units
            .into_iter()
            .map(|unit| (unit.name.clone(), unit))
            .collect(),
    )))
}

/// One unit: from `listed` when the batch listed them all, else by `GET`.
///
/// # Errors
/// The `GET`'s error.
pub async fn lookup_unit(
    ctx: &Ctx,
    listed: Option<&HashMap<String, Unit>>,
    name: &str,
) -> Result<Option<Unit>, fleet_api::client::ClientError> {
    match listed {
        Some(units) => Ok(units.get(name).cloned()),
        None => ctx.client.unit(name).await,
    }
}

/// Which command creates the units; it decides what `--replace` may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateCommand {
    Submit,
    Load,
    Start,
    Restart,
}

/// One command-line argument, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitArg {
    /// The local path: the argument with `.service` appended when its type is
    /// not recognized (`maybeAppendDefaultUnitType`).
    pub path: String,
    /// The unit name: the base name of `path` (`unitNameMangle`).
    pub name: String,
}

impl UnitArg {
    pub fn new(arg: &str) -> UnitArg {
        let name = fleetctl_unit_name(arg);
        // The mangled name is the base name, plus `.service` when the type was
        // not recognized; the path gets the same suffix.
        let path = if arg.ends_with(&name) {
            arg.to_owned()
        } else {
            format!("{arg}.service")
        };
        UnitArg { path, name }
    }
}

/// The original's `UnitNameInfo` on a name that may not be valid yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameInfo {
    pub instance: String,
    pub template: String,
}

impl NameInfo {
    /// `None` when the name has no `.` (the original returns nil).
    pub fn of(name: &str) -> Option<NameInfo> {
        let (base, suffix) = name.rsplit_once('.')?;
        let (prefix, instance) = base.split_once('@').map_or((base, ""), |(p, i)| (p, i));
        let template = if base.contains('@') {
            format!("{prefix}@.{suffix}")
        } else {
            String::new()
        };
        Some(NameInfo {
            instance: instance.to_owned(),
            template,
        })
    }

    pub fn is_instance(&self) -> bool {
        !self.instance.is_empty()
    }
}

/// How an existing unit compares with what is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalComparison {
    /// Same hash as the local file (or local template).
    Same,
    /// Differs from the local file (`template: false`) or local template.
    Different { template: bool },
    /// Nothing local to compare with; the text is the original's error.
    Missing(String),
}

/// A line to print, on stdout or stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Out(String),
    Err(String),
}

/// What to do with an argument whose unit already exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave the registry's unit as it is.
    Keep,
    /// Replace it with the local file (`--replace` and allowed).
    Replace,
}

/// The original's `checkUnitCreation` for an existing unit: `Err` is a hard
/// error (exit 1). Pure, so every branch is tested below.
///
/// # Errors
/// The comparison's error when `--replace` has nothing local to compare
/// with, or when `command` cannot replace at all.
pub fn decide_existing(
    command: CreateCommand,
    replace: bool,
    existing: &Unit,
    local_path: &str,
    comparison: &LocalComparison,
) -> Result<(Decision, Vec<Message>), String> {
    let mut messages = Vec::new();
    if let LocalComparison::Different { template } = comparison
        && !replace
    {
        let kind = if *template {
            "local template unit file"
        } else {
            "local unit file"
        };
        messages.push(Message::Err(format!(
            "WARNING: Unit {} in registry differs from {kind} {local_path}. Add --replace to override.",
            existing.name
        )));
    }
    if !replace {
        return Ok((Decision::Keep, messages));
    }
    match comparison {
        LocalComparison::Missing(error) => Err(error.clone()),
        LocalComparison::Same => {
            messages.push(Message::Out(format!(
                "Found same Unit({}) in Registry, nothing to do",
                existing.name
            )));
            Ok((Decision::Keep, messages))
        }
        LocalComparison::Different { .. } => {
            let allowed: &[TargetState] = match command {
                CreateCommand::Submit => &[TargetState::Inactive],
                CreateCommand::Load => &[TargetState::Inactive, TargetState::Loaded],
                CreateCommand::Start => &[
                    TargetState::Inactive,
                    TargetState::Loaded,
                    TargetState::Launched,
                ],
                CreateCommand::Restart => {
                    return Err(
                        "error: replacing units is not supported in this context".to_owned()
                    );
                }
            };
            if existing
                .desired()
                .is_some_and(|state| allowed.contains(&state))
            {
                Ok((Decision::Replace, messages))
            } else {
                messages.push(Message::Err(format!(
                    "Warning: can not replace Unit({}) in state '{}', use the appropriate command",
                    existing.name, existing.desired_state
                )));
                Ok((Decision::Keep, messages))
            }
        }
    }
}

/// Go's `path.Dir` joined with `file` (`path.Join(path.Dir(p), file)`).
fn sibling(path: &str, file: &str) -> PathBuf {
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(file),
        _ => PathBuf::from(file),
    }
}

/// Reads and parses a local unit file.
fn read_unit_file(path: &Path) -> Result<UnitFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("open {}: {error}", path.display()))?;
    UnitFile::parse(&text).map_err(|error| error.to_string())
}

/// The original's `matchLocalFileAndUnit`: `Err` when the file does not exist;
/// a file that does not parse counts as different.
fn matches_local_file(path: &Path, unit: &Unit) -> Result<bool, String> {
    if let Err(error) = std::fs::metadata(path) {
        return Err(format!("stat {}: {error}", path.display()));
    }
    Ok(read_unit_file(path).is_ok_and(|local| local.hash() == unit_file_of(unit).hash()))
}

/// The original's `isLocalUnitDifferent`.
pub fn compare_with_local(local_path: &str, unit: &Unit) -> LocalComparison {
    match matches_local_file(Path::new(local_path), unit) {
        Ok(true) => return LocalComparison::Same,
        Ok(false) => return LocalComparison::Different { template: false },
        Err(_) => {}
    }
    let base = Path::new(local_path)
        .file_name()
        .map_or_else(String::new, |b| b.to_string_lossy().into_owned());
    let info = match NameInfo::of(&base) {
        None => {
            return LocalComparison::Missing(format!(
                "error extracting information from unit name {local_path}"
            ));
        }
        Some(info) if !info.is_instance() => {
            return LocalComparison::Missing(format!(
                "error Unit {local_path} does not seem to be a template unit"
            ));
        }
        Some(info) => info,
    };
    let template_path = sibling(local_path, &info.template);
    match matches_local_file(&template_path, unit) {
        Ok(true) => LocalComparison::Same,
        Ok(false) => LocalComparison::Different { template: true },
        Err(error) => LocalComparison::Missing(error),
    }
}

fn print(ctx: &Ctx, messages: Vec<Message>) {
    for message in messages {
        match message {
            Message::Out(text) => ctx.console.out(&text),
            Message::Err(text) => ctx.console.err(&text),
        }
    }
}

/// The original's `getUnitFile`: the local file, else the template of an
/// instance from the registry, else the local template file.
///
/// Templates fetched from the registry are cached for the whole batch: a
/// thousand instances of one template cost one `GET` of it, not a thousand.
async fn find_unit_file(
    ctx: &Ctx,
    arg: &UnitArg,
    templates: &TemplateCache,
) -> Result<UnitFile, String> {
    if std::fs::metadata(&arg.path).is_ok() {
        return read_unit_file(Path::new(&arg.path))
            .map_err(|error| format!("failed getting Unit({}) from file: {error}", arg.path));
    }
    let info = NameInfo::of(&arg.name)
        .ok_or_else(|| format!("error extracting information from unit name {}", arg.name))?;
    if !info.is_instance() {
        return Err(format!(
            "unable to find Unit({}) in Registry or on filesystem",
            arg.name
        ));
    }
    let from_template = async {
        let template = {
            // Held across the lookup so concurrent instances wait for one GET.
            let mut cache = templates.lock().await;
            match cache.get(&info.template) {
                Some(template) => template.clone(),
                None => {
                    let template = ctx.client.unit(&info.template).await.map_err(|error| {
                        format!(
                            "error retrieving template Unit({}) from Registry: {error}",
                            info.template
                        )
                    })?;
                    cache.insert(info.template.clone(), template.clone());
                    template
                }
            }
        };
        if let Some(template) = template {
            // Only a warning when the local template differs.
            if let LocalComparison::Different { template: true } =
                compare_with_local(&arg.path, &template)
            {
                ctx.console.err(&format!(
                    "WARNING: Unit {} in registry differs from local template unit file {}. Add --replace to override.",
                    template.name, arg.path
                ));
            }
            return Ok(unit_file_of(&template));
        }
        let template_path = sibling(&arg.path, &info.template);
        if std::fs::metadata(&template_path).is_err() {
            return Err(format!(
                "unable to find template Unit({}) in Registry or on filesystem",
                info.template
            ));
        }
        read_unit_file(&template_path).map_err(|error| {
            format!(
                "unable to load template Unit({}) from file: {error}",
                info.template
            )
        })
    };
    from_template
        .await
        .map_err(|error| format!("failed getting Unit({}) from template: {error}", arg.path))
}

/// The original's `createUnit` up to its request: validate, warn about
/// unknown `[X-Fleet]` keys; the entity to `PUT` (name and options, the
/// desired state left to the API: inactive).
fn unit_to_create(ctx: &Ctx, name: &str, unit_file: &UnitFile) -> Result<Unit, String> {
    name.parse::<UnitName>()
        .map_err(|error| error.to_string())?;
    validate_options(unit_file)?;
    let unknown = unrecognized_requirements(unit_file);
    if !unknown.is_empty() {
        ctx.console.err(&format!(
            "WARNING: Unit {name}: unrecognized requirements: {}",
            go_list(&unknown)
        ));
    }
    let unit = Unit {
        name: name.to_owned(),
        options: unit_file
            .options()
            .iter()
            .map(|o| ApiOption {
                section: o.section.clone(),
                name: o.name.clone(),
                value: o.value.clone(),
            })
            .collect(),
        ..Unit::default()
    };
    Ok(unit)
}

fn creation_failed(name: &str, error: &impl std::fmt::Display) -> String {
    format!("failed creating unit {name}: {error}")
}

/// A unit as the API stores it when created without a desired state.
fn created(unit: Unit) -> Unit {
    Unit {
        desired_state: TargetState::Inactive.to_string(),
        ..unit
    }
}

/// The most bytes of units' JSON sent in one `POST /fleet/x1/units`: room
/// below the API's 1.5 MiB body limit.
const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;

/// `units` cut into batch requests: at most [`MAX_BATCH_UNITS`] units and
/// about [`MAX_BATCH_BODY_BYTES`] of JSON each (a larger unit goes alone).
fn batch_chunks(units: &[Unit]) -> Vec<&[Unit]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, unit) in units.iter().enumerate() {
        let size = serde_json::to_vec(unit).map_or(0, |json| json.len());
        if index > start
            && (index - start == MAX_BATCH_UNITS || bytes + size > MAX_BATCH_BODY_BYTES)
        {
            chunks.push(&units[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < units.len() {
        chunks.push(&units[start..]);
    }
    chunks
}

/// Sends `units` (each the body of its v1 `PUT`) in as few
/// `POST /fleet/x1/units` as fit, and returns each unit's answer, its
/// error as the `PUT` would have said it. `None` when the server has no
/// batch API (a 404 to the first request: the original fleetd; or a 403: a
/// fleetd of ours older than the batch API denies paths its access policy
/// does not know, and a caller without the `operate` role gets the same
/// refusals from the `PUT`s); nothing was written then, and the caller sends
/// the `PUT`s.
async fn put_batched(ctx: &Ctx, units: &[Unit]) -> Option<Vec<Result<(), String>>> {
    let mut answers = Vec::with_capacity(units.len());
    for chunk in batch_chunks(units) {
        match ctx.client.put_units(chunk).await {
            Ok(results) => answers.extend(results.iter().map(|result| {
                ClientError::of_unit_result(result).map_or(Ok(()), |error| Err(error.to_string()))
            })),
            Err(error) if matches!(error.status(), Some(403 | 404)) && answers.is_empty() => {
                return None;
            }
            Err(error) => answers.extend(chunk.iter().map(|_| Err(error.to_string()))),
        }
    }
    Some(answers)
}

/// Whether this many units are sent in batches rather than one `PUT` each.
fn sends_in_batches(n_units: usize) -> bool {
    n_units > MAX_SINGLE_LOOKUPS
}

/// Sends `bodies` (each the body of its unit's v1 `PUT`): in batch requests
/// when there are many, else (or when the server has no batch API) with
/// `put_one` for each, the original's request. Answers in the bodies' order.
pub async fn send_units<F, Fut>(
    ctx: &Arc<Ctx>,
    bodies: Vec<Unit>,
    put_one: F,
) -> Vec<Result<(), String>>
where
    F: Fn(Arc<Ctx>, Unit) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    if sends_in_batches(bodies.len())
        && let Some(answers) = put_batched(ctx, &bodies).await
    {
        return answers;
    }
    concurrently(ctx, bodies, put_one).await
}

/// The units sent (the `Ok(Some(unit))` of `pending`, in order) paired with
/// their `answers` and turned into results by `settle`; the others pass
/// through.
pub fn settle_answers(
    pending: Vec<Result<Option<Unit>, String>>,
    answers: Vec<Result<(), String>>,
    settle: impl Fn(Unit, Result<(), String>) -> Result<Option<Unit>, String>,
) -> Vec<Result<Option<Unit>, String>> {
    let mut answers = answers.into_iter();
    pending
        .into_iter()
        .map(|result| match result {
            Ok(Some(unit)) => {
                let answer = answers
                    .next()
                    .unwrap_or_else(|| Err("no answer".to_owned()));
                settle(unit, answer)
            }
            other => other,
        })
        .collect()
}

/// The units of `results` that are to be sent (`Ok(Some(unit))`).
pub fn to_send(results: &[Result<Option<Unit>, String>]) -> impl Iterator<Item = &Unit> {
    results
        .iter()
        .filter_map(|result| result.as_ref().ok().and_then(Option::as_ref))
}

/// Creates the `prepared` units (`Ok(Some(unit))`; the others are kept or
/// failed already): one batch request when there are many, else (or from
/// the original fleetd) one `PUT` each. Results stay in argument order.
async fn create_prepared(
    ctx: &Arc<Ctx>,
    prepared: Vec<Result<Option<Unit>, String>>,
) -> Vec<Result<Option<Unit>, String>> {
    let to_create: Vec<Unit> = to_send(&prepared).cloned().collect();
    // The original's `createUnit`'s request: a `PUT` of the unit.
    let answers = send_units(ctx, to_create, |ctx, unit| async move {
        ctx.client
            .create_unit(&unit)
            .await
            .map_err(|error| error.to_string())
    })
    .await;
    settle_answers(prepared, answers, |unit, answer| match answer {
        Ok(()) => Ok(Some(created(unit))),
        Err(error) => Err(creation_failed(&unit.name, &error)),
    })
}

/// Checks and finds the unit of one argument; `Ok(Some(unit))` when it is
/// to be created (or replaced), `Ok(None)` when the existing unit is kept.
async fn prepare_one(
    ctx: Arc<Ctx>,
    arg: String,
    command: CreateCommand,
    replace: bool,
    templates: TemplateCache,
    listed: Option<Arc<HashMap<String, Unit>>>,
) -> Result<Option<Unit>, String> {
    let arg = UnitArg::new(&arg);
    let existing = lookup_unit(&ctx, listed.as_deref(), &arg.name)
        .await
        .map_err(|error| format!("error retrieving Unit({}) from Registry: {error}", arg.name))?;
    if let Some(existing) = existing {
        let comparison = compare_with_local(&arg.path, &existing);
        let (decision, messages) =
            decide_existing(command, replace, &existing, &arg.path, &comparison)?;
        print(&ctx, messages);
        if decision == Decision::Keep {
            return Ok(None);
        }
    }
    let unit_file = find_unit_file(&ctx, &arg, &templates).await?;
    unit_to_create(&ctx, &arg.name, &unit_file).map(Some)
}

/// The original's `lazyCreateUnits`: creates the units named by `args` that
/// do not exist yet (or replaces them with `--replace`), then waits for each
/// created unit to report `inactive` (`Unit <n> inactive`). The wait ignores
/// `--no-block` like the original.
///
/// Returns the units it created, as sent (desired state `inactive`), so the
/// caller need not fetch them again.
///
/// # Errors
/// The first error, in argument order; the caller prints
/// `Error creating units: <err>`.
pub async fn lazy_create_units(
    ctx: &Arc<Ctx>,
    args: &[String],
    command: CreateCommand,
    replace: bool,
    blocking: Blocking,
) -> Result<Vec<Unit>, String> {
    // The same unit twice must be created once, as the original's sequential loop did.
    let mut seen = std::collections::HashSet::new();
    let args: Vec<String> = args
        .iter()
        .filter(|arg| seen.insert(fleetctl_unit_name(arg)))
        .cloned()
        .collect();
    let templates = TemplateCache::default();
    let listed = listed_units(ctx, args.len()).await?;
    let prepared = concurrently(ctx, args, move |ctx, arg| {
        prepare_one(
            ctx,
            arg,
            command,
            replace,
            Arc::clone(&templates),
            listed.clone(),
        )
    })
    .await;
    let results = create_prepared(ctx, prepared).await;
    let mut created = Vec::new();
    for result in results {
        if let Some(unit) = result? {
            created.push(unit);
        }
    }
    let names: Vec<String> = created.iter().map(|unit| unit.name.clone()).collect();
    let errors = wait_for_unit_states(
        ctx,
        &names,
        TargetState::Inactive,
        "submit",
        blocking.ignoring_no_block(),
    )
    .await;
    if errors.is_empty() {
        return Ok(created);
    }
    for error in &errors {
        ctx.console
            .err(&format!("Error waiting on unit creation: {error}"));
    }
    Err("One or more errors creating units".to_owned())
}

/// The unit entity `fleetctl start ARG` would create, built as `start` finds
/// it (local file, else an instance of a template) but not sent: what
/// `fleetctl plan` asks the scheduler about.
///
/// # Errors
/// Why the unit file cannot be found or is invalid.
pub async fn planned_unit(ctx: &Ctx, arg: &str) -> Result<Unit, String> {
    let arg = UnitArg::new(arg);
    let unit_file = find_unit_file(ctx, &arg, &TemplateCache::default()).await?;
    arg.name
        .parse::<UnitName>()
        .map_err(|error| error.to_string())?;
    validate_options(&unit_file)?;
    Ok(Unit {
        name: arg.name,
        options: unit_file
            .options()
            .iter()
            .map(|o| ApiOption {
                section: o.section.clone(),
                name: o.name.clone(),
                value: o.value.clone(),
            })
            .collect(),
        ..Unit::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, desired_state: &str) -> Unit {
        Unit {
            name: name.to_owned(),
            desired_state: desired_state.to_owned(),
            ..Unit::default()
        }
    }

    #[test]
    fn arguments_are_mangled_like_the_original() {
        let cases = [
            ("foo", "foo.service", "foo.service"),
            ("foo.1", "foo.1.service", "foo.1.service"),
            ("foo/bar.socket", "foo/bar.socket", "bar.socket"),
            (
                "/tmp/hello@1.service",
                "/tmp/hello@1.service",
                "hello@1.service",
            ),
            ("foo.target", "foo.target.service", "foo.target.service"),
        ];
        for (arg, path, name) in cases {
            assert_eq!(
                UnitArg::new(arg),
                UnitArg {
                    path: path.to_owned(),
                    name: name.to_owned()
                },
                "arg {arg:?}"
            );
        }
    }

    #[test]
    fn name_info() {
        let info = NameInfo::of("foo@bar@baz.service").unwrap();
        assert_eq!(info.instance, "bar@baz");
        assert_eq!(info.template, "foo@.service");
        assert!(!NameInfo::of("foo@.service").unwrap().is_instance());
        assert!(!NameInfo::of("foo.service").unwrap().is_instance());
        assert_eq!(NameInfo::of("foo"), None);
    }

    #[test]
    fn existing_units_without_replace_are_kept_with_a_warning_when_different() {
        let existing = unit("a.service", "launched");
        let (decision, messages) = decide_existing(
            CreateCommand::Start,
            false,
            &existing,
            "a.service",
            &LocalComparison::Different { template: false },
        )
        .unwrap();
        assert_eq!(decision, Decision::Keep);
        assert_eq!(
            messages,
            [Message::Err(
                "WARNING: Unit a.service in registry differs from local unit file a.service. Add --replace to override."
                    .to_owned()
            )]
        );
        let (_, messages) = decide_existing(
            CreateCommand::Load,
            false,
            &existing,
            "x/a@1.service",
            &LocalComparison::Different { template: true },
        )
        .unwrap();
        assert_eq!(
            messages,
            [Message::Err(
                "WARNING: Unit a.service in registry differs from local template unit file x/a@1.service. Add --replace to override."
                    .to_owned()
            )]
        );
        // Nothing local is fine without --replace.
        let (decision, messages) = decide_existing(
            CreateCommand::Submit,
            false,
            &existing,
            "a.service",
            &LocalComparison::Missing("e".into()),
        )
        .unwrap();
        assert_eq!((decision, messages), (Decision::Keep, vec![]));
    }

    #[test]
    fn replace_rules_follow_the_command() {
        let check = |command, desired: &str| {
            decide_existing(
                command,
                true,
                &unit("a.service", desired),
                "a.service",
                &LocalComparison::Different { template: false },
            )
            .unwrap()
        };
        assert_eq!(
            check(CreateCommand::Submit, "inactive").0,
            Decision::Replace
        );
        assert_eq!(check(CreateCommand::Load, "loaded").0, Decision::Replace);
        assert_eq!(check(CreateCommand::Start, "launched").0, Decision::Replace);
        let (decision, messages) = check(CreateCommand::Submit, "loaded");
        assert_eq!(decision, Decision::Keep);
        assert_eq!(
            messages,
            [Message::Err(
                "Warning: can not replace Unit(a.service) in state 'loaded', use the appropriate command".to_owned()
            )]
        );
        assert_eq!(check(CreateCommand::Load, "launched").0, Decision::Keep);
    }

    #[test]
    fn replace_with_identical_or_missing_local_file() {
        let existing = unit("a.service", "inactive");
        let (decision, messages) = decide_existing(
            CreateCommand::Submit,
            true,
            &existing,
            "a.service",
            &LocalComparison::Same,
        )
        .unwrap();
        assert_eq!(decision, Decision::Keep);
        assert_eq!(
            messages,
            [Message::Out(
                "Found same Unit(a.service) in Registry, nothing to do".to_owned()
            )]
        );
        let error = decide_existing(
            CreateCommand::Submit,
            true,
            &existing,
            "a.service",
            &LocalComparison::Missing(
                "error Unit a.service does not seem to be a template unit".to_owned(),
            ),
        )
        .unwrap_err();
        assert_eq!(
            error,
            "error Unit a.service does not seem to be a template unit"
        );
    }

    #[test]
    fn comparison_with_local_files_and_templates() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[Service]\nExecStart=/bin/sleep 100\n";
        let registry_unit = |text: &str| {
            let file = UnitFile::parse(text).unwrap();
            Unit {
                name: "x".to_owned(),
                options: file
                    .options()
                    .iter()
                    .map(|o| ApiOption {
                        section: o.section.clone(),
                        name: o.name.clone(),
                        value: o.value.clone(),
                    })
                    .collect(),
                ..Unit::default()
            }
        };
        let plain = dir.path().join("plain.service");
        std::fs::write(&plain, text).unwrap();
        let plain = plain.to_string_lossy().into_owned();
        assert_eq!(
            compare_with_local(&plain, &registry_unit(text)),
            LocalComparison::Same
        );
        assert_eq!(
            compare_with_local(
                &plain,
                &registry_unit("[Service]\nExecStart=/bin/sleep 2\n")
            ),
            LocalComparison::Different { template: false }
        );

        std::fs::write(dir.path().join("hello@.service"), text).unwrap();
        let instance = dir
            .path()
            .join("hello@1.service")
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            compare_with_local(&instance, &registry_unit(text)),
            LocalComparison::Same
        );
        assert_eq!(
            compare_with_local(
                &instance,
                &registry_unit("[Service]\nExecStart=/bin/true\n")
            ),
            LocalComparison::Different { template: true }
        );

        let missing = dir
            .path()
            .join("missing.service")
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            compare_with_local(&missing, &registry_unit(text)),
            LocalComparison::Missing(format!(
                "error Unit {missing} does not seem to be a template unit"
            ))
        );
        let orphan = dir
            .path()
            .join("orphan@1.service")
            .to_string_lossy()
            .into_owned();
        assert!(matches!(
            compare_with_local(&orphan, &registry_unit(text)),
            LocalComparison::Missing(error) if error.starts_with("stat ")
        ));
    }
}
