//! The subcommands: each reads (or acts through) the admin API and renders a table, or the
//! API's JSON with `--json`.

use std::fmt;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::http_client::{HttpClient, HttpError, HttpResponse};
use crate::table::render;

/// Look at a cruster runner through its admin API.
#[derive(Debug, Parser)]
#[command(name = "cruster", version, about)]
pub struct Cli {
    /// The runner's admin API address.
    #[arg(
        long,
        global = true,
        env = "CRUSTER_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin: String,
    /// Bearer token, when the admin API requires one.
    #[arg(
        long,
        global = true,
        env = "CRUSTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to show or do.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runners, health, shard ownership and message totals at a glance.
    Status,
    /// The shard table: shards per runner in each group, and recent shard moves.
    Shards,
    /// Live entities per type on the runner, and the busiest ones.
    Entities,
    /// List dead letters, or retry / purge them.
    DeadLetters {
        /// Retry or purge; lists when absent.
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
        /// How many to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Workflow executions by status and type, or one execution's journal.
    Workflows {
        /// Show one execution.
        #[command(subcommand)]
        action: Option<WorkflowAction>,
        /// Only this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only this status (running, suspended, completed, failed, ...).
        #[arg(long)]
        status: Option<String>,
        /// How many executions to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Make a dead letter (or all) pending again, with its attempts reset.
    Retry(Target),
    /// Delete a dead letter (or all) with its replies.
    Purge(Target),
}

/// One dead letter by id, or all of them.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The request id (from `cruster dead-letters`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

/// Workflow subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowAction {
    /// One execution with its journal.
    Show {
        /// The execution id.
        id: String,
    },
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The request did not get an HTTP answer.
    Http(HttpError),
    /// The API answered with an error.
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Http(err) => write!(f, "{err}"),
            CliError::Api { status, message } => {
                write!(f, "the admin API answered {status}: {message}")
            }
        }
    }
}

impl std::error::Error for CliError {}

impl From<HttpError> for CliError {
    fn from(err: HttpError) -> Self {
        CliError::Http(err)
    }
}

