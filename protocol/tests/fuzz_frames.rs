//! Bounded fuzzing of the cluster frame decoder ([`conclave_protocol::decode`]).
//!
//! A frame comes off the network from another node, so any byte string must give either the
//! message or an error: never a panic, never a hang, never an allocation far past
//! [`MAX_FRAME_BYTES`]. `codec.rs` round-trips hand-written messages and throws plain random
//! bytes at the decoder (which mostly fail at the version byte); this file is structure
//! aware:
//!
//! * every message type is generated (all variants, unicode, long strings, extreme numbers,
//!   NaN floats), encoded, decoded back, and every proper prefix of its frame must fail;
//! * valid frames are mutated (bit flips, "interesting" bytes such as varint markers, byte
//!   insertion and deletion, duplicated and spliced ranges, varint length prefixes inflated
//!   to huge values) and decoded as every frame type;
//! * raw garbage is decoded behind a correct version byte.
//!
//! Each decode runs under a watchdog (a case that takes longer than
//! `CONCLAVE_FUZZ_HANG_SECS`, default 30, aborts the run and prints the input) and under a
//! per-thread allocation counter (the peak heap growth of one decode must stay under
//! `2 × MAX_FRAME_BYTES + 64 × frame length`).
//!
//! Case counts keep the file well under 20 s in debug; `CONCLAVE_FUZZ_CASES=N` runs `N`
//! cases per property instead and `CONCLAVE_FUZZ_SEED=S` changes the fixed seed, e.g.
//! `CONCLAVE_FUZZ_CASES=20000 cargo test --release -p conclave-protocol --test fuzz_frames -- --nocapture`.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use conclave_fuzz::{Target, count_hit, count_input, peak_growth};
use conclave_protocol::cluster::{ToHost, ToOrchestrator};
use conclave_protocol::config::{
    AgentSpec, BackendOptions, BackendSpec, DisplayKind, OrchestratorSettings, RestartPolicy,
    SessionConfig, TimeoutSettings, WireFormat, WorkflowMode,
};
use conclave_protocol::*;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------------------------
// Harness: case counts, fixed seed, watchdog, allocation accounting.
// ---------------------------------------------------------------------------------------------

/// This file's seed and summary words; the harness itself is `conclave_fuzz`'s.
const TARGET: Target = Target {
    file: "fuzz_frames",
    seed: 0xC0C1_A7E0_F4A3_0001,
    verb: "decoded",
    hits: Some("to a message"),
};

#[global_allocator]
static ALLOC: conclave_fuzz::CountingAlloc = conclave_fuzz::CountingAlloc;

/// The largest peak growth seen, as (bytes, frame length), for the summary.
static WORST_PEAK: Mutex<(usize, usize)> = Mutex::new((0, 0));

// ---------------------------------------------------------------------------------------------
// Generators of valid messages.
// ---------------------------------------------------------------------------------------------

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9_.-]{0,12}",
        3 => "\\PC{0,24}",
        1 => Just(String::new()),
        1 => "(é|☀|\u{0}|\u{10FFFF}|\"|\\\\|\n){1,8}",
        1 => ("[ -~]{1,4}", 200usize..3000).prop_map(|(s, n)| s.repeat(n / s.len().max(1))),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<u64> {
    prop_oneof![
        3 => 0u64..300,
        1 => Just(250u64),
        1 => Just(251u64),
        1 => Just(u64::from(u16::MAX)),
        1 => Just(u64::from(u16::MAX) + 1),
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::MAX),
        2 => any::<u64>(),
    ]
    .boxed()
}

fn small() -> BoxedStrategy<u32> {
    prop_oneof![3 => 0u32..300, 1 => Just(u32::MAX), 1 => any::<u32>()].boxed()
}

fn float() -> BoxedStrategy<f64> {
    prop_oneof![
        3 => -2.0f64..2.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-0.0),
        1 => any::<f64>(),
    ]
    .boxed()
}

fn label() -> impl Strategy<Value = AnswerLabel> {
    (small(), small()).prop_map(|(agent, answer)| AnswerLabel::new(agent, answer))
}

