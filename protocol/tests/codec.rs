//! Round trips through the cluster codec, and garbage that must fail cleanly.

use std::sync::Arc;

use conclave_protocol::config::*;
use conclave_protocol::*;
use proptest::prelude::*;

fn envelope<T>(body: T) -> Envelope<T> {
    let mut trace = TraceContext::default();
    trace.set(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    Envelope {
        session: SessionId::parse("s-1").unwrap(),
        sender: "agent-a".into(),
        seq: 7,
        trace,
        body,
    }
}

fn every_command() -> Vec<CoordinatorCommand> {
    vec![
        CoordinatorCommand::StartTurn(TurnSpec {
            turn: TurnId(3),
            mode: TurnMode::Coordinate,
            task: Arc::new(TaskSpec {
                question: "why is the sky blue? ☀".into(),
                history: vec![("hi".into(), "hello".into())],
            }),
            answers: vec![LabeledAnswer {
                label: AnswerLabel::new(1, 2),
                content: "Rayleigh".into(),
            }]
            .into(),
            revision: 4,
            may_answer: false,
            votes: vec![CastVote {
                voter: 2,
                label: AnswerLabel::new(1, 2),
                reason: "ok".into(),
            }]
            .into(),
            self_number: 3,
            snapshots: Vec::new().into(),
        }),
        CoordinatorCommand::Cancel { turn: TurnId(9) },
        CoordinatorCommand::Stop,
    ]
}

fn every_report() -> Vec<AgentReport> {
    let turn = TurnId(5);
    vec![
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::Content { text: "a".into() },
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::Reasoning { text: "b".into() },
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::Refusal { text: "no".into() },
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::ToolCallDelta {
                index: 1,
                id: Some("c".into()),
                name: None,
                arguments: "{".into(),
            },
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::ToolCall(ToolCall {
                id: "c".into(),
                name: "vote".into(),
                arguments: "{}".into(),
                signature: None,
            }),
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::ToolResult {
                id: "c".into(),
                name: "x".into(),
                content: "y".into(),
            },
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::Usage(Usage {
                input_tokens: 10,
                output_tokens: 20,
            }),
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::Finish {
                reason: "stop".into(),
            },
        },
        AgentReport::Chunk {
            turn,
            chunk: StreamChunk::Error {
                kind: "overloaded".into(),
                message: "m".into(),
                code: None,
            },
        },
        AgentReport::Decided {
            turn,
            decision: Decision::Vote {
                label: AnswerLabel::new(2, 1),
                reason: "best".into(),
            },
            seen_revision: 3,
            how: conclave_protocol::DecisionHow::Tool,
        },
        AgentReport::Decided {
            turn,
            decision: Decision::NewAnswer {
                content: "42".into(),
            },
            seen_revision: 0,
            how: conclave_protocol::DecisionHow::Tool,
        },
        AgentReport::Presented {
            turn,
            content: "final".into(),
        },
        AgentReport::TurnFailed {
            turn,
            error: TurnError {
                kind: TurnErrorKind::Stalled,
                message: "silent".into(),
            },
        },
        AgentReport::TurnEvent {
            turn,
            event: TurnEvent::ProviderRetry {
                attempt: 1,
                wait_ms: 500,
                reason: "429".into(),
            },
        },
    ]
}

#[test]
fn every_message_round_trips() {
    for command in every_command() {
        let sent = envelope(command);
        let back: Envelope<CoordinatorCommand> = decode(&encode(&sent).unwrap()).unwrap();
        assert_eq!(back, sent);
    }
    for report in every_report() {
        let sent = envelope(report);
        let back: Envelope<AgentReport> = decode(&encode(&sent).unwrap()).unwrap();
        assert_eq!(back, sent);
    }
}