fn checked(response: HttpResponse) -> Result<Value, CliError> {
    if (200..300).contains(&response.status) {
        return Ok(response.body);
    }
    let message = response
        .body
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| response.text.clone(), str::to_owned);
    Err(CliError::Api {
        status: response.status,
        message,
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn field(value: &Value, key: &str) -> String {
    text(value.get(key).unwrap_or(&Value::Null))
}

fn items<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn age(ms: &Value) -> String {
    let s = ms.as_u64().unwrap_or(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn pretty(value: &Value) -> String {
    let mut out = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    out.push('\n');
    out
}

/// Runs `cli` and returns what to print.
///
/// # Errors
/// [`CliError`] when the runner cannot be reached or the API refuses.
pub fn run(cli: &Cli) -> Result<String, CliError> {
    let client = HttpClient::new(&cli.admin)?.with_bearer(cli.token.clone());
    let get = |path: &str| -> Result<Value, CliError> { checked(client.get(path)?) };
    match &cli.command {
        Command::Status => {
            let cluster = get("/api/cluster")?;
            // Health answers 503 with a JSON body when not ready/live: read it either way.
            let ready = client.get("/health/ready")?.body;
            let live = client.get("/health/live")?.body;
            let messages = get("/api/messages").ok();
            if cli.json {
                return Ok(pretty(&serde_json::json!({
                    "cluster": cluster, "ready": ready, "live": live, "messages": messages,
                })));
            }
            Ok(status_text(&cluster, &ready, &live, messages.as_ref()))
        }
        Command::Shards => {
            let cluster = get("/api/cluster")?;
            if cli.json {
                return Ok(pretty(&serde_json::json!({
                    "shard_groups": cluster.get("shard_groups"),
                    "recent_shard_moves": cluster.get("recent_shard_moves"),
                })));
            }
            Ok(shards_text(&cluster))
        }
        Command::Entities => {
            let entities = get("/api/entities")?;
            if cli.json {
                return Ok(pretty(&entities));
            }
            Ok(entities_text(&entities))
        }
        Command::DeadLetters { action, limit } => match action {
            None => {
                let letters = get(&format!("/api/dead-letters?limit={limit}"))?;
                if cli.json {
                    return Ok(pretty(&letters));
                }
                Ok(dead_letters_text(&letters))
            }
            Some(DeadLetterAction::Retry(target)) => {
                dead_letter_action(&client, cli.json, "retry", target)
            }
            Some(DeadLetterAction::Purge(target)) => {
                dead_letter_action(&client, cli.json, "purge", target)
            }
        },
        Command::Workflows {
            action,
            workflow,
            status,
            limit,
        } => match action {
            Some(WorkflowAction::Show { id }) => {
                let execution = get(&format!("/api/workflows/{}", encode(id)))?;
                if cli.json {
                    return Ok(pretty(&execution));
                }
                Ok(execution_text(&execution))
            }
            None => {
                let mut path = format!("/api/workflows?limit={limit}");
                if let Some(workflow) = workflow {
                    path.push_str(&format!("&workflow={}", encode(workflow)));
                }
                if let Some(status) = status {
                    path.push_str(&format!("&status={}", encode(status)));
                }
                let workflows = get(&path)?;
                if cli.json {
                    return Ok(pretty(&workflows));
                }
                Ok(workflows_text(&workflows))
            }
        },
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dead_letter_action(
    client: &HttpClient,
    json: bool,
    verb: &str,
    target: &Target,
) -> Result<String, CliError> {
    let path = match &target.id {
        Some(id) if !target.all => format!("/api/dead-letters/{}/{verb}", encode(id)),
        _ => format!("/api/dead-letters/{verb}"),
    };
    let answer = checked(client.post(&path)?)?;
    if json {
        return Ok(pretty(&answer));
    }
    let done = if verb == "retry" { "retried" } else { "purged" };
    Ok(match (&target.id, answer.get(done)) {
        (_, Some(Value::Number(n))) => format!("{done} {n} dead letter(s)\n"),
        (Some(id), Some(Value::Bool(true))) => format!("{done} dead letter {id}\n"),
        (Some(id), _) => format!(
            "request {id} is not a dead letter (it is {}); nothing {done}\n",
            field(&answer, "state")
        ),
        (None, _) => pretty(&answer),
    })
}

fn status_text(cluster: &Value, ready: &Value, live: &Value, messages: Option<&Value>) -> String {
    let mut out = format!(
        "runner   {}\nready    {} ({} of {} assigned shards held, storage {})\nlive     {} ({} requests pending, {} ms without progress)\n",
        field(cluster, "runner"),
        field(ready, "ready"),
        field(ready, "shards_held"),
        field(ready, "shards_assigned"),
        field(ready, "storage"),
        field(live, "live"),
        field(live, "pending_requests"),
        field(live, "waiting_without_progress_ms"),
    );
    if let Some(total) = messages.and_then(|m| m.get("total")) {
        out.push_str(&format!(
            "messages {} pending, {} retrying, {} dead-lettered\n",
            field(total, "pending"),
            field(total, "retrying"),
            field(total, "dead_lettered")
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = items(cluster, "runners")
        .iter()
        .map(|r| {
            let mut address = field(r, "address");
            if r.get("is_self") == Some(&Value::Bool(true)) {
                address.push_str(" *");
            }
            let health = match r.get("healthy") {
                Some(Value::Bool(true)) => "healthy".into(),
                Some(Value::Bool(false)) => "unreachable".into(),
                _ => "no check".into(),
            };
            vec![
                address,
                age(r.get("age_ms").unwrap_or(&Value::Null)),
                field(r, "weight"),
                health,
            ]
        })
        .collect();
    out.push_str(&render(&["RUNNER", "AGE", "WEIGHT", "HEALTH"], &rows));
    out
}

fn shards_text(cluster: &Value) -> String {
    let mut out = String::new();
    for group in items(cluster, "shard_groups") {
        out.push_str(&format!(
            "group {} ({} shards, {} held by this runner)\n",
            field(group, "group"),
            field(group, "shards"),
            items(group, "held_here").len()
        ));
        let rows: Vec<Vec<String>> = group
            .get("shards_per_runner")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(r, n)| vec![r.clone(), text(n)]).collect())
            .unwrap_or_default();
        out.push_str(&render(&["RUNNER", "SHARDS"], &rows));
        out.push('\n');
    }
    let moves = items(cluster, "recent_shard_moves");
    out.push_str(&format!("recent shard moves: {}\n", moves.len()));
    let rows: Vec<Vec<String>> = moves
        .iter()
        .take(20)
        .map(|m| vec![field(m, "at"), field(m, "direction"), field(m, "shard")])
        .collect();
    if !rows.is_empty() {
        out.push_str(&render(&["AT", "DIRECTION", "SHARD"], &rows));
    }
    out
}

fn entities_text(entities: &Value) -> String {
    let rows: Vec<Vec<String>> = items(entities, "entity_types")
        .iter()
        .map(|t| {
            vec![
                field(t, "entity_type"),
                field(t, "active"),
                field(t, "mailbox_depth"),
            ]
        })
        .collect();
    let mut out = render(&["ENTITY TYPE", "ACTIVE", "MAILBOX DEPTH"], &rows);
    let busiest: Vec<Vec<String>> = items(entities, "busiest")
        .iter()
        .map(|b| {
            vec![
                format!("{}/{}", field(b, "entity_type"), field(b, "entity_id")),
                field(b, "shard"),
                field(b, "pending"),
            ]
        })
        .collect();
    if !busiest.is_empty() {
        out.push_str("\nbusiest\n");
        out.push_str(&render(&["ENTITY", "SHARD", "PENDING"], &busiest));
    }
    out
}

fn dead_letters_text(letters: &Value) -> String {
    let rows: Vec<Vec<String>> = items(letters, "dead_letters")
        .iter()
        .map(|d| {
            vec![
                field(d, "request_id"),
                format!("{}/{}", field(d, "entity_type"), field(d, "entity_id")),
                field(d, "tag"),
                field(d, "attempts"),
                field(d, "last_error"),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no dead letters\n".into();
    }
    render(
        &["REQUEST", "ENTITY", "TAG", "ATTEMPTS", "LAST ERROR"],
        &rows,
    )
}

fn workflows_text(workflows: &Value) -> String {
    let counts: Vec<Vec<String>> = items(workflows, "counts")
        .iter()
        .map(|c| vec![field(c, "workflow"), field(c, "status"), field(c, "count")])
        .collect();
    let mut out = render(&["WORKFLOW", "STATUS", "EXECUTIONS"], &counts);
    let executions: Vec<Vec<String>> = items(workflows, "executions")
        .iter()
        .map(|e| {
            vec![
                field(e, "execution_id"),
                field(e, "workflow"),
                e.get("status")
                    .map_or_else(|| "-".into(), |s| field(s, "name")),
                field(e, "updated_at"),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&render(
        &["EXECUTION", "WORKFLOW", "STATUS", "UPDATED"],
        &executions,
    ));
    out
}

fn execution_text(execution: &Value) -> String {
    let status = execution
        .get("status")
        .map_or_else(|| "-".into(), |s| field(s, "name"));
    let mut out = format!(
        "execution {}\nworkflow  {}\nstatus    {}\nrequest   {}\nresult    {}\ncreated   {}\nupdated   {}\n\n",
        field(execution, "execution_id"),
        field(execution, "workflow"),
        status,
        field(execution, "request"),
        field(execution, "result"),
        field(execution, "created_at"),
        field(execution, "updated_at"),
    );
    let rows: Vec<Vec<String>> = items(execution, "journal")
        .iter()
        .map(|j| {
            vec![
                field(j, "sequence"),
                field(j, "activity"),
                field(j, "attempts"),
                field(j, "result"),
                field(j, "recorded_at"),
            ]
        })
        .collect();
    out.push_str(&render(
        &["#", "ACTIVITY", "ATTEMPTS", "RESULT", "RECORDED"],
        &rows,
    ));
    out
}
