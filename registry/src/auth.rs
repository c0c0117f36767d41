//! etcd users and roles for fleet: one identity per machine.
//!
//! The key layout groups keys by writer (see [`crate::keys`]), so etcd's
//! range permissions can give each fleetd a credential that reaches its own
//! keys and nothing else:
//!
//! | role | grants | held by |
//! |---|---|---|
//! | [`READER_ROLE`] | read `P/` | every machine |
//! | `fleet-machine-<id>` | read-write [`Keys::machine_grants`] (its presence, its unit states) | that machine |
//! | [`ENGINE_ROLE`] | read-write `P/engine/` (schedule, placements, leader key) | control-plane machines |
//! | [`API_WRITER_ROLE`] | read-write `P/api/` (units, contents, metadata) | control-plane machines |
//!
//! A machine's etcd user is named [`machine_user`] (`fleet-machine-<id>`);
//! with etcd's `--client-cert-auth` a client certificate whose common name is
//! that name authenticates as it, password or not.
//!
//! [`EtcdAdmin`] is what `fleetd etcd-auth` runs with etcd's root credentials.
//! Every step is idempotent: running `init` or `add-machine` again converges.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission};
use tracing::info;

use crate::keys::{KeyRange, Keys};
use crate::model::MachineId;
use crate::store::{RegistryConfig, RegistryError};

/// Reads everything under the prefix.
pub const READER_ROLE: &str = "fleet-reader";
/// Writes the engine's range.
pub const ENGINE_ROLE: &str = "fleet-engine";
/// Writes the API writers' range.
pub const API_WRITER_ROLE: &str = "fleet-api-writer";

/// The etcd user (and role) of one machine.
pub fn machine_user(machine: &MachineId) -> String {
    format!("fleet-machine-{machine}")
}

/// The credential `add-machine` made: the lines for the machine's fleet.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineCredential {
    pub username: String,
    pub password: String,
    /// Whether the machine holds the engine and API-writer roles.
    pub control_plane: bool,
}

/// etcd's user and role administration, connected with root credentials.
pub struct EtcdAdmin {
    client: Client,
    keys: Keys,
    timeout: Duration,
}

fn admin_error(op: &'static str, error: etcd_client::Error) -> RegistryError {
    RegistryError::Etcd {
        op,
        message: error.to_string(),
    }
}

/// Whether etcd refused because the thing already exists (or is already on).
fn already(error: &etcd_client::Error) -> bool {
    let message = error.to_string();
    message.contains("already exists") || message.contains("already enabled")
}

fn not_found(error: &etcd_client::Error) -> bool {
    error.to_string().contains("not found")
}