fn tool_call() -> impl Strategy<Value = ToolCall> {
    (text(), text(), text(), proptest::option::of(text())).prop_map(
        |(id, name, arguments, signature)| ToolCall {
            id,
            name,
            arguments,
            signature,
        },
    )
}

fn chunk() -> BoxedStrategy<StreamChunk> {
    prop_oneof![
        text().prop_map(|text| StreamChunk::Content { text }),
        text().prop_map(|text| StreamChunk::Reasoning { text }),
        text().prop_map(|signature| StreamChunk::ReasoningSignature { signature }),
        text().prop_map(|text| StreamChunk::Refusal { text }),
        (
            small(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            text()
        )
            .prop_map(|(index, id, name, arguments)| StreamChunk::ToolCallDelta {
                index,
                id,
                name,
                arguments
            }),
        tool_call().prop_map(StreamChunk::ToolCall),
        (text(), text(), text()).prop_map(|(id, name, content)| StreamChunk::ToolResult {
            id,
            name,
            content
        }),
        (number(), number()).prop_map(|(input_tokens, output_tokens)| StreamChunk::Usage(Usage {
            input_tokens,
            output_tokens
        })),
        text().prop_map(|reason| StreamChunk::Finish { reason }),
        (text(), text(), proptest::option::of(text())).prop_map(|(kind, message, code)| {
            StreamChunk::Error {
                kind,
                message,
                code,
            }
        }),
    ]
    .boxed()
}

fn decision() -> BoxedStrategy<Decision> {
    prop_oneof![
        text().prop_map(|content| Decision::NewAnswer { content }),
        (label(), text()).prop_map(|(label, reason)| Decision::Vote { label, reason }),
    ]
    .boxed()
}

fn error_kind() -> impl Strategy<Value = TurnErrorKind> {
    prop_oneof![
        Just(TurnErrorKind::Provider),
        Just(TurnErrorKind::Auth),
        Just(TurnErrorKind::Config),
        Just(TurnErrorKind::Timeout),
        Just(TurnErrorKind::Stalled),
        Just(TurnErrorKind::InvalidDecision),
        Just(TurnErrorKind::Crashed),
    ]
}

fn turn_event() -> BoxedStrategy<TurnEvent> {
    prop_oneof![
        (small(), number(), text()).prop_map(|(attempt, wait_ms, reason)| {
            TurnEvent::ProviderRetry {
                attempt,
                wait_ms,
                reason,
            }
        }),
        (small(), text())
            .prop_map(|(attempt, problem)| TurnEvent::CorrectiveRetry { attempt, problem }),
        (small(), text())
            .prop_map(|(attempt, reason)| TurnEvent::WorkerRestart { attempt, reason }),
    ]
    .boxed()
}

fn report() -> BoxedStrategy<AgentReport> {
    let turn = || number().prop_map(TurnId);
    prop_oneof![
        (turn(), chunk()).prop_map(|(turn, chunk)| AgentReport::Chunk { turn, chunk }),
        (turn(), decision(), number()).prop_map(|(turn, decision, seen_revision)| {
            AgentReport::Decided {
                turn,
                decision,
                seen_revision,
                how: conclave_protocol::DecisionHow::Tool,
            }
        }),
        (turn(), text()).prop_map(|(turn, content)| AgentReport::Presented { turn, content }),
        (turn(), error_kind(), text()).prop_map(|(turn, kind, message)| {
            AgentReport::TurnFailed {
                turn,
                error: TurnError { kind, message },
            }
        }),
        (turn(), turn_event()).prop_map(|(turn, event)| AgentReport::TurnEvent { turn, event }),
    ]
    .boxed()
}

fn command() -> BoxedStrategy<CoordinatorCommand> {
    let spec = (
        number(),
        any::<bool>(),
        (text(), proptest::collection::vec((text(), text()), 0..3)),
        proptest::collection::vec((label(), text()), 0..4),
        number(),
        any::<bool>(),
        proptest::collection::vec((small(), label(), text()), 0..3),
        small(),
    )
        .prop_map(
            |(turn, present, (question, history), answers, revision, may_answer, votes, me)| {
                TurnSpec {
                    turn: TurnId(turn),
                    mode: if present {
                        TurnMode::Present
                    } else {
                        TurnMode::Coordinate
                    },
                    task: Arc::new(TaskSpec { question, history }),
                    answers: answers
                        .into_iter()
                        .map(|(label, content)| LabeledAnswer {
                            label,
                            content: content.into(),
                        })
                        .collect(),
                    revision,
                    may_answer,
                    votes: votes
                        .into_iter()
                        .map(|(voter, label, reason)| CastVote {
                            voter,
                            label,
                            reason,
                        })
                        .collect(),
                    self_number: me,
                    snapshots: Vec::new().into(),
                }
            },
        );
    prop_oneof![
        3 => spec.prop_map(CoordinatorCommand::StartTurn),
        1 => number().prop_map(|turn| CoordinatorCommand::Cancel { turn: TurnId(turn) }),
        1 => Just(CoordinatorCommand::Stop),
    ]
    .boxed()
}

fn envelope<T: Debug + Clone + 'static>(
    body: BoxedStrategy<T>,
) -> impl Strategy<Value = Envelope<T>> {
    (
        text(),
        text(),
        number(),
        proptest::collection::vec((text(), text()), 0..3),
        body,
    )
        .prop_map(|(session, sender, seq, fields, body)| Envelope {
            // The decoder does not validate ids; any string must survive the trip.
            session: SessionId(session),
            sender,
            seq,
            trace: TraceContext { fields },
            body,
        })
}

