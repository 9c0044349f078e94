//! Tests of the Claude Code command line, prompt and stream-json parser.

use std::collections::VecDeque;

use conclave_protocol::{StreamChunk, ToolCall, Usage};

use super::*;
use crate::accumulate::TurnOutput;
use crate::providers::stream::Flow;
use conclave_protocol::config::WireFormat;
use serde_json::json;

fn vote_tool() -> ToolSpec {
    ToolSpec {
        name: "vote".into(),
        description: "Vote for the best existing answer.".into(),
        parameters: json!({"type": "object", "properties": {"agent_id": {"type": "string"}}}),
    }
}

fn request(tools: Vec<ToolSpec>) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Which?"),
        ],
        tools,
        tool_choice: ToolChoice::Required,
    }
}

/// Feeds lines, then the exit status; returns the folded output and the final error.
fn run(
    request: &ChatRequest,
    lines: &[Value],
    code: Option<i32>,
    stderr: &str,
) -> (TurnOutput, Vec<StreamChunk>, Option<String>) {
    let mut parser = ClaudeCodeParser::new(request);
    let mut out = VecDeque::new();
    for line in lines {
        if parser.on_line(&line.to_string(), &mut out) == Flow::Done {
            break;
        }
    }
    parser.on_exit(code, stderr, &mut out);
    let mut turn = TurnOutput::default();
    let mut chunks = Vec::new();
    let mut error = None;
    for item in out {
        match item {
            Ok(chunk) => {
                turn.apply(&chunk);
                chunks.push(chunk);
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    (turn, chunks, error)
}

#[test]
fn tool_calls_are_found_in_fenced_json() {
    let tools = vec![vote_tool()];
    let text = "I compared them.\n```python\nprint({\"tool\": \"vote\"})\n```\n\
                ```json\n{\"tool\": \"vote\", \"arguments\": {\"agent_id\": \"agent1.1\"}}\n```";
    assert_eq!(
        parse_tool_calls(text, &tools),
        vec![("vote".to_owned(), json!({"agent_id": "agent1.1"}))]
    );
    // Unknown tools are text; a bare object and string arguments are accepted.
    assert!(
        parse_tool_calls(
            "```json\n{\"tool\": \"rm\", \"arguments\": {}}\n```",
            &tools
        )
        .is_empty()
    );
    assert_eq!(
        parse_tool_calls(
            r#" {"name": "vote", "arguments": "{\"agent_id\": \"a\"}"} "#,
            &tools
        ),
        vec![("vote".to_owned(), json!({"agent_id": "a"}))]
    );
    assert!(parse_tool_calls("no call here", &tools).is_empty());
}

#[test]
fn prompt_is_a_transcript_with_tools() {
    let mut request = request(vec![vote_tool()]);
    let (system, text) = prompt(&request);
    assert_eq!(system.as_deref(), Some("Be brief."));
    assert!(text.starts_with("Which?\n\n# Tools"), "{text}");
    assert!(text.contains("exactly one such tool call"));
    assert!(text.contains("## vote\nVote for the best existing answer."));

    request.messages.push(ChatMessage::Assistant {
        content: None,
        tool_calls: vec![ToolCall::new("call_0", "vote", r#"{"agent_id":"x"}"#)],
        reasoning: Vec::new(),
    });
    request
        .messages
        .push(ChatMessage::tool("call_0", "unknown label"));
    request.messages.push(ChatMessage::user("Try again."));
    request.tool_choice = ToolChoice::None;
    let (_, text) = prompt(&request);
    assert!(text.contains(
        "<user>\nWhich?\n</user>\n<assistant>\n<tool_call id=\"call_0\" name=\"vote\">{\"agent_id\":\"x\"}</tool_call>\n</assistant>\n<tool_result id=\"call_0\" name=\"vote\">\nunknown label\n</tool_result>\n<user>\nTry again.\n</user>\n"
    ), "{text}");
    assert!(
        !text.contains("# Tools"),
        "tool_choice none offers no tools"
    );
}

#[test]
fn streamed_text_is_not_repeated_and_cli_tools_are_only_shown() {
    let request = request(vec![vote_tool()]);
    let lines = [
        json!({"type":"system","subtype":"init","model":"claude-sonnet-4-5","session_id":"s"}),
        json!({"type":"stream_event","event":{"type":"message_start","message":{"id":"m1"}}}),
        json!({"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}}),
        json!({"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me look."}}}),
        json!({"type":"assistant","message":{"id":"m1","content":[{"type":"thinking","thinking":"hm","signature":"x"}]}}),
        json!({"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"a"}}]}}),
        json!({"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"data"}]}]}}),
        json!({"type":"assistant","parent_tool_use_id":"t9","message":{"id":"sub","content":[{"type":"text","text":"sub-agent"}]}}),
        json!({"type":"assistant","message":{"id":"m2","stop_reason":"end_turn","content":[{"type":"text","text":"```json\n{\"tool\":\"vote\",\"arguments\":{\"agent_id\":\"agent1.1\"}}\n```"}]}}),
        json!({"type":"result","subtype":"success","is_error":false,"usage":{"input_tokens":3,"cache_creation_input_tokens":10,"cache_read_input_tokens":100,"output_tokens":7}}),
    ];
    let (turn, chunks, error) = run(&request, &lines, Some(0), "");
    assert_eq!(error, None);
    assert_eq!(turn.reasoning.as_deref(), Some("hm"));
    assert!(
        turn.text.starts_with("Let me look.```json"),
        "{}",
        turn.text
    );
    assert!(!turn.text.contains("sub-agent"));
    assert_eq!(
        turn.tool_calls,
        vec![ToolCall::new(
            "call_0",
            "vote",
            r#"{"agent_id":"agent1.1"}"#
        )]
    );
    assert_eq!(turn.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        turn.usage,
        Some(Usage {
            input_tokens: 113,
            output_tokens: 7
        })
    );
    assert!(chunks.iter().any(|c| matches!(c, StreamChunk::ToolResult { name, content, .. } if name == "Read" && content == "data")));
    assert_eq!(
        turn.provider_tool_calls,
        vec![ToolCall::new("t1", "Read", r#"{"file_path":"a"}"#)]
    );
}

#[test]
fn a_cli_tool_use_without_a_result_is_never_a_call() {
    let request = request(vec![vote_tool()]);
    let lines = [
        json!({"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]}}),
        json!({"type":"result","subtype":"error_max_turns","is_error":true,"errors":["too many turns"]}),
    ];
    let (turn, chunks, _) = run(&request, &lines, Some(1), "");
    assert!(turn.tool_calls.is_empty());
    assert!(turn.provider_tool_calls.is_empty());
    assert!(!chunks.iter().any(|c| matches!(c, StreamChunk::ToolCall(_))));
    assert!(chunks.iter().any(
        |c| matches!(c, StreamChunk::ToolCallDelta { name: Some(name), .. } if name == "Bash")
    ));
}

#[test]
fn errors_exit_statuses_and_garbage() {
    let request = request(Vec::new());
    let error_result = json!({"type":"result","subtype":"error_max_turns","is_error":true,"errors":["too many turns"]});
    let (turn, _, error) = run(&request, &[error_result], Some(1), "");
    assert_eq!(turn.error.map(|e| e.0), Some("error_max_turns".into()));
    assert!(error.is_some_and(|e| e.contains("too many turns")));

    let (turn, _, error) = run(
        &request,
        &[json!({"type":"system","subtype":"init"})],
        Some(1),
        "Invalid API key",
    );
    assert_eq!(turn.error.map(|e| e.2), Some(Some("1".into())));
    assert!(error.is_some_and(|e| e.contains("status 1 without a result: Invalid API key")));

    let ok = json!({"type":"result","subtype":"success","is_error":false,"result":"hi"});
    let (_, _, error) = run(&request, std::slice::from_ref(&ok), Some(2), "");
    assert!(error.is_some_and(|e| e.contains("after its result")));
    let (turn, _, error) = run(&request, &[ok], Some(0), "");
    assert_eq!(error, None);
    assert_eq!(turn.finish_reason.as_deref(), Some("success"));

    let mut parser = ClaudeCodeParser::new(&request);
    let mut out = VecDeque::new();
    assert_eq!(parser.on_line("[debug] starting", &mut out), Flow::Continue);
    assert_eq!(parser.on_line("{broken", &mut out), Flow::Done);
    parser.on_exit(Some(0), "", &mut out);
    assert_eq!(out.len(), 1, "one error, not two");
    assert!(matches!(
        out.front(),
        Some(Err(ProviderError::Malformed(_)))
    ));
}

fn spec(extra_body: Option<&str>, base_url: &str) -> BackendSpec {
    BackendSpec {
        wire: WireFormat::ClaudeCode,
        provider: "claude_code".into(),
        model: "sonnet".into(),
        base_url: base_url.into(),
        api_key_env: Some("ANTHROPIC_API_KEY".into()),
        temperature: None,
        top_p: None,
        max_tokens: None,
        extra_body: extra_body.map(str::to_owned),
        max_retries: 2,
        options: Default::default(),
    }
}

#[test]
fn program_and_options() {
    assert_eq!(
        program("/opt/claude", Some("/env/claude".into())),
        "/opt/claude"
    );
    assert_eq!(program("", Some("/env/claude".into())), "/env/claude");
    assert_eq!(program("https://api.anthropic.com", None), "claude");
    assert_eq!(program("claude", Some("/env/claude".into())), "/env/claude");
    let mut default_model = spec(None, "");
    default_model.model = "default".into();
    let args = arguments(&default_model, &CliOptions::default(), None);
    assert!(!args.contains(&"--model".to_owned()), "{args:?}");
    let options = CliOptions::from_spec(&spec(
        Some(r#"{"allowed_tools": ["Read", "Grep"], "max_turns": 3, "permission_mode": "plan"}"#),
        "",
    ))
    .expect("options");
    let args = arguments(&spec(None, ""), &options, Some("sys"));
    assert_eq!(
        args.join(" "),
        "-p --output-format stream-json --verbose --include-partial-messages --model sonnet \
         --system-prompt sys --max-turns 3 --allowedTools Read,Grep --permission-mode plan"
    );
    // MassGen's backend `system_prompt` heads the system text; disallowed_tools are passed.
    let options = CliOptions::from_spec(&spec(
        Some(r#"{"system_prompt": "You are terse.", "disallowed_tools": ["Bash"], "cwd": "/tmp/ws"}"#),
        "",
    ))
    .expect("options");
    assert_eq!(
        options.cwd.as_deref(),
        Some(std::path::Path::new("/tmp/ws"))
    );
    let system = system_prompt(&options, Some("Coordinate.".into()));
    assert_eq!(system.as_deref(), Some("You are terse.\n\nCoordinate."));
    assert_eq!(
        system_prompt(&options, None).as_deref(),
        Some("You are terse.")
    );
    assert_eq!(system_prompt(&CliOptions::default(), None), None);
    let args = arguments(&spec(None, ""), &options, system.as_deref());
    assert!(
        args.join(" ")
            .ends_with("--system-prompt You are terse.\n\nCoordinate. --disallowedTools Bash"),
        "{args:?}"
    );
    assert!(matches!(
        CliOptions::from_spec(&spec(Some(r#"{"allowed_tool": []}"#), "")),
        Err(ProviderError::Config(m)) if m.contains("allowed_tool")
    ));
}
