//! Conversations through the server: a session submitted over HTTP or stdin is a turn of a
//! conversation, which a later request continues, exactly as `conclave --continue` does
//! (see [`crate::conversation`], the same files).
//!
//! * **Recording.** Every server session that runs (new, continued or resumed) appends its
//!   turn to its conversation's `conversation.jsonl` when it ends, before its result is
//!   published, so a client that saw the result can continue at once. A session that could
//!   not run (its error is its result) records nothing. A failed append does not lose the
//!   result: the result line gets `conversation_error`, and the server's log says why.
//! * **Continuing.** `POST /sessions/{id}/continue` (or `"conversation": ID` in a `POST
//!   /sessions` body or a stdin line) names the conversation by any of its sessions: the first
//!   (the conversation's id) or a later turn `<id>-N`. The new turn runs as session
//!   `<id>-N+1`, and its agents get every earlier question with its final answer as the task's
//!   history. The config is chosen as for a new session (the request's, else `--config`),
//!   like the CLI's `--continue` takes the command line's.
//! * **One turn at a time.** A conversation with a turn still queued or running refuses a
//!   follow-up (409): the follow-up's history would miss that turn's answer. A turn whose
//!   session exists on disk but was never recorded (the server died under it) is also a 409
//!   that says to resume it first.
//! * **Survives a restart.** Everything is read from the session directory on each request;
//!   the server keeps no conversation state of its own.
//!
//! History a request brings itself (the OpenAI endpoint's earlier messages) is given to that
//! session's agents but is not part of the conversation record: only the question is.

use std::path::Path;
use std::sync::Arc;

use conclave_protocol::SessionId;
use serde_json::{Value, json};
use tracing::warn;

use super::{Job, Server, SessionEntry, SubmitError};
use crate::conversation::{self, Conversation, ConversationError, Turn};

/// The conversation `id` names: its own id (the first session's), or a later turn's session
/// `<conversation>-N` that the conversation lists. `id` must be a valid session id (so it
/// names a directory inside `root` and nothing else).
pub fn find(root: &Path, id: &SessionId) -> Result<Conversation, ConversationError> {
    let id = id.as_str();
    match conversation::load(root, id) {
        Err(ConversationError::NotFound { .. }) => {}
        found => return found,
    }
    if let Some((first, number)) = id.rsplit_once('-')
        && number.parse::<u32>().is_ok()
        && SessionId::parse(first).is_ok()
        && let Ok(found) = conversation::load(root, first)
        && found.turns.iter().any(|turn| turn.session == id)
    {
        return Ok(found);
    }
    Err(ConversationError::NotFound {
        id: id.to_owned(),
        root: root.to_owned(),
    })
}

/// The conversation a resumed session belongs to: the one whose next turn it is, else its
/// own (a first turn).
pub fn of_session(root: &Path, session: &str) -> String {
    if let Some((first, _)) = session.rsplit_once('-')
        && SessionId::parse(first).is_ok()
        && let Ok(found) = conversation::load(root, first)
        && found.next_session() == session
    {
        return found.id;
    }
    session.to_owned()
}

/// The turn a finished session adds to its conversation, from its result line; `None` when
/// the session could not run (the line holds only its error).
fn turn_of(entry: &SessionEntry, result: &Value) -> Option<Turn> {
    if result.get("error").is_some() {
        return None;
    }
    let text = |key: &str| result[key].as_str().map(str::to_owned);
    let tokens = |key: &str| result["usage"][key].as_u64().unwrap_or(0);
    Some(Turn {
        question: entry.question.clone(),
        session: entry.id.clone(),
        final_answer: text("final_answer"),
        winner: text("winner"),
        label: text("label"),
        reason: text("reason").unwrap_or_default(),
        input_tokens: tokens("input_tokens"),
        output_tokens: tokens("output_tokens"),
        cost_usd: result["cost_usd"].as_f64(),
        unix_ms: conversation::now_ms(),
    })
}