fn wire_format() -> impl Strategy<Value = WireFormat> {
    prop_oneof![
        Just(WireFormat::OpenAiChat),
        Just(WireFormat::OpenAiResponses),
        Just(WireFormat::Anthropic),
        Just(WireFormat::Gemini),
        Just(WireFormat::AzureOpenAi),
        Just(WireFormat::ClaudeCode),
    ]
}

fn agent() -> impl Strategy<Value = AgentSpec> {
    (
        (text(), wire_format(), text(), text(), text()),
        (
            proptest::option::of(text()),
            proptest::option::of(float()),
            proptest::option::of(float()),
            proptest::option::of(small()),
            proptest::option::of(text()),
            small(),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(small()),
            any::<bool>(),
            proptest::option::of(text()),
        ),
        (proptest::option::of(text()), proptest::option::of(text())),
    )
        .prop_map(
            |(
                (id, wire, provider, model, base_url),
                (api_key_env, temperature, top_p, max_tokens, extra_body, max_retries),
                (reasoning_effort, thinking_budget, web_search, api_version),
                (system_message, node),
            )| AgentSpec {
                id,
                backend: BackendSpec {
                    wire,
                    provider,
                    model,
                    base_url,
                    api_key_env,
                    temperature,
                    top_p,
                    max_tokens,
                    extra_body,
                    max_retries,
                    options: BackendOptions {
                        reasoning_effort,
                        thinking_budget,
                        web_search,
                        api_version,
                        ..BackendOptions::default()
                    },
                },
                system_message,
                node,
                workflow: WorkflowMode::Auto,
                tools: Default::default(),
            },
        )
}

fn session_config() -> impl Strategy<Value = SessionConfig> {
    (
        proptest::collection::vec(agent(), 0..4),
        proptest::option::of(small()),
        proptest::option::of(small()),
        any::<bool>(),
        small(),
        (number(), number(), number(), number()),
        0u8..3,
        (small(), number()),
    )
        .prop_map(
            |(
                agents,
                per_agent,
                total,
                finish,
                retries,
                (o, t, s, c),
                display,
                (restarts, window),
            )| SessionConfig {
                agents,
                orchestrator: OrchestratorSettings {
                    max_new_answers_per_agent: per_agent,
                    max_total_answers: total,
                    restart_policy: if finish {
                        RestartPolicy::Finish
                    } else {
                        RestartPolicy::Cancel
                    },
                    max_workflow_retries: retries,
                    max_turn_restarts: restarts,
                    restart_window_seconds: window,
                    ..OrchestratorSettings::default()
                },
                timeouts: TimeoutSettings {
                    orchestrator_timeout_seconds: o,
                    turn_timeout_seconds: t,
                    stall_timeout_seconds: s,
                    connect_timeout_seconds: c,
                },
                display: match display {
                    0 => DisplayKind::Plain,
                    1 => DisplayKind::Json,
                    _ => DisplayKind::Quiet,
                },
            },
        )
}

