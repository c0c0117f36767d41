//! The client side of rolling updates (`/rollouts`, beside v1).

use http::Method;

use super::{Client, ClientError, escape_path_segment};
use crate::rollout::{Action, ActionRequest, Rollout, RolloutList, RolloutRequest};

impl Client {
    /// Every rollout (`GET rollouts`).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, ClientError> {
        let list: RolloutList = self.get_json("rollouts", Vec::new()).await?;
        Ok(list.rollouts)
    }

    /// One rollout (`GET rollouts/<name>`), `None` on 404.
    ///
    /// # Errors
    /// Any [`ClientError`] other than a 404.
    pub async fn rollout(&self, name: &str) -> Result<Option<Rollout>, ClientError> {
        let path = format!("rollouts/{}", escape_path_segment(name));
        match self.get_json(&path, Vec::new()).await {
            Ok(rollout) => Ok(Some(rollout)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Starts a rollout (`POST rollouts`).
    ///
    /// # Errors
    /// Any [`ClientError`]; a 409 when one of that name is still going.
    pub async fn start_rollout(&self, request: &RolloutRequest) -> Result<Rollout, ClientError> {
        let body = self.encode(request)?;
        let answer = self
            .request(Method::POST, "rollouts", Vec::new(), Some(body))
            .await?;
        self.decode(&answer)
    }

    /// An operator action on a rollout (`POST rollouts/<name>`).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn rollout_action(&self, name: &str, action: Action) -> Result<Rollout, ClientError> {
        let path = format!("rollouts/{}", escape_path_segment(name));
        let body = self.encode(&ActionRequest { action })?;
        let answer = self
            .request(Method::POST, &path, Vec::new(), Some(body))
            .await?;
        self.decode(&answer)
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(value).map_err(|error| ClientError::Decode {
            endpoint: self.endpoint.url().to_owned(),
            detail: error.to_string(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|error| ClientError::Decode {
            endpoint: self.endpoint.url().to_owned(),
            detail: error.to_string(),
        })
    }
}