impl Server {
    /// Turns `job`, a follow-up in conversation `id`, into the conversation's next session:
    /// its id and the history its agents get. Returns the conversation's id.
    pub(super) fn follow_up(&self, id: &str, job: &mut Job) -> Result<String, SubmitError> {
        if job.session_id.is_some() {
            return Err(SubmitError::Invalid(anyhow::anyhow!(
                "a follow-up's session id is chosen by the server (`<conversation>-N`); leave out \"session_id\""
            )));
        }
        let named = SessionId::parse(id)
            .map_err(|e| SubmitError::Invalid(anyhow::anyhow!("conversation: {e}")))?;
        let root = &self.args.common.session_dir;
        let found = find(root, &named).map_err(|error| match error {
            ConversationError::NotFound { .. } => SubmitError::NotFound(format!(
                "no conversation with a session `{id}` on this server (a session that has ended starts one; GET /sessions lists them)"
            )),
            other => {
                warn!(conversation = %id, "cannot read the conversation: {other}");
                SubmitError::Invalid(anyhow::anyhow!(
                    "the conversation of `{id}` cannot be read; the server's log says why"
                ))
            }
        })?;
        if found.torn_lines_skipped > 0 {
            warn!(conversation = %found.id, "a torn last line (a crash while writing) was skipped");
        }
        if let Some(running) = self.registry.unfinished_turn(&found.id) {
            return Err(SubmitError::Conflict(format!(
                "conversation `{}` has a turn that has not ended (session `{running}`); ask the follow-up once it has",
                found.id
            )));
        }
        let next = found.next_session();
        if self.journal_dir(&next).is_some() {
            return Err(SubmitError::Conflict(format!(
                "session `{next}` of conversation `{}` exists but its turn was never recorded (its orchestrator stopped); POST /sessions/{next}/resume finishes it, then continue",
                found.id
            )));
        }
        job.session_id = Some(next);
        job.history = found.history();
        Ok(found.id)
    }
}

/// Appends a finished session's turn to its conversation (see the module docs); a failure is
/// added to `result` as `conversation_error`.
pub(super) async fn record(server: &Arc<Server>, entry: &Arc<SessionEntry>, result: &mut Value) {
    let Some(turn) = turn_of(entry, result) else {
        return;
    };
    let root = server.args.common.session_dir.clone();
    let conversation = entry.conversation.clone();
    let appended =
        tokio::task::spawn_blocking(move || conversation::append(&root, &conversation, &turn))
            .await;
    let error = match appended {
        Ok(Ok(())) => return,
        Ok(Err(error)) => conclave_protocol::error_text(&error),
        Err(_) => "the task writing the conversation failed".to_owned(),
    };
    warn!(session = %entry.id, conversation = %entry.conversation, "the turn was not recorded: {error}");
    result["conversation_error"] = json!(format!(
        "the turn was not added to conversation `{}`; the server's log says why",
        entry.conversation
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(session: &str) -> Turn {
        Turn {
            question: "q".to_owned(),
            session: session.to_owned(),
            final_answer: Some("a".to_owned()),
            winner: None,
            label: None,
            reason: "consensus".to_owned(),
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: None,
            unix_ms: 1,
        }
    }

    #[test]
    fn a_conversation_is_found_by_its_first_session_or_a_later_turn() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        conversation::append(root, "math", &turn("math")).unwrap();
        conversation::append(root, "math", &turn("math-2")).unwrap();
        let id = |s: &str| SessionId::parse(s).unwrap();
        assert_eq!(find(root, &id("math")).unwrap().id, "math");
        assert_eq!(find(root, &id("math-2")).unwrap().id, "math");
        for missing in ["math-3", "other", "other-2", "math-x"] {
            assert!(
                matches!(
                    find(root, &id(missing)),
                    Err(ConversationError::NotFound { .. })
                ),
                "{missing}"
            );
        }
        // A session named like a turn starts its own conversation when it is no next turn.
        assert_eq!(of_session(root, "math-3"), "math");
        assert_eq!(of_session(root, "math-7"), "math-7");
        assert_eq!(of_session(root, "solo"), "solo");
    }
}