/// One valid frame of any of the types nodes exchange.
#[derive(Debug, Clone)]
enum AnyMessage {
    Report(Envelope<AgentReport>),
    Command(Envelope<CoordinatorCommand>),
    Config(SessionConfig),
    /// Shaped like a cluster frame wrapping an envelope: a variant index, an agent number and
    /// an incarnation, then the envelope (built as a tuple, which bincode lays out the same
    /// way, so these seeds need no knowledge of the cluster types beyond their names).
    Wrapped(u32, u32, u64, Box<AnyMessage>),
}

impl AnyMessage {
    fn frame(&self) -> Vec<u8> {
        match self {
            AnyMessage::Report(m) => encode(m),
            AnyMessage::Command(m) => encode(m),
            AnyMessage::Config(m) => encode(m),
            AnyMessage::Wrapped(variant, agent, incarnation, inner) => {
                let body = inner.frame();
                encode(&(*variant, *agent, *incarnation)).map(|mut frame| {
                    // The inner frame without its version byte.
                    frame.extend_from_slice(&body[1..]);
                    frame
                })
            }
        }
        .expect("valid messages encode")
    }
}

fn plain_message() -> BoxedStrategy<AnyMessage> {
    prop_oneof![
        3 => envelope(report()).prop_map(AnyMessage::Report),
        2 => envelope(command()).prop_map(AnyMessage::Command),
        1 => session_config().prop_map(AnyMessage::Config),
    ]
    .boxed()
}

