//! [`AdminOptions`]: what the admin API allows and how it decides liveness.

use std::time::Duration;

/// How the admin API behaves. The default is read-only, without a token, with a 60 s stall
/// limit for `/health/live`.
///
/// ```
/// use std::time::Duration;
/// use cruster::admin::AdminOptions;
///
/// let options = AdminOptions::default()
///     .allow_actions(true)
///     .bearer_token("s3cret")
///     .stall_timeout(Duration::from_secs(30));
/// assert!(options.actions_allowed());
/// ```
#[derive(Clone, Debug)]
pub struct AdminOptions {
    pub(crate) actions: bool,
    pub(crate) token: Option<String>,
    pub(crate) stall_timeout: Duration,
    pub(crate) busiest: usize,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            actions: false,
            token: None,
            stall_timeout: Duration::from_secs(60),
            busiest: 10,
        }
    }
}

impl AdminOptions {
    /// Enables the actions (retrying and purging dead letters). Off by default: the API is
    /// read-only and answers actions with 403.
    #[must_use]
    pub fn allow_actions(mut self, allowed: bool) -> Self {
        self.actions = allowed;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every API, metrics and health request.
    #[must_use]
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long requests may wait in this runner's mailboxes with none finishing before
    /// `/health/live` answers 503 (default 60 s).
    #[must_use]
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How many of the busiest entities `/api/entities` lists (default 10).
    #[must_use]
    pub fn busiest_entities(mut self, count: usize) -> Self {
        self.busiest = count;
        self
    }

    /// Whether actions are enabled.
    pub fn actions_allowed(&self) -> bool {
        self.actions
    }
}