#[test]
fn config_round_trips() {
    let config = SessionConfig {
        agents: vec![AgentSpec {
            id: "gpt".into(),
            backend: BackendSpec {
                wire: WireFormat::OpenAiChat,
                provider: "groq".into(),
                model: "llama".into(),
                base_url: "https://api.groq.com/openai/v1".into(),
                api_key_env: Some("GROQ_API_KEY".into()),
                temperature: Some(0.2),
                top_p: None,
                max_tokens: Some(100),
                extra_body: Some("{\"seed\":1}".into()),
                max_retries: 2,
                options: Default::default(),
            },
            system_message: None,
            node: Some("gpu-1".into()),
            workflow: conclave_protocol::config::WorkflowMode::Text,
            tools: conclave_protocol::tools::AgentTools {
                mcp_servers: vec![
                    conclave_protocol::tools::McpServerSpec {
                        name: "files".into(),
                        transport: conclave_protocol::tools::McpTransport::Stdio {
                            command: "npx".into(),
                            args: vec!["-y".into(), "server".into()],
                            env: vec![("TOKEN".into(), "${TOKEN}".into())],
                            cwd: None,
                        },
                        allowed_tools: Some(vec!["read".into()]),
                        exclude_tools: Vec::new(),
                        optional: true,
                    },
                    conclave_protocol::tools::McpServerSpec {
                        name: "web".into(),
                        transport: conclave_protocol::tools::McpTransport::StreamableHttp {
                            url: "http://127.0.0.1:8000/mcp".into(),
                            headers: vec![("Authorization".into(), "Bearer ${T}".into())],
                        },
                        allowed_tools: None,
                        exclude_tools: vec!["drop".into()],
                        optional: false,
                    },
                ],
                limits: Default::default(),
                workspace: Some(conclave_protocol::tools::WorkspaceSpec {
                    cwd: "work/alpha".into(),
                    configured: true,
                    peers_dir: "work/alpha.peers".into(),
                    context_paths: vec![conclave_protocol::tools::ContextPath {
                        path: "/srv/project".into(),
                        permission: conclave_protocol::tools::ContextPermission::Write,
                        protected_paths: vec!["Cargo.lock".into()],
                    }],
                    limits: Default::default(),
                    allowed_tools: Some(vec!["read_text_file".into()]),
                    exclude_tools: vec!["mcp__filesystem__delete_file".into()],
                }),
                command_line: Some(conclave_protocol::tools::CommandLineSpec {
                    mode: conclave_protocol::tools::CommandMode::Docker {
                        image: "conclave-runner:latest".into(),
                        network_mode: "none".into(),
                        memory_limit: Some("512m".into()),
                        cpu_limit: None,
                    },
                    allowed_commands: vec!["^python".into()],
                    blocked_commands: Vec::new(),
                    timeout_seconds: 30,
                    max_output_bytes: 4096,
                }),
            },
        }],
        orchestrator: OrchestratorSettings::default(),
        timeouts: TimeoutSettings::default(),
        display: DisplayKind::Json,
    };
    let back: SessionConfig = decode(&encode(&config).unwrap()).unwrap();
    assert_eq!(back, config);
}

#[test]
fn wrong_version_and_trailing_bytes_are_errors() {
    let mut frame = encode(&envelope(CoordinatorCommand::Stop)).unwrap();
    frame.push(0);
    assert!(matches!(
        decode::<Envelope<CoordinatorCommand>>(&frame),
        Err(CodecError::Trailing(1))
    ));
    frame.pop();
    frame[0] = 99;
    assert!(matches!(
        decode::<Envelope<CoordinatorCommand>>(&frame),
        Err(CodecError::Version { found: 99, .. })
    ));
    assert!(matches!(
        decode::<Envelope<CoordinatorCommand>>(&[]),
        Err(CodecError::Empty)
    ));
}

#[test]
fn huge_length_prefix_is_refused_without_allocating() {
    // version byte, then a varint claiming a string of u64::MAX bytes for the session id.
    let frame = [1u8, 255, 255, 255, 255, 255, 255, 255, 255, 255];
    assert!(decode::<Envelope<AgentReport>>(&frame).is_err());
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Envelope<AgentReport>>(&bytes);
        let _ = decode::<Envelope<CoordinatorCommand>>(&bytes);
        let _ = decode::<SessionConfig>(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(index in 0usize..4096, byte in any::<u8>()) {
        for report in every_report() {
            let mut frame = encode(&envelope(report)).unwrap();
            let at = index % frame.len();
            frame[at] = byte;
            let _ = decode::<Envelope<AgentReport>>(&frame);
        }
    }

    #[test]
    fn text_round_trips(question in ".*", content in ".*", seq in any::<u64>()) {
        let mut sent = envelope(AgentReport::Decided {
            turn: TurnId(seq),
            decision: Decision::NewAnswer { content: content.clone() },
            seen_revision: seq,
            how: conclave_protocol::DecisionHow::Tool,
        });
        sent.sender = question;
        let back: Envelope<AgentReport> = decode(&encode(&sent).unwrap()).unwrap();
        prop_assert_eq!(back, sent);
    }
}