fn any_message() -> BoxedStrategy<AnyMessage> {
    prop_oneof![
        3 => plain_message(),
        2 => (0u32..10, small(), number(), plain_message()).prop_map(
            |(variant, agent, incarnation, inner)| {
                AnyMessage::Wrapped(variant, agent, incarnation, Box::new(inner))
            }
        ),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Decoding under the watchdog and the allocation bound.
// ---------------------------------------------------------------------------------------------

/// Decodes `frame` as `T`, checking the allocation bound. A successful decode must be stable:
/// re-encoding the value and decoding that gives the same encoding again (encodings rather
/// than values are compared, so NaN floats count as equal to themselves).
fn decode_checked<T>(frame: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: DeserializeOwned + Serialize + Debug,
{
    count_input();
    let (result, peak) = peak_growth(|| decode::<T>(frame));
    let bound = 2 * MAX_FRAME_BYTES + 64 * frame.len();
    {
        let mut worst = WORST_PEAK.lock().unwrap_or_else(|e| e.into_inner());
        if peak > worst.0 {
            *worst = (peak, frame.len());
        }
    }
    prop_assert!(
        peak <= bound,
        "decoding a {}-byte frame as {} allocated {peak} bytes (bound {bound})",
        frame.len(),
        std::any::type_name::<T>()
    );
    match result {
        Ok(value) => {
            count_hit();
            let again = encode(&value)
                .map_err(|e| TestCaseError::fail(format!("re-encoding failed: {e}")))?;
            let back: T = decode(&again)
                .map_err(|e| TestCaseError::fail(format!("re-decoding failed: {e}")))?;
            let third = encode(&back)
                .map_err(|e| TestCaseError::fail(format!("re-encoding failed: {e}")))?;
            prop_assert_eq!(&third, &again, "decoding is not stable for {:?}", value);
            Ok(Some(value))
        }
        Err(CodecError::Encode(e)) => Err(TestCaseError::fail(format!(
            "decode returned an Encode error: {e}"
        ))),
        Err(_) => Ok(None),
    }
}

/// Decodes `frame` as every frame type.
fn decode_all(frame: &[u8]) -> TestCaseResult {
    decode_checked::<Envelope<AgentReport>>(frame)?;
    decode_checked::<Envelope<CoordinatorCommand>>(frame)?;
    decode_checked::<SessionConfig>(frame)?;
    decode_checked::<StreamChunk>(frame)?;
    // The frames agent nodes and the orchestrator exchange over the cluster transport.
    decode_checked::<ToHost>(frame)?;
    decode_checked::<ToOrchestrator>(frame)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutations.
// ---------------------------------------------------------------------------------------------

/// Bytes that mean something to bincode's varint encoding or to UTF-8.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x7F, 0x80, 0xBF, 0xC0, 0xF4, 0xF5, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF,
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
        to: usize,
    },
    /// A varint marker followed by a huge little-endian value (a length prefix bomb).
    Inflate {
        at: usize,
        marker: u8,
        value: u64,
    },
    Splice {
        at: usize,
        from: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        3 => (at, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        3 => (at, prop_oneof![proptest::sample::select(INTERESTING), any::<u8>()])
            .prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        1 => (at, proptest::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at, 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (at, 1usize..32, any::<usize>())
            .prop_map(|(at, len, to)| Mutation::Duplicate { at, len, to }),
        2 => (
            at,
            prop_oneof![Just(0xFBu8), Just(0xFC), Just(0xFD), Just(0xFE)],
            prop_oneof![
                Just(u64::MAX),
                Just(u64::from(u32::MAX)),
                Just(MAX_FRAME_BYTES as u64),
                Just(MAX_FRAME_BYTES as u64 + 1),
                Just(1u64 << 40),
                any::<u64>(),
            ],
        )
            .prop_map(|(at, marker, value)| Mutation::Inflate { at, marker, value }),
        1 => (at, any::<usize>(), 1usize..64)
            .prop_map(|(at, from, len)| Mutation::Splice { at, from, len }),
    ]
}

/// Applies `mutation` to `frame`; `donor` is another valid frame for splices.
fn mutate(frame: &mut Vec<u8>, mutation: &Mutation, donor: &[u8]) {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
    match *mutation {
        Mutation::FlipBit { at, bit } => {
            if !frame.is_empty() {
                let i = pos(at, frame.len());
                frame[i] ^= 1 << bit;
            }
        }
        Mutation::SetByte { at, byte } => {
            if !frame.is_empty() {
                let i = pos(at, frame.len());
                frame[i] = byte;
            }
        }
        Mutation::Insert { at, ref bytes } => {
            let i = pos(at, frame.len() + 1);
            frame.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            if !frame.is_empty() {
                let i = pos(at, frame.len());
                let end = (i + len).min(frame.len());
                frame.drain(i..end);
            }
        }
        Mutation::Duplicate { at, len, to } => {
            if !frame.is_empty() {
                let i = pos(at, frame.len());
                let end = (i + len).min(frame.len());
                let piece: Vec<u8> = frame[i..end].to_vec();
                let to = pos(to, frame.len() + 1);
                frame.splice(to..to, piece);
            }
        }
        Mutation::Inflate { at, marker, value } => {
            let i = pos(at, frame.len() + 1);
            let width = match marker {
                0xFB => 2,
                0xFC => 4,
                0xFD => 8,
                _ => 16,
            };
            let mut bytes = vec![marker];
            bytes.extend_from_slice(&u128::from(value).to_le_bytes()[..width]);
            // Replace the byte there (usually a one-byte length) with the inflated varint.
            let end = (i + 1).min(frame.len());
            frame.splice(i..end, bytes);
        }
        Mutation::Splice { at, from, len } => {
            if !donor.is_empty() {
                let start = pos(from, donor.len());
                let end = (start + len).min(donor.len());
                let i = pos(at, frame.len() + 1);
                let end_here = (i + len).min(frame.len());
                frame.splice(i..end_here, donor[start..end].iter().copied());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

/// Valid frames decode to themselves; every proper prefix and every frame with trailing bytes
/// is an error (bincode is prefix-free, so a cut frame can never pass for a shorter message).
#[test]
fn valid_frames_round_trip_and_every_cut_fails() {
    TARGET.fuzz(
        "valid_frames_round_trip_and_every_cut_fails",
        400,
        (any_message(), proptest::collection::vec(any::<u8>(), 1..4)),
        |(message, tail)| {
            let frame = message.frame();
            // Every cut for short frames, 256 spread-out cuts for long ones.
            let step = (frame.len() / 256).max(1);
            let cuts = (0..frame.len()).step_by(step);
            match &message {
                AnyMessage::Report(sent) => {
                    let back = decode_checked::<Envelope<AgentReport>>(&frame)?;
                    prop_assert_eq!(back.as_ref(), Some(sent));
                    for cut in cuts {
                        let got = decode_checked::<Envelope<AgentReport>>(&frame[..cut])?;
                        prop_assert!(got.is_none(), "a {cut}-byte prefix decoded");
                    }
                }
                AnyMessage::Command(sent) => {
                    let back = decode_checked::<Envelope<CoordinatorCommand>>(&frame)?;
                    prop_assert_eq!(back.as_ref(), Some(sent));
                    for cut in cuts {
                        let got = decode_checked::<Envelope<CoordinatorCommand>>(&frame[..cut])?;
                        prop_assert!(got.is_none(), "a {cut}-byte prefix decoded");
                    }
                }
                AnyMessage::Wrapped(..) => {
                    // Whether it decodes depends on the cluster types' current layout; it
                    // must never misbehave, and when it decodes no proper prefix may.
                    let host = decode_checked::<ToHost>(&frame)?.is_some();
                    let orchestrator = decode_checked::<ToOrchestrator>(&frame)?.is_some();
                    for cut in cuts {
                        let h = decode_checked::<ToHost>(&frame[..cut])?;
                        let o = decode_checked::<ToOrchestrator>(&frame[..cut])?;
                        prop_assert!(!(host && h.is_some()), "a {cut}-byte prefix decoded");
                        prop_assert!(
                            !(orchestrator && o.is_some()),
                            "a {cut}-byte prefix decoded"
                        );
                    }
                    return Ok(());
                }
                AnyMessage::Config(sent) => {
                    let back = decode_checked::<SessionConfig>(&frame)?;
                    // NaN floats make `==` fail; compare the encodings instead.
                    let again = back.map(|b| encode(&b).expect("encodes"));
                    prop_assert_eq!(again.as_deref(), Some(frame.as_slice()), "{:?}", sent);
                    for cut in cuts {
                        let got = decode_checked::<SessionConfig>(&frame[..cut])?;
                        prop_assert!(got.is_none(), "a {cut}-byte prefix decoded");
                    }
                }
            }
            let mut longer = frame.clone();
            longer.extend_from_slice(&tail);
            count_input();
            let trailing = match &message {
                AnyMessage::Report(_) => decode::<Envelope<AgentReport>>(&longer).err(),
                AnyMessage::Command(_) => decode::<Envelope<CoordinatorCommand>>(&longer).err(),
                AnyMessage::Config(_) => decode::<SessionConfig>(&longer).err(),
                AnyMessage::Wrapped(..) => return Ok(()),
            };
            prop_assert!(
                matches!(trailing, Some(CodecError::Trailing(n)) if n == tail.len()),
                "trailing bytes gave {:?}",
                trailing
            );
            Ok(())
        },
    );
}

/// Valid frames with one to eight mutations decode (as every frame type) to a message or an
/// error, within the time and memory bounds.
#[test]
fn mutated_frames_fail_cleanly() {
    TARGET.fuzz(
        "mutated_frames_fail_cleanly",
        3000,
        (
            any_message(),
            any_message(),
            proptest::collection::vec(mutation(), 1..9),
        ),
        |(message, donor, mutations)| {
            let mut frame = message.frame();
            let donor = donor.frame();
            for m in &mutations {
                mutate(&mut frame, m, &donor);
            }
            decode_all(&frame)?;
            // The same body behind the version byte, and with the version byte stripped.
            if frame.first() != Some(&1) {
                let mut versioned = frame.clone();
                versioned.insert(0, 1);
                decode_all(&versioned)?;
            }
            Ok(())
        },
    );
}

/// Unstructured bytes behind a correct version byte (plain random bytes mostly stop at the
/// version check), biased towards varint markers.
#[test]
fn garbage_behind_the_version_byte_fails_cleanly() {
    let byte = prop_oneof![
        3 => any::<u8>(),
        2 => proptest::sample::select(INTERESTING),
        2 => 0u8..8,
    ];
    TARGET.fuzz(
        "garbage_behind_the_version_byte_fails_cleanly",
        2000,
        proptest::collection::vec(byte, 0..600),
        |mut bytes| {
            bytes.insert(0, 1);
            decode_all(&bytes)
        },
    );
}

/// Frames of the limit's size (and one byte over) are handled without delay: one byte over
/// is refused before decoding, a full-size garbage frame fails cleanly.
#[test]
fn frames_at_the_size_limit() {
    let _guard = TARGET.watchdog_arm("frames_at_the_size_limit", Arc::new("16 MiB frames"));
    let mut frame = vec![0xFDu8; MAX_FRAME_BYTES + 1];
    frame[0] = 1;
    count_input();
    assert!(matches!(
        decode::<Envelope<AgentReport>>(&frame),
        Err(CodecError::TooLarge { .. })
    ));
    frame.pop();
    decode_all(&frame).expect("a full-size garbage frame fails cleanly");
    // A string that really is 16 MiB long cannot fit with the envelope around it.
    let big = AgentReport::Presented {
        turn: TurnId(1),
        content: "x".repeat(MAX_FRAME_BYTES),
    };
    assert!(matches!(encode(&big), Err(CodecError::TooLarge { .. })));
}

/// The allocation bound against its worst case: every length prefix of real frames inflated
/// to huge values, decoded as every frame type. Asserts the worst peak this sweep saw stays
/// within `2 × MAX_FRAME_BYTES + 64 × frame length`, and reports it together with the worst
/// peak of the whole run so far (other properties may still be running).
#[test]
fn zz_report_worst_allocation() {
    use proptest::strategy::ValueTree;
    let _guard = TARGET.watchdog_arm("zz_report_worst_allocation", Arc::new("length bombs"));
    let mut runner = conclave_fuzz::runner(1, 0xC0C1_A7E0_F4A3_00B0);
    let strategy = any_message();
    let mut worst = (0usize, 0usize);
    let mut decodes = 0u32;
    for _ in 0..24 {
        let message = strategy
            .new_tree(&mut runner)
            .expect("the message strategy generates values")
            .current();
        let frame = message.frame();
        // Every position for short frames, 64 spread-out positions for long ones.
        let step = (frame.len() / 64).max(1);
        for at in (1..frame.len()).step_by(step) {
            for (marker, value) in [
                (0xFDu8, u64::MAX),
                (0xFC, u64::from(u32::MAX)),
                (0xFD, MAX_FRAME_BYTES as u64),
                (0xFD, 1u64 << 40),
            ] {
                let mut bomb = frame.clone();
                mutate(&mut bomb, &Mutation::Inflate { at, marker, value }, &[]);
                for peak in [
                    peak_growth(|| decode::<Envelope<AgentReport>>(&bomb)).1,
                    peak_growth(|| decode::<Envelope<CoordinatorCommand>>(&bomb)).1,
                    peak_growth(|| decode::<SessionConfig>(&bomb)).1,
                    peak_growth(|| decode::<ToHost>(&bomb)).1,
                    peak_growth(|| decode::<ToOrchestrator>(&bomb)).1,
                ] {
                    decodes += 1;
                    if peak > worst.0 {
                        worst = (peak, bomb.len());
                    }
                }
            }
        }
    }
    let (peak, len) = worst;
    let bound = 2 * MAX_FRAME_BYTES + 64 * len;
    let (run_peak, run_len) = *WORST_PEAK.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "fuzz_frames: {decodes} length-bomb decodes, worst peak heap growth {peak} bytes for a \
         {len}-byte frame (bound {bound}); whole run so far: {run_peak} bytes for a {run_len}-byte frame"
    );
    assert!(decodes > 0, "the sweep decoded nothing");
    assert!(
        peak <= bound,
        "a length bomb made one decode allocate {peak} bytes for a {len}-byte frame (bound {bound})"
    );
    assert!(
        run_peak <= 2 * MAX_FRAME_BYTES + 64 * run_len,
        "some decode of the run allocated {run_peak} bytes for a {run_len}-byte frame"
    );
}