/// A random password: 24 bytes of the kernel's CSPRNG, hex-encoded.
fn random_password() -> Result<String, RegistryError> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .map_err(|error| RegistryError::Config(format!("cannot read /dev/urandom: {error}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

impl EtcdAdmin {
    /// Connects with `config`'s credentials. While etcd's auth is still off
    /// (before `init` enabled it), it connects without them.
    ///
    /// # Errors
    /// Unusable TLS files, an unreachable etcd, or refused credentials.
    pub async fn connect(config: &RegistryConfig) -> Result<EtcdAdmin, RegistryError> {
        let timeout = config.request_timeout;
        let options = ConnectOptions::new().with_connect_timeout(timeout);
        #[cfg(feature = "tls")]
        let options = match crate::store::tls_options(config)? {
            Some(tls) => options.with_tls(tls),
            None => options,
        };
        let with_user = match (&config.username, &config.password) {
            (Some(username), Some(password)) => options.clone().with_user(username, password),
            (None, None) => options.clone(),
            _ => {
                return Err(RegistryError::Config(
                    "etcd_username and etcd_password must be set together".to_owned(),
                ));
            }
        };
        let connect = |options: ConnectOptions| async move {
            match tokio::time::timeout(timeout, Client::connect(&config.endpoints, Some(options)))
                .await
            {
                Ok(result) => result.map_err(|error| admin_error("connect", error)),
                Err(_) => Err(RegistryError::Timeout {
                    op: "connect",
                    after: timeout,
                }),
            }
        };
        let client = match connect(with_user).await {
            Err(RegistryError::Etcd { message, .. })
                if message.contains("authentication is not enabled") =>
            {
                connect(options).await?
            }
            other => other?,
        };
        Ok(EtcdAdmin {
            client,
            keys: Keys::new(&config.key_prefix),
            timeout,
        })
    }

    async fn call<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<Result<T, etcd_client::Error>, RegistryError> {
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| RegistryError::Timeout {
                op,
                after: self.timeout,
            })
    }

    /// Creates `role` if absent and grants it `permissions`.
    async fn ensure_role(
        &self,
        role: &str,
        permissions: Vec<Permission>,
    ) -> Result<(), RegistryError> {
        let mut auth = self.client.auth_client();
        match self.call("role add", auth.role_add(role)).await? {
            Ok(_) => info!(role, "Created the etcd role."),
            Err(error) if already(&error) => {}
            Err(error) => return Err(admin_error("role add", error)),
        }
        for permission in permissions {
            self.call(
                "role grant permission",
                auth.role_grant_permission(role, permission),
            )
            .await?
            .map_err(|error| admin_error("role grant permission", error))?;
        }
        Ok(())
    }

    fn range_permission(range: KeyRange) -> Permission {
        match range {
            KeyRange::Key(key) => Permission::read_write(key),
            KeyRange::Prefix(prefix) => Permission::read_write(prefix).with_prefix(),
        }
    }

    /// Creates the shared roles, makes sure the root user exists (created
    /// with the given root password when auth is off and it is missing), and
    /// enables auth. Idempotent.
    ///
    /// # Errors
    /// What etcd refuses (e.g. no root password given while root is missing).
    pub async fn init(&self, root_password: Option<&str>) -> Result<(), RegistryError> {
        let prefix = self.keys.prefix().to_owned();
        self.ensure_role(READER_ROLE, vec![Permission::read(prefix).with_prefix()])
            .await?;
        self.ensure_role(
            ENGINE_ROLE,
            vec![Permission::read_write(self.keys.engine_prefix()).with_prefix()],
        )
        .await?;
        self.ensure_role(
            API_WRITER_ROLE,
            vec![Permission::read_write(self.keys.api_prefix()).with_prefix()],
        )
        .await?;
        let mut auth = self.client.auth_client();
        match self.call("user get", auth.user_get("root")).await? {
            Ok(_) => {}
            Err(error) if not_found(&error) => {
                let password = root_password.ok_or_else(|| {
                    RegistryError::Config(
                        "etcd has no root user: give its new password as etcd_password (FLEET_ETCD_PASSWORD) with etcd_username=root"
                            .to_owned(),
                    )
                })?;
                self.call("user add", auth.user_add("root", password, None))
                    .await?
                    .map_err(|error| admin_error("user add", error))?;
                info!("Created the etcd root user.");
            }
            Err(error) => return Err(admin_error("user get", error)),
        }
        self.call("user grant role", auth.user_grant_role("root", "root"))
            .await?
            .map_err(|error| admin_error("user grant role", error))?;
        match self.call("auth enable", auth.auth_enable()).await? {
            Ok(_) => info!("Enabled etcd authentication."),
            Err(error) if already(&error) => {}
            Err(error) => return Err(admin_error("auth enable", error)),
        }
        Ok(())
    }

    /// Creates (or resets) `machine`'s user and role: a new password, its own
    /// keys, read access to everything, and with `control_plane` the engine
    /// and API-writer roles. A worker added again without `control_plane`
    /// loses those roles.
    ///
    /// # Errors
    /// What etcd refuses (e.g. `init` was not run: a role is missing).
    pub async fn add_machine(
        &self,
        machine: &MachineId,
        control_plane: bool,
    ) -> Result<MachineCredential, RegistryError> {
        let user = machine_user(machine);
        let permissions = self
            .keys
            .machine_grants(machine)
            .into_iter()
            .map(Self::range_permission)
            .collect();
        self.ensure_role(&user, permissions).await?;
        let password = random_password()?;
        let mut auth = self.client.auth_client();
        match self
            .call(
                "user add",
                auth.user_add(user.as_str(), password.as_str(), None),
            )
            .await?
        {
            Ok(_) => {}
            Err(error) if already(&error) => {
                self.call(
                    "user change password",
                    auth.user_change_password(user.as_str(), password.as_str()),
                )
                .await?
                .map_err(|error| admin_error("user change password", error))?;
            }
            Err(error) => return Err(admin_error("user add", error)),
        }
        let mut roles = vec![user.as_str(), READER_ROLE];
        if control_plane {
            roles.extend([ENGINE_ROLE, API_WRITER_ROLE]);
        }
        for role in roles {
            self.call("user grant role", auth.user_grant_role(user.as_str(), role))
                .await?
                .map_err(|error| admin_error("user grant role", error))?;
        }
        if !control_plane {
            for role in [ENGINE_ROLE, API_WRITER_ROLE] {
                match self
                    .call(
                        "user revoke role",
                        auth.user_revoke_role(user.as_str(), role),
                    )
                    .await?
                {
                    Ok(_) => {}
                    Err(error) if error.to_string().contains("not granted") => {}
                    Err(error) => return Err(admin_error("user revoke role", error)),
                }
            }
        }
        Ok(MachineCredential {
            username: user,
            password,
            control_plane,
        })
    }

    /// Deletes `machine`'s user and role. `Ok(false)` when neither existed.
    ///
    /// # Errors
    /// What etcd refuses.
    pub async fn remove_machine(&self, machine: &MachineId) -> Result<bool, RegistryError> {
        let user = machine_user(machine);
        let mut auth = self.client.auth_client();
        let mut removed = false;
        match self
            .call("user delete", auth.user_delete(user.as_str()))
            .await?
        {
            Ok(_) => removed = true,
            Err(error) if not_found(&error) => {}
            Err(error) => return Err(admin_error("user delete", error)),
        }
        match self
            .call("role delete", auth.role_delete(user.as_str()))
            .await?
        {
            Ok(_) => removed = true,
            Err(error) if not_found(&error) => {}
            Err(error) => return Err(admin_error("role delete", error)),
        }
        Ok(removed)
    }
}
